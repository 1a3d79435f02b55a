"""Report text metrics: BLEU-1..4 (corpus level, NLTK, smoothing method 1), ROUGE-L F (per
report, `rouge-score`, stemmed), METEOR (corpus level, `pycocoevalcap`, only when `java` is
installed) and CheXpert-label F1 (micro over every (report, label) pair; macro over labels with
at least `MIN_MACRO_POSITIVES` reference positives), with bootstrap intervals where they are
per report."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence

import numpy as np

from medxpert.metrics.bootstrap import Estimate

MIN_MACRO_POSITIVES = 5
TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def bleu(generated: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-1..4."""
    from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu

    hypotheses = [tokens(text) for text in generated]
    refs = [[tokens(text)] for text in references]
    smooth = SmoothingFunction().method1
    weights = {1: (1.0,), 2: (0.5, 0.5), 3: (1 / 3,) * 3, 4: (0.25,) * 4}
    return {
        f"BLEU-{n}": float(corpus_bleu(refs, hypotheses, weights=w, smoothing_function=smooth))
        for n, w in weights.items()
    }


def rouge_l(generated: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L F-measure per report."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return np.array(
        [
            scorer.score(ref, gen)["rougeL"].fmeasure
            for gen, ref in zip(generated, references, strict=True)
        ]
    )


def meteor(generated: Sequence[str], references: Sequence[str]) -> float | None:
    """Corpus METEOR through pycocoevalcap, or None when java is not installed."""
    if shutil.which("java") is None:
        return None
    from pycocoevalcap.meteor.meteor import Meteor

    score, _ = Meteor().compute_score(  # its java process ends when the scorer is collected
        {i: [" ".join(tokens(ref))] for i, ref in enumerate(references)},
        {i: [" ".join(tokens(gen)) or "empty"] for i, gen in enumerate(generated)},
    )
    return float(score)


def micro_macro_f1(
    generated: np.ndarray, reference: np.ndarray, macro_labels: np.ndarray
) -> tuple[float, float]:
    """Micro F1 over every (report, label) pair and macro F1 over `macro_labels`, of boolean
    (n, 14) positives."""
    g, r = generated, reference
    tp, fp, fn = (g & r).sum(0), (g & ~r).sum(0), (~g & r).sum(0)
    micro = 2 * tp.sum() / max(2 * tp.sum() + fp.sum() + fn.sum(), 1)
    per_label = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return float(micro), float(per_label[macro_labels].mean()) if len(macro_labels) else 0.0


def label_f1(
    generated: np.ndarray, reference: np.ndarray, n_boot: int, seed: int
) -> dict[str, Estimate]:
    """Micro and macro CheXpert-label F1 of positive labels (n, 14), with bootstrap intervals."""
    gen, ref = generated == 1, reference == 1
    macro_labels = np.flatnonzero(ref.sum(axis=0) >= MIN_MACRO_POSITIVES)

    def scores(rows: np.ndarray) -> tuple[float, float]:
        return micro_macro_f1(gen[rows], ref[rows], macro_labels)

    rng = np.random.default_rng(seed)
    everything = np.arange(len(gen))
    point = scores(everything)
    samples = np.array([scores(rng.integers(0, len(gen), len(gen))) for _ in range(n_boot)])
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    return {
        name: Estimate(point[i], float(low[i]), float(high[i]), len(gen))
        for i, name in enumerate(
            (
                "CheXpert F1 micro",
                f"CheXpert F1 macro ({len(macro_labels)} labels)",
            )
        )
    }
