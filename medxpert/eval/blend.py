"""The zero-shot blend weight: chosen on the validation split, measured on the test split.

Per query X-ray: the similarity-weighted vote of its k retrieved cases (its own patient left
out) and the label captioner's calibrated zero-shot probabilities. The weight w of
p = (1 − w) · vote + w · zero-shot is the one with the lowest Brier score on the validation
X-rays, over the labels the captioner scores that have ≥ `MIN_AUC_POSITIVES` positives and some
negatives there (ties go to the smaller w). For validation the captioner is calibrated on the
library's train images only, so no validation label is used twice. On test, the vote alone, the
zero-shot scores alone and the chosen blend are compared side by side with 95% intervals.

`run(pipeline)` does all of it on a library's val X-rays and the `BLEND_TEST_SOURCES` test
X-rays; `save` writes the figures, the weight curve and the weight (``blend.json``, read by
diagnose) next to the index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from medxpert.data import load_cases
from medxpert.errors import DataNotFoundError
from medxpert.eval.context import MIN_AUC_POSITIVES
from medxpert.eval.plots import weight_curve
from medxpert.eval.results import Evaluation, Row
from medxpert.eval.sources import BLEND_TEST_SOURCES
from medxpert.labels import CHEXPERT_LABELS
from medxpert.metrics.bootstrap import bootstrap_auc, bootstrap_mean, roc_auc

if TYPE_CHECKING:
    from medxpert.pipeline import DiagnosisPipeline

WEIGHTS = tuple(round(float(w), 2) for w in np.linspace(0.0, 1.0, 11))


@dataclass(frozen=True)
class BlendQuery:
    """One labelled query X-ray: its vector, its patient and its CheXpert-14 labels."""

    vector: np.ndarray
    patient_id: str
    labels: np.ndarray


@dataclass(frozen=True)
class BlendInputs:
    """Per query (rows) and CheXpert-14 label (columns): the vote, the zero-shot probability
    (NaN where the captioner gives none) and the truth (1 / 0 / NaN)."""

    votes: np.ndarray
    zero_shot: np.ndarray
    truth: np.ndarray

    def blended(self, weight: float) -> np.ndarray:
        mix = (1.0 - weight) * self.votes + weight * np.nan_to_num(self.zero_shot)
        return np.where(np.isnan(self.zero_shot), self.votes, mix)

    def labels(self) -> list[int]:
        """Columns the blend changes with enough positives and some negatives to score."""
        scored = ~np.isnan(self.zero_shot).all(axis=0)
        positives = np.sum(self.truth == 1, axis=0)
        negatives = np.sum(self.truth == 0, axis=0)
        return [
            j
            for j in range(len(CHEXPERT_LABELS))
            if scored[j] and positives[j] >= MIN_AUC_POSITIVES and negatives[j] > 0
        ]


# (query vector, patient to leave out) → the vote of the cases retrieved without that patient
Vote = Callable[[np.ndarray, str], dict[str, float]]
# query vector → the captioner's zero-shot probabilities
ZeroShot = Callable[[np.ndarray], dict[str, float]]


def collect(queries: Sequence[BlendQuery], vote: Vote, zero_shot: ZeroShot) -> BlendInputs:
    """The vote and the zero-shot probabilities of every query."""
    votes, scores = [], []
    for query in tqdm(queries, desc="blend queries", unit="query", leave=False):
        voted = vote(query.vector, query.patient_id)
        votes.append([voted[label] for label in CHEXPERT_LABELS])
        probabilities = zero_shot(query.vector)
        scores.append([probabilities.get(label, np.nan) for label in CHEXPERT_LABELS])
    truth = np.stack([query.labels for query in queries]).astype(np.float64)
    truth[(truth != 1) & (truth != 0)] = np.nan
    return BlendInputs(np.array(votes), np.array(scores, dtype=np.float64), truth)


def macro_auc(truth: np.ndarray, scores: np.ndarray, labels: Sequence[int]) -> float:
    values = []
    for j in labels:
        known = ~np.isnan(truth[:, j])
        values.append(roc_auc(truth[known, j] == 1, scores[known, j]))
    return float(np.nanmean(values))


def brier_per_query(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Mean squared error of `scores` against the known labels of each query that has one."""
    known = ~np.isnan(truth)
    rows = known.any(axis=1)
    squared = np.where(known, (scores - np.nan_to_num(truth)) ** 2, 0.0)
    return squared[rows].sum(axis=1) / known[rows].sum(axis=1)


def choose_weight(
    inputs: BlendInputs, weights: Iterable[float] = WEIGHTS
) -> tuple[float, dict[float, dict[str, float]]]:
    """The weight with the lowest Brier score on `inputs` (the smaller on a tie), and the Brier
    score and macro AUC of every weight tried. The probabilities are shown to users and
    thresholded (ICD-10, triage), so they are chosen by a proper scoring rule, which rewards
    calibration as well as ranking."""
    labels = inputs.labels()
    if not labels:
        return 0.0, {}
    truth = inputs.truth[:, labels]
    table = {
        w: {
            "Brier": float(brier_per_query(truth, inputs.blended(w)[:, labels]).mean()),
            "macro AUC": macro_auc(inputs.truth, inputs.blended(w), labels),
        }
        for w in weights
    }
    best = min(scores["Brier"] for scores in table.values())
    return min(w for w, scores in table.items() if scores["Brier"] <= best + 1e-12), table


