"""Retrieval evaluation: every protocol, for several models side by side, with chance.

Protocols, on the test split:
- paired (image + its own report): Recall@1/5/10 image→text and text→image, and MRR;
- labelled (a hit shares a positive label with the query; No Finding counts): P@1/5/10 for
  report→image (text-only test reports against the test images), image→report and
  image→image (a query never retrieves itself);
- class-balanced (MIMIC 5×200 style): the same number of queries per class for Atelectasis,
  Cardiomegaly, Consolidation, Edema and Pleural Effusion (queries positive for exactly one
  of them), P@10 for the query's class;
- kNN pathology AUC: labels of each test image from the similarity-weighted labels of its
  top-K train neighbours; per-label and macro AUC over labels with ≥ 10 test positives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medxpert.data import Case
from medxpert.eval.bootstrap import Estimate, bootstrap_auc, bootstrap_mean
from medxpert.eval.retrieval_metrics import (
    chance_label_precision,
    class_precision_at_k,
    knn_label_scores,
    label_precision_at_k,
    recall_at_k,
    reciprocal_rank,
)
from medxpert.labels import CHEXPERT_LABELS, LABEL_INDEX

logger = logging.getLogger(__name__)

K_VALUES = (1, 5, 10)
BALANCED_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
KNN_K = 25
MIN_AUC_POSITIVES = 10

# An embedding function: (images or texts) → (n, d) L2-normalised vectors.
Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Embedder:
    """What a model needs to provide to be evaluated."""

    images: Embed
    texts: Embed


def cached(embed: Embed, cache: Mapping[str, np.ndarray]) -> Embed:
    """`embed` that takes the vectors of items found in `cache` (for example a saved case
    library's, made by the same model) and embeds only the rest."""

    def lookup(items: Sequence[str]) -> np.ndarray:
        missing = [item for item in items if item not in cache]
        fresh = dict(zip(missing, embed(missing), strict=True)) if missing else {}
        if not items:
            return embed(items)
        return np.stack([cache[item] if item in cache else fresh[item] for item in items])

    return lookup


@dataclass(frozen=True)
class RetrievalSets:
    """The evaluation sets drawn from test (and train, for kNN) cases."""

    pairs: list[Case]  # image + its own report
    images: list[Case]  # labelled images without a report
    reports: list[Case]  # labelled reports without an image, one per study
    knn_gallery: list[Case]  # labelled train images, for kNN label voting
    sections: tuple[str, ...] = ("impression", "findings")

    @classmethod
    def from_cases(
        cls,
        test: Sequence[Case],
        train: Sequence[Case],
        sections: Sequence[str] = ("impression", "findings"),
    ) -> RetrievalSets:
        def labelled(case: Case) -> bool:
            return bool(np.any(case.labels == 1))

        pairs = [c for c in test if c.has_image and c.text(sections)]
        images = [c for c in test if c.has_image and not c.text(sections) and labelled(c)]
        reports, seen = [], set()
        for case in test:
            is_report = not case.has_image and case.text(sections) and labelled(case)
            if is_report and case.study_id not in seen:
                seen.add(case.study_id)
                reports.append(case)
        gallery = [c for c in train if c.has_image and not c.text(sections) and labelled(c)]
        return cls(pairs, images, reports, gallery, tuple(sections))

    def describe(self) -> str:
        return (
            f"{len(self.pairs)} test pairs, {len(self.images)} labelled test images, "
            f"{len(self.reports)} labelled test reports, {len(self.knn_gallery)} train images "
            "for kNN"
        )


@dataclass(frozen=True)
class Row:
    task: str
    metric: str
    estimates: dict[str, Estimate]  # model name (and "chance") → estimate


def evaluate(
    models: Mapping[str, Embedder],
    sets: RetrievalSets,
    *,
    knn_k: int = KNN_K,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Row]:
    """Every protocol the sets allow, for every model and for chance."""
    rows: list[Row] = []
    vectors = {name: _embed_all(model, sets) for name, model in models.items()}
    if len(sets.pairs) >= 2:
        rows += _paired(vectors, len(sets.pairs), n_boot, seed)
    if sets.images and sets.reports:
        rows += _labelled(vectors, sets, n_boot, seed)
        rows += _balanced(vectors, sets, n_boot, seed)
    if len(sets.images) > 10:
        rows += _image_to_image(vectors, sets, n_boot, seed)
    if sets.images and sets.knn_gallery:
        rows += _knn_auc(vectors, sets, knn_k, n_boot, seed)
    return rows


def _embed_all(model: Embedder, sets: RetrievalSets) -> dict[str, np.ndarray]:
    text = [case.text(sets.sections) for case in sets.pairs]
    return {
        "pair_images": model.images([c.image_path for c in sets.pairs]),
        "pair_texts": model.texts(text),
        "images": model.images([c.image_path for c in sets.images]),
        "reports": model.texts([c.text(sets.sections) for c in sets.reports]),
        "gallery": model.images([c.image_path for c in sets.knn_gallery]),
    }


def _positives(cases: Sequence[Case]) -> np.ndarray:
    return np.stack([case.labels == 1 for case in cases])


def _paired(vectors, n: int, n_boot: int, seed: int) -> list[Row]:
    rows = []
    harmonic = sum(1 / r for r in range(1, n + 1)) / n
    for direction, (a, b) in {
        "image→text": ("pair_images", "pair_texts"),
        "text→image": ("pair_texts", "pair_images"),
    }.items():
        for k in K_VALUES:
            estimates = {
                name: bootstrap_mean(recall_at_k(v[a] @ v[b].T, k), n_boot, seed)
                for name, v in vectors.items()
            }
            estimates["chance"] = Estimate(min(k / n, 1.0), min(k / n, 1.0), min(k / n, 1.0), n)
            rows.append(Row(f"paired {direction}", f"R@{k}", estimates))
        estimates = {
            name: bootstrap_mean(reciprocal_rank(v[a] @ v[b].T), n_boot, seed)
            for name, v in vectors.items()
        }
        estimates["chance"] = Estimate(harmonic, harmonic, harmonic, n)
        rows.append(Row(f"paired {direction}", "MRR", estimates))
    return rows


def _precision_rows(
    task, vectors, query_key, gallery_key, query_pos, gallery_pos, n_boot, seed, exclude_self=False
) -> list[Row]:
    chance = bootstrap_mean(chance_label_precision(query_pos, gallery_pos), n_boot, seed)
    rows = []
    for k in K_VALUES:
        estimates = {
            name: bootstrap_mean(
                label_precision_at_k(
                    v[query_key] @ v[gallery_key].T, query_pos, gallery_pos, k, exclude_self
                ),
                n_boot,
                seed,
            )
            for name, v in vectors.items()
        }
        estimates["chance"] = chance
        rows.append(Row(task, f"P@{k}", estimates))
    return rows


def _labelled(vectors, sets: RetrievalSets, n_boot: int, seed: int) -> list[Row]:
    image_pos, report_pos = _positives(sets.images), _positives(sets.reports)
    return _precision_rows(
        "report→image", vectors, "reports", "images", report_pos, image_pos, n_boot, seed
    ) + _precision_rows(
        "image→report", vectors, "images", "reports", image_pos, report_pos, n_boot, seed
    )


def _image_to_image(vectors, sets: RetrievalSets, n_boot: int, seed: int) -> list[Row]:
    positives = _positives(sets.images)
    chance_values = chance_label_precision(positives, positives)
    # a random ranking that never returns the query itself
    chance_values = (chance_values * len(sets.images) - 1) / (len(sets.images) - 1)
    rows = _precision_rows(
        "image→image",
        vectors,
        "images",
        "images",
        positives,
        positives,
        n_boot,
        seed,
        exclude_self=True,
    )
    chance = bootstrap_mean(chance_values, n_boot, seed)
    return [Row(row.task, row.metric, {**row.estimates, "chance": chance}) for row in rows]


def balanced_queries(cases: Sequence[Case], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(query indices, class index per query): queries positive for exactly one of the five
    classes, the same number per class (the smallest class's count), drawn with `seed`."""
    class_index = np.array([LABEL_INDEX[name] for name in BALANCED_CLASSES])
    positives = _positives(cases)[:, class_index] if cases else np.zeros((0, 5), bool)
    single = positives.sum(axis=1) == 1
    pools = [np.flatnonzero(single & positives[:, c]) for c in range(len(class_index))]
    per_class = min(len(pool) for pool in pools)
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(pool, per_class, replace=False) for pool in pools]
    queries = np.concatenate(chosen) if per_class else np.array([], dtype=int)
    classes = np.repeat(class_index, per_class)
    return queries.astype(int), classes


def _balanced(vectors, sets: RetrievalSets, n_boot: int, seed: int) -> list[Row]:
    rows = []
    gallery_pos = _positives(sets.images)
    for task, query_cases, query_key, same in (
        ("report→image 5×N", sets.reports, "reports", False),
        ("image→image 5×N", sets.images, "images", True),
    ):
        queries, classes = balanced_queries(query_cases, seed)
        if len(queries) == 0:
            logger.info("%s: no class has a single-label query; skipped", task)
            continue
        per_class = len(queries) // len(BALANCED_CLASSES)
        estimates = {}
        for name, v in vectors.items():
            similarity = v[query_key][queries] @ v["images"].T
            if same:  # never retrieve the query itself
                similarity[np.arange(len(queries)), queries] = -np.inf
            estimates[name] = bootstrap_mean(
                class_precision_at_k(similarity, classes, gallery_pos, 10), n_boot, seed
            )
        prevalence = gallery_pos[:, classes].mean(axis=0)
        estimates["chance"] = bootstrap_mean(prevalence, n_boot, seed)
        rows.append(Row(task.replace("N", str(per_class)), "P@10 (query class)", estimates))
    return rows


def _knn_auc(vectors, sets: RetrievalSets, k: int, n_boot: int, seed: int) -> list[Row]:
    truth = np.stack([case.labels for case in sets.images]).astype(np.float64)
    truth[truth == -1] = np.nan  # uncertain: neither positive nor negative
    gallery = np.stack([case.labels for case in sets.knn_gallery]) == 1
    counts, negatives = np.sum(truth == 1, axis=0), np.sum(truth == 0, axis=0)
    labels = [
        i
        for i in range(len(CHEXPERT_LABELS))
        if counts[i] >= MIN_AUC_POSITIVES and negatives[i] > 0
    ]
    if not labels:
        logger.info(
            "kNN AUC: no label has %d test positives and a negative; skipped", MIN_AUC_POSITIVES
        )
        return []
    per_model = {}
    for name, v in vectors.items():
        scores = knn_label_scores(v["images"] @ v["gallery"].T, gallery, k)
        per_model[name] = bootstrap_auc(truth[:, labels], scores[:, labels], n_boot, seed)
    rows = [
        Row(
            "kNN AUC",
            f"{CHEXPERT_LABELS[label]} (n+={int(counts[label])})",
            {
                **{name: result[0][j] for name, result in per_model.items()},
                "chance": Estimate(0.5, 0.5, 0.5, len(truth)),
            },
        )
        for j, label in enumerate(labels)
    ]
    rows.append(
        Row(
            "kNN AUC",
            f"macro ({len(labels)} labels)",
            {
                **{name: result[1] for name, result in per_model.items()},
                "chance": Estimate(0.5, 0.5, 0.5, len(truth)),
            },
        )
    )
    return rows
