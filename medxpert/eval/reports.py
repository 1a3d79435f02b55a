"""Report quality: generated reports against reference reports.

- Language overlap: BLEU-1..4 (corpus level, NLTK, smoothing method 1), ROUGE-L F (per report,
  `rouge-score`, stemmed), and METEOR (corpus level, `pycocoevalcap`, only when `java` is
  installed).
- Clinical content: CheXpert-label F1. The report labeler labels both texts; a label counts
  as present when positive. Micro F1 is over every (report, label) pair; macro F1 is over
  labels with at least `MIN_MACRO_POSITIVES` reference positives.

Several systems are scored side by side on the same items. ROUGE-L and the label F1s get 95%
bootstrap intervals over reports; the corpus-level BLEU and METEOR are point figures.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medxpert.eval.bootstrap import Estimate, bootstrap_mean
from medxpert.eval.retrieval import Row
from medxpert.labels import default_labeler

logger = logging.getLogger(__name__)

MIN_MACRO_POSITIVES = 5
REPORT_SECTIONS = ("findings", "impression")  # a reference report, in a report's order
TOKEN = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class ReportItem:
    """One held-out study: how to query for it, and its reference report."""

    name: str
    query: Mapping[str, object]  # keyword arguments of `DiagnosisPipeline.evidence`
    reference: str


# A system: the evidence of one query (whatever `evidence` returns) → the text of its report.
System = Callable[[Any], str]


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


def evaluate_reports(
    task: str,
    items: Sequence[ReportItem],
    systems: Mapping[str, System],
    evidence: Callable[..., Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    extra: Callable[[Sequence[str], Sequence[str]], dict[str, float]] | None = None,
) -> list[Row]:
    """Every metric for every system on `items`; each item's evidence (`evidence(**query)`)
    is gathered once and given to every system. `extra(generated, references)` adds point
    figures (e.g. `R2GenText.scores`)."""
    labeler = default_labeler()
    references = [item.reference for item in items]
    generated: dict[str, list[str]] = {name: [] for name in systems}
    for item in tqdm(items, desc=task, unit="report", leave=False):
        context = evidence(**item.query)
        for name, system in systems.items():
            generated[name].append(system(context))
    reference_labels = labeler.label_many(references)
    per_system: dict[str, dict[str, Estimate]] = {}
    for name, texts in generated.items():
        figures = {
            metric: Estimate(value, value, value, len(items))
            for metric, value in bleu(texts, references).items()
        }
        score = meteor(texts, references)
        if score is not None:
            figures["METEOR"] = Estimate(score, score, score, len(items))
        figures["ROUGE-L"] = bootstrap_mean(rouge_l(texts, references), n_boot, seed)
        figures.update(label_f1(labeler.label_many(texts), reference_labels, n_boot, seed))
        for metric, value in (extra(texts, references) if extra else {}).items():
            figures[metric] = Estimate(value, value, value, len(items))
        per_system[name] = figures
        logger.info("%s / %s: %s", task, name, {k: round(v.value, 3) for k, v in figures.items()})
    metrics = list(next(iter(per_system.values())))
    return [
        Row(task, metric, {name: figures[metric] for name, figures in per_system.items()})
        for metric in metrics
    ]