def evaluate_blend(
    inputs: BlendInputs,
    weight: float,
    labels: Sequence[int],
    *,
    task: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[list[str], list[Row]]:
    """Vote alone, zero-shot alone and the blend at `weight` on `labels`: AUC per label, macro
    AUC and the Brier score (lower is better), each with a 95% interval."""
    systems = {"vote (w=0)": 0.0, "zero-shot (w=1)": 1.0, f"blend (w={weight:g})": weight}
    truth = inputs.truth[:, labels]
    aucs, briers = {}, {}
    for name, w in systems.items():
        scores = inputs.blended(w)[:, labels]
        aucs[name] = bootstrap_auc(truth, scores, n_boot, seed)
        briers[name] = bootstrap_mean(brier_per_query(truth, scores), n_boot, seed)
    rows = [
        Row(
            task,
            f"AUC {CHEXPERT_LABELS[j]} (n+={int(np.sum(truth[:, i] == 1))})",
            {name: auc[0][i] for name, auc in aucs.items()},
        )
        for i, j in enumerate(labels)
    ]
    rows.append(Row(task, f"AUC macro ({len(labels)} labels)", {n: a[1] for n, a in aucs.items()}))
    rows.append(Row(task, "Brier score (lower is better)", briers))
    return list(systems), rows


@dataclass(frozen=True)
class BlendRun:
    """The measured blend: the test figures, the weight chosen on val and how it was chosen."""

    evaluation: Evaluation
    weight: float
    validation_brier: dict[float, float]
    k: int
    target: str
    fingerprint: str  # the encoder's: the weight is saved for it


def run(
    pipeline: DiagnosisPipeline,
    *,
    k: int = 10,
    target: str = "both",
    n_boot: int = 1000,
    test_sources: Sequence[str] = BLEND_TEST_SOURCES,
) -> BlendRun:
    """Choose the weight on the library's val X-rays (captioner calibrated on its train X-rays)
    and measure vote, zero-shot and blend on the test X-rays of `test_sources`. `pipeline`'s
    captioner is the label captioner, calibrated on the whole library, as diagnose uses it."""
    from medxpert.caption.labels import LabelCaptioner
    from medxpert.retrieval import Filters
    from medxpert.retrieval.probabilities import label_probabilities

    engine, encoder = pipeline.engine, pipeline.engine.encoder

    def vote(vector: np.ndarray, patient: str) -> dict[str, float]:
        leave_out = Filters.of(exclude_patients=[patient])
        hits = engine.search_vectors(vector[None], k=k, target=target, filters=leave_out)
        return label_probabilities(hits[0]).probabilities

    def queries(vectors, cases) -> list[BlendQuery]:
        return [BlendQuery(v, c.patient_id, c.labels) for v, c in zip(vectors, cases, strict=True)]

    val_captioner = LabelCaptioner(encoder)  # no validation label is used twice
    train_vectors, train_cases = engine.library.image_vectors(["train"])
    val_captioner.calibrate(train_vectors, np.stack([case.labels for case in train_cases]))
    val = collect(
        queries(*engine.library.image_vectors(["val"])),
        vote,
        lambda vector: val_captioner.probabilities(vector=vector),
    )
    weight, table = choose_weight(val)
    if not table:
        raise DataNotFoundError(
            f"none of the {len(val.truth)} validation X-rays' labels that the captioner scores "
            "has enough positives and negatives to choose a blend weight on; add labelled "
            "validation X-rays."
        )
    val_brier = {w: round(scores["Brier"], 4) for w, scores in table.items()}
    test_cases = [
        case for source in test_sources for case in load_cases(source, "test") if case.has_image
    ]
    test = collect(
        queries(encoder.encode_images([case.image_path for case in test_cases]), test_cases),
        vote,
        lambda vector: pipeline.captioner.probabilities(vector=vector),
    )
    systems, rows = evaluate_blend(test, weight, val.labels(), task="test X-rays", n_boot=n_boot)
    meta = {
        "k": k,
        "target": target,
        "test sources": list(test_sources),
        "chosen on": f"{len(val.truth)} validation X-rays (captioner calibrated on train)",
        "validation Brier score by weight (chooses)": val_brier,
        "validation macro AUC by weight": {
            w: round(scores["macro AUC"], 4) for w, scores in table.items()
        },
        "zero_shot_weight": weight,
        "bootstrap": n_boot,
    }
    evaluation = Evaluation(rows, systems, "Zero-shot blend, test split", meta)
    return BlendRun(evaluation, weight, val_brier, k, target, encoder.fingerprint())


def save(result: BlendRun, index_dir: str | Path, prefix: str | Path) -> dict[str, Path]:
    """The figures (`prefix`.json/.csv/.md/.png), the weight curve (`prefix`_weight.png) and
    the weight next to the index (``blend.json``, key "blend")."""
    from medxpert.retrieval.probabilities import write_blend_weight

    prefix = Path(prefix)
    paths = result.evaluation.write(prefix)
    paths["curve"] = weight_curve(
        result.validation_brier,
        result.weight,
        prefix.with_name(prefix.name + "_weight.png"),
        title="Choosing the blend weight (validation)",
        ylabel="Brier score (lower is better)",
    )
    paths["blend"] = write_blend_weight(
        index_dir,
        result.weight,
        result.fingerprint,
        chosen_on="val",
        validation_brier={str(w): value for w, value in result.validation_brier.items()},
        k=result.k,
        target=result.target,
    )
    return paths
