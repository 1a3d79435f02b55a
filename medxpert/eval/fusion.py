"""How `target="both"` fuses the report and image indexes: every fusion method by label P@k over
the retrieved studies, chosen on the validation split, reported on the test split.

Queries are labelled X-rays, one per study (`fusion_queries`): the first frontal view of each
IU X-ray study and every NIH image. A retrieved study is relevant when it shares a positive
CheXpert label with the query ("No Finding" counts), as in `metrics.retrieval`. For the
validation queries the library is its train split; for the test queries its train and val
splits. The calibration of the ``calibrated`` method (per index: the mean and std of the
queries' top-k cosines) is measured on the validation queries only, and used on both splits.
The method with the highest mean validation P@k wins (ties go to the earlier one listed).

The measures take the searches as functions (`IndexScores` for the calibration, a `Retrieve`
that returns the labels of the studies a method retrieves); `run(engine)` makes them from a
search engine over the `FUSION_SOURCES` queries, and `save` writes the figures and the chosen
fusion (``fusion.json``, read by search and diagnose) next to the index.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medxpert.data import Case, group_studies, load_cases
from medxpert.errors import DataNotFoundError, IndexFormatError
from medxpert.eval.results import Evaluation, Row
from medxpert.eval.retrieval import SOURCE_NAMES, cached
from medxpert.eval.sources import FUSION_SOURCES
from medxpert.labels import NUM_LABELS
from medxpert.metrics.bootstrap import bootstrap_mean
from medxpert.retrieval.fusion import FUSION_METHODS, Calibration, Fusion, write_fusion

if TYPE_CHECKING:
    from medxpert.retrieval import SearchEngine

K = 10
CHOOSABLE = tuple(m for m in FUSION_METHODS if m != "max-cosine")  # raw cosine: a baseline only
ONE_INDEX = {"reports only": 0, "images only": 1}  # baselines: the position in study_lists
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


@dataclass(frozen=True)
class FusionRun:
    """The measured fusion: the test figures and the fusion chosen on val."""

    evaluation: Evaluation
    fusion: Fusion
    validation: dict[str, float]  # label P@k by method on val
    k: int
    fingerprint: str  # the encoder's: the fusion is saved for it


def run(
    engine: SearchEngine,
    *,
    k: int = K,
    k0: int = 60,
    n_boot: int = 1000,
    sources: Sequence[str] = FUSION_SOURCES,
) -> FusionRun:
    """Choose the fusion on the val X-rays of `sources` against the library's train split;
    compare every method on their test X-rays against its train and val splits."""
    from medxpert.retrieval import Filters

    library = engine.library
    if not library.count("reports") or not library.count("images"):
        raise DataNotFoundError(
            f"the library {library.manifest.get('name', '')!r} needs both a report and an image "
            "index to fuse; "
            "build it from sources with images and reports (`medxpert index build`)."
        )
    try:  # the library's own vectors of its (val) images, where it stores them exactly
        stored = library.image_vectors_by_path()
    except IndexFormatError:
        stored = {}
    embed = cached(engine.encoder.encode_images, stored)

    def fusion_of(method: str, stats: Stats) -> Fusion:
        return Fusion(method, k0, Calibration({"image": stats}))

    def queries(split: str, library_splits: list[str]) -> FusionSet:
        cases = fusion_queries([c for s in sources for c in load_cases(s, split)])
        if not cases:
            raise DataNotFoundError(f"no labelled {split} X-rays in {', '.join(sources)}.")
        lists = engine.study_lists(
            embed([case.image_path for case in cases]),
            k=k,
            target="both",
            filters=Filters.of(splits=library_splits),
        )

        def retrieve(i: int, method: str, stats: Stats) -> np.ndarray:
            if method in ONE_INDEX:
                hits = engine.hits(lists[i][ONE_INDEX[method]], k)
            else:
                hits = engine.fused_hits(lists[i], k, fusion_of(method, stats), "image")
            return np.array([hit.case.labels for hit in hits]).reshape(-1, NUM_LABELS)

        return FusionSet(
            np.stack([case.labels for case in cases]),
            [case.source for case in cases],
            [
                {found[0].modality: [m.cosine for m in found] for found in per_index if found}
                for per_index in lists
            ],
            retrieve,
        )

    val, test = queries("val", ["train"]), queries("test", ["train", "val"])
    result = evaluate_fusion(
        val, test, CHOOSABLE, baselines=[*ONE_INDEX, "max-cosine"], k=k, n_boot=n_boot
    )
    calibration = {m: [round(v, 4) for v in values] for m, values in result.calibration.items()}
    meta = {
        "k": k,
        "rrf k0": k0,
        "queries": f"{len(val.labels)} validation, {len(test.labels)} test ({', '.join(sources)})",
        "chosen on": f"{len(val.labels)} validation X-rays against the train split",
        f"validation label P@{k} by method (chooses)": result.validation,
        "calibration (image queries: mean, std of the top-k cosines per index)": calibration,
        "fusion": result.method,
        "bootstrap": n_boot,
    }
    evaluation = Evaluation(
        result.rows, result.columns, "Fusing reports and images (target both), test split", meta
    )
    chosen = fusion_of(result.method, result.calibration)
    return FusionRun(evaluation, chosen, result.validation, k, engine.encoder.fingerprint())


def save(result: FusionRun, index_dir: str | Path, prefix: str | Path) -> dict[str, Path]:
    """The figures (`prefix`.json/.csv/.md/.png) and the chosen fusion next to the index
    (``fusion.json``, key "fusion")."""
    paths = result.evaluation.write(prefix)
    paths["fusion"] = write_fusion(
        index_dir,
        result.fusion,
        result.fingerprint,
        chosen_on="val",
        k=result.k,
        validation_label_precision=result.validation,
    )
    return paths
