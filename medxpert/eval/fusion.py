"""How `target="both"` fuses the report and image indexes: every fusion method by label P@k over
the retrieved studies, chosen on the validation split, reported on the test split.

Queries are labelled X-rays, one per study (`fusion_queries`): the first frontal view of each
IU X-ray study and every NIH image. A retrieved study is relevant when it shares a positive
CheXpert label with the query ("No Finding" counts), as in `eval.retrieval_metrics`. For the
validation queries the library is its train split; for the test queries its train and val
splits. The calibration of the ``calibrated`` method (per index: the mean and std of the
queries' top-k cosines) is measured on the validation queries only, and used on both splits.
The method with the highest mean validation P@k wins (ties go to the earlier one listed).

The searches are functions, so that this module needs no search engine: `IndexScores` for the
calibration, and a `Retrieve` that returns the labels of the studies a method retrieves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medxpert.data import Case, group_studies
from medxpert.eval.bootstrap import bootstrap_mean
from medxpert.eval.retrieval import SOURCE_NAMES, Row

K = 10
# per index ("report", "image"): (mean, std) of the top-k cosines
Stats = dict[str, tuple[float, float]]
# one query's search: index → cosines of its top-k studies, best first
IndexScores = Mapping[str, Sequence[float]]
# (query number, method, calibration) → label vectors (n, 14) of the studies it retrieves
Retrieve = Callable[[int, str, Stats], np.ndarray]


def fusion_queries(cases: Sequence[Case]) -> list[Case]:
    """One query image per labelled study with a frontal view: its first frontal image."""
    return [
        study.query_image
        for study in group_studies(cases)
        if study.has_frontal and bool(np.any(study.labels == 1))
    ]


@dataclass(frozen=True)
class FusionSet:
    """One split's queries: their labels (n, 14) and sources, each one's per-index top-k
    cosines, and the retrieval of every method."""

    labels: np.ndarray
    sources: Sequence[str]
    scores: Sequence[IndexScores]
    retrieve: Retrieve


@dataclass(frozen=True)
class FusionResult:
    """The chosen method, the calibration, the validation P@k of each method, and the test
    rows with their columns (the chosen method last)."""

    method: str
    calibration: Stats
    validation: dict[str, float]
    columns: list[str]
    rows: list[Row]


def calibration_of(scores: Sequence[IndexScores]) -> Stats:
    """Per index: the mean and standard deviation of every query's top-k cosines."""
    pooled: dict[str, list[float]] = {}
    for query in scores:
        for modality, cosines in query.items():
            pooled.setdefault(modality, []).extend(float(c) for c in cosines)
    return {
        modality: (float(np.mean(values)), max(float(np.std(values)), 1e-6))
        for modality, values in pooled.items()
        if values
    }


def label_precision(query: np.ndarray, retrieved: np.ndarray, k: int = K) -> float:
    """The share of the k retrieved studies (fewer count as misses) that share a positive
    label with the query."""
    if len(retrieved) == 0:
        return 0.0
    shared = ((np.asarray(retrieved)[:k] == 1) & (np.asarray(query) == 1)).any(axis=1)
    return float(shared.sum() / k)


def precision_by_method(
    queries: FusionSet, methods: Sequence[str], calibration: Stats, k: int = K
) -> dict[str, np.ndarray]:
    """Per method, each query's label P@k."""
    return {
        method: np.array(
            [
                label_precision(labels, queries.retrieve(i, method, calibration), k)
                for i, labels in enumerate(queries.labels)
            ]
        )
        for method in methods
    }


def choose_method(per_query: Mapping[str, np.ndarray], methods: Sequence[str]) -> str:
    """The method of `methods` with the highest mean (the earlier one on a tie)."""
    best = max(float(per_query[m].mean()) for m in methods)
    return next(m for m in methods if float(per_query[m].mean()) >= best - 1e-12)


def fusion_rows(
    per_query: Mapping[str, np.ndarray],
    sources: Sequence[str],
    *,
    k: int = K,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Row]:
    """Label P@k of every method with 95% intervals: per source, then over all queries."""
    sources = np.asarray(sources)
    groups = [
        (SOURCE_NAMES.get(name, name), sources == name) for name in dict.fromkeys(sources.tolist())
    ]
    groups.append(("all", np.ones(len(sources), dtype=bool)))
    return [
        Row(
            f"{name} ({int(mask.sum())} test queries)",
            f"label P@{k}",
            {m: bootstrap_mean(values[mask], n_boot, seed) for m, values in per_query.items()},
        )
        for name, mask in groups
    ]


def evaluate_fusion(
    val: FusionSet,
    test: FusionSet,
    methods: Sequence[str],
    *,
    baselines: Sequence[str] = (),
    k: int = K,
    n_boot: int = 1000,
    seed: int = 0,
) -> FusionResult:
    """Choose among `methods` on `val`; report them and the `baselines` (e.g. one index
    alone, never chosen) on `test`."""
    calibration = calibration_of(val.scores)
    on_val = precision_by_method(val, methods, calibration, k)
    method = choose_method(on_val, methods)
    columns = [*baselines, *(m for m in methods if m != method), method]
    on_test = precision_by_method(test, columns, calibration, k)
    return FusionResult(
        method,
        calibration,
        {m: round(float(values.mean()), 4) for m, values in on_val.items()},
        columns,
        fusion_rows(on_test, test.sources, k=k, n_boot=n_boot, seed=seed),
    )
