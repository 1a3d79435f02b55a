"""Retrieval evaluation, study by study: every protocol, for several models side by side, with
chance.

Protocols, on the test split:
- **paired studies** (each source with image + report studies, e.g. IU X-ray, COVID): one
  frontal image per study is the image query, the study's report its target, the pool every
  test study of that source. Recall@1/5/10 and MRR image→report and report→image. The views
  of a study are never two queries, and studies whose reports are identical once normalised
  count as one answer (a random ranking's figures, "chance", are exact for that rule);
- **labelled studies**: label P@1/5/10 (a hit shares a positive label with the query; No
  Finding counts) image→report, report→image and image→image within the labelled paired
  studies, and image→image / image→report for labelled images without a report (NIH, against
  the paired studies' reports); a query never retrieves itself;
- **class-balanced** (MIMIC 5×200 style): the same number of queries per class for
  Atelectasis, Cardiomegaly, Consolidation, Edema and Pleural Effusion, P@10 for the query's
  class, image→image over all labelled test images (say N);
- **kNN pathology AUC**: each test image's labels from the similarity-weighted labels of its
  top-K train neighbours of the same source; per-label and macro AUC over labels with ≥ 10
  test positives;
- **embedding space**: mean top-1 neighbour cosine, uniformity and effective rank of the test
  image and report vectors (a collapsed space has cosines near 1 and a low effective rank).

`run(tuned, queries, gallery)` compares a fine-tuned model with its untuned backbone and chance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medxpert.data import Case, Study, group_studies, report_groups
from medxpert.eval.results import Evaluation, Row
from medxpert.labels import CHEXPERT_LABELS, LABEL_INDEX
from medxpert.metrics.bootstrap import Estimate, bootstrap_auc, bootstrap_mean
from medxpert.metrics.retrieval import (
    chance_group_mrr,
    chance_group_recall,
    chance_label_precision,
    class_precision_at_k,
    effective_rank,
    group_recall_at_k,
    group_reciprocal_rank,
    knn_label_scores,
    label_precision_at_k,
    mean_top1_cosine,
    uniformity,
)

if TYPE_CHECKING:
    from medxpert.encoders import DualEncoder

logger = logging.getLogger(__name__)

K_VALUES = (1, 5, 10)
BALANCED_CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
KNN_K = 25
MIN_AUC_POSITIVES = 10
SOURCE_NAMES = {
    "iu_xray": "IU X-ray",
    "iu_xray_r2gen": "IU X-ray (R2Gen split)",
    "nih_cxr14": "NIH",
    "covid_cxr": "COVID",
}

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


def _labelled(labels: np.ndarray) -> bool:
    return bool(np.any(labels == 1))


def _name(source: str) -> str:
    return SOURCE_NAMES.get(source, source)


@dataclass(frozen=True)
class RetrievalSets:
    """The evaluation sets, by source, drawn from test cases (and train cases for kNN)."""

    paired: dict[str, list[Study]]  # source → test studies with a query image and a report
    images: dict[str, list[Case]]  # source → labelled test images of studies without a report
    knn: dict[str, tuple[list[Case], list[Case]]] = field(default_factory=dict)
    sections: tuple[str, ...] = ("impression", "findings")

    @classmethod
    def from_cases(
        cls,
        test: Sequence[Case],
        train: Sequence[Case],
        sections: Sequence[str] = ("impression", "findings"),
    ) -> RetrievalSets:
        paired: dict[str, list[Study]] = {}
        images: dict[str, list[Case]] = {}
        for study in group_studies(test):
            if study.query_image is None:
                continue
            if study.text(sections):
                paired.setdefault(_name(study.source), []).append(study)
            elif _labelled(study.labels):
                images.setdefault(_name(study.source), []).append(study.query_image)
        gallery: dict[str, list[Case]] = {}
        for study in group_studies(train):
            if study.query_image is not None and _labelled(study.labels):
                gallery.setdefault(_name(study.source), []).append(study.query_image)
        knn = {}
        for source, studies in paired.items():
            queries = [s.query_image for s in studies if _labelled(s.labels)]
            knn[source] = (queries, gallery.get(source, []))
        for source, cases in images.items():
            knn[source] = (cases, gallery.get(source, []))
        return cls(paired, images, knn, tuple(sections))

    def describe(self) -> str:
        parts = [f"{len(v)} {k} test studies (image + report)" for k, v in self.paired.items()]
        parts += [f"{len(v)} labelled {k} test images" for k, v in self.images.items()]
        parts += [f"{len(g)} {k} train images for kNN" for k, (_, g) in self.knn.items() if g]
        return ", ".join(parts)


def evaluate(
    models: Mapping[str, Embedder],
    sets: RetrievalSets,
    *,
    knn_k: int = KNN_K,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Row]:
    """Every protocol the sets allow, for every model and for chance."""
    vectors = {name: _embed_all(model, sets) for name, model in models.items()}
    rows: list[Row] = []
    for source, studies in sets.paired.items():
        if len(studies) >= 2:
            rows += _paired(source, studies, vectors, sets.sections, n_boot, seed)
    rows += _labelled_rows(sets, vectors, n_boot, seed)
    rows += _balanced(sets, vectors, n_boot, seed)
    for source, (queries, gallery) in sets.knn.items():
        if queries and gallery:
            rows += _knn_auc(source, queries, gallery, vectors, knn_k, n_boot, seed)
    rows += _space(sets, vectors)
    return rows


def run(
    tuned: DualEncoder,
    queries: Sequence[Case],
    gallery: Sequence[Case],
    *,
    split: str = "test",
    baseline: str | None = None,
    library_vectors: Mapping[str, np.ndarray] | None = None,
    cache_dir: str | Path | None = None,
    knn_k: int = KNN_K,
    n_boot: int = 1000,
) -> Evaluation:
    """`tuned` against the untuned `baseline` backbone (default: its own, with its own input
    size) and chance, on the `split` cases `queries` (kNN neighbours from `gallery`, the train
    cases). `library_vectors` (image path → vector, from a library built with `tuned`) are used
    instead of embedding those images again; `cache_dir` keeps the frozen stages' features."""
    import torch

    from medxpert.encoders import DualEncoder

    torch.manual_seed(0)  # the untuned model's new projection heads: the same every run
    untuned = DualEncoder.create(baseline or tuned.backbone, device=tuned.device.type)
    if untuned.backbone == tuned.backbone:  # the same input, so the difference is the tuning
        untuned.preprocess = dict(tuned.preprocess)
    if cache_dir is not None:  # the untuned towers share the frozen stages and their features
        tuned.use_feature_cache(cache_dir)
        frozen = tuned.image_stages.frozen_stages if tuned.image_stages else None
        untuned.use_feature_cache(cache_dir, image_stages=frozen)
    sets = RetrievalSets.from_cases(queries, gallery)
    logger.info("evaluating on %s", sets.describe())
    tuned_images = tuned.encode_images
    if library_vectors:
        tuned_images = cached(tuned_images, library_vectors)
    models = {
        "untuned": Embedder(untuned.encode_images, untuned.encode_texts),
        "fine-tuned": Embedder(tuned_images, tuned.encode_texts),
    }
    meta = {
        "model": tuned.info.get("path"),
        "baseline": untuned.backbone,
        "split": split,
        "sets": sets.describe(),
        "knn_k": knn_k,
        "library vectors": len(library_vectors or {}),
        "bootstrap": n_boot,
    }
    return Evaluation(
        evaluate(models, sets, knn_k=knn_k, n_boot=n_boot),
        ["chance", *models],
        f"Retrieval, {split} split",
        meta,
    )


def _embed_all(model: Embedder, sets: RetrievalSets) -> dict[str, np.ndarray]:
    paths = sorted(
        {s.query_image.image_path for studies in sets.paired.values() for s in studies}
        | {c.image_path for cases in sets.images.values() for c in cases}
        | {c.image_path for q, g in sets.knn.values() for c in (*q, *g)}
    )
    texts = sorted({s.text(sets.sections) for v in sets.paired.values() for s in v})
    return {
        **dict(zip(paths, model.images(paths), strict=True)),
        **{("text", t): v for t, v in zip(texts, model.texts(texts), strict=True)},
    }


def _images(vectors: dict, cases: Sequence[Case]) -> np.ndarray:
    return np.stack([vectors[c.image_path] for c in cases])


def _reports(vectors: dict, studies: Sequence[Study], sections) -> np.ndarray:
    return np.stack([vectors[("text", s.text(sections))] for s in studies])


def _positives(items: Sequence[Case | Study]) -> np.ndarray:
    return np.stack([item.labels == 1 for item in items])


def _constant(value: float, n: int) -> Estimate:
    return Estimate(value, value, value, n)


def _paired(source, studies, vectors, sections, n_boot, seed) -> list[Row]:
    groups = report_groups([s.text(sections) for s in studies])
    n = len(studies)
    rows = []
    for direction, transpose in (("image→report", False), ("report→image", True)):
        task = f"{source} studies {direction} (pool {n})"
        similarity = {
            name: _images(v, [s.query_image for s in studies]) @ _reports(v, studies, sections).T
            for name, v in vectors.items()
        }
        if transpose:
            similarity = {name: s.T for name, s in similarity.items()}
        for k in K_VALUES:
            estimates = {
                name: bootstrap_mean(group_recall_at_k(s, groups, groups, k), n_boot, seed)
                for name, s in similarity.items()
            }
            estimates["chance"] = bootstrap_mean(
                chance_group_recall(groups, groups, k), n_boot, seed
            )
            rows.append(Row(task, f"R@{k}", estimates))
        estimates = {
            name: bootstrap_mean(group_reciprocal_rank(s, groups, groups), n_boot, seed)
            for name, s in similarity.items()
        }
        estimates["chance"] = bootstrap_mean(chance_group_mrr(groups, groups), n_boot, seed)
        rows.append(Row(task, "MRR", estimates))
    return rows


def _precision_rows(task, similarity, query_pos, gallery_pos, n_boot, seed, same=False):
    """P@K rows; `same`: queries and gallery are the same items (a query skips itself)."""
    chance_values = chance_label_precision(query_pos, gallery_pos)
    if same:  # a random ranking that never returns the query itself
        n = len(gallery_pos)
        chance_values = (chance_values * n - 1) / (n - 1)
    chance = bootstrap_mean(chance_values, n_boot, seed)
    rows = []
    for k in K_VALUES:
        estimates = {
            name: bootstrap_mean(
                label_precision_at_k(s, query_pos, gallery_pos, k, exclude_self=same),
                n_boot,
                seed,
            )
            for name, s in similarity.items()
        }
        rows.append(Row(task, f"P@{k}", {**estimates, "chance": chance}))
    return rows


def _labelled_rows(sets: RetrievalSets, vectors, n_boot, seed) -> list[Row]:
    rows = []
    sections = sets.sections
    report_pool = [
        (source, [s for s in studies if _labelled(s.labels)])
        for source, studies in sets.paired.items()
    ]
    for source, studies in report_pool:
        if len(studies) < 11:
            continue
        images = {n: _images(v, [s.query_image for s in studies]) for n, v in vectors.items()}
        reports = {n: _reports(v, studies, sections) for n, v in vectors.items()}
        pos = _positives(studies)
        pairs = {
            "image→report": (images, reports),
            "report→image": (reports, images),
            "image→image": (images, images),
        }
        for direction, (queries, gallery) in pairs.items():
            rows += _precision_rows(
                f"{source} studies {direction} ({len(studies)})",
                {m: queries[m] @ gallery[m].T for m in vectors},
                pos,
                pos,
                n_boot,
                seed,
                same=direction == "image→image",
            )
    largest = max(report_pool, key=lambda item: len(item[1]), default=(None, []))
    for source, cases in sets.images.items():
        if len(cases) < 11:
            continue
        images = {m: _images(v, cases) for m, v in vectors.items()}
        pos = _positives(cases)
        rows += _precision_rows(
            f"{source} image→image ({len(cases)})",
            {m: images[m] @ images[m].T for m in vectors},
            pos,
            pos,
            n_boot,
            seed,
            same=True,
        )
        pool_source, pool = largest
        if len(pool) > 10:
            rows += _precision_rows(
                f"{source} image→{pool_source} report ({len(cases)} × {len(pool)})",
                {m: images[m] @ _reports(v, pool, sections).T for m, v in vectors.items()},
                pos,
                _positives(pool),
                n_boot,
                seed,
            )
    return rows


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


def _balanced(sets: RetrievalSets, vectors, n_boot, seed) -> list[Row]:
    cases = [s.query_image for v in sets.paired.values() for s in v if _labelled(s.labels)]
    cases += [c for v in sets.images.values() for c in v]
    if not cases:
        return []
    queries, classes = balanced_queries(cases, seed)
    if len(queries) == 0:
        logger.info("5×N: no class has a single-label query; skipped")
        return []
    per_class = len(queries) // len(BALANCED_CLASSES)
    gallery_pos = _positives(cases)
    estimates = {}
    for name, v in vectors.items():
        images = _images(v, cases)
        similarity = images[queries] @ images.T
        similarity[np.arange(len(queries)), queries] = -np.inf  # never the query itself
        estimates[name] = bootstrap_mean(
            class_precision_at_k(similarity, classes, gallery_pos, 10), n_boot, seed
        )
    estimates["chance"] = bootstrap_mean(gallery_pos[:, classes].mean(axis=0), n_boot, seed)
    task = f"test images image→image 5×{per_class} ({len(cases)} images)"
    return [Row(task, "P@10 (query class)", estimates)]


def _knn_auc(source, queries, gallery, vectors, k, n_boot, seed) -> list[Row]:
    truth = np.stack([case.labels for case in queries]).astype(np.float64)
    truth[truth == -1] = np.nan  # uncertain: neither positive nor negative
    gallery_pos = _positives(gallery)
    counts, negatives = np.sum(truth == 1, axis=0), np.sum(truth == 0, axis=0)
    labels = [
        i
        for i in range(len(CHEXPERT_LABELS))
        if counts[i] >= MIN_AUC_POSITIVES and negatives[i] > 0
    ]
    if not labels:
        logger.info(
            "kNN AUC %s: no label has %d test positives; skipped", source, MIN_AUC_POSITIVES
        )
        return []
    per_model = {}
    for name, v in vectors.items():
        scores = knn_label_scores(_images(v, queries) @ _images(v, gallery).T, gallery_pos, k)
        per_model[name] = bootstrap_auc(truth[:, labels], scores[:, labels], n_boot, seed)
    task = f"{source} kNN AUC ({len(queries)} test, {len(gallery)} train)"
    half = _constant(0.5, len(truth))
    rows = [
        Row(
            task,
            f"{CHEXPERT_LABELS[label]} (n+={int(counts[label])})",
            {**{name: result[0][j] for name, result in per_model.items()}, "chance": half},
        )
        for j, label in enumerate(labels)
    ]
    macro = {name: result[1] for name, result in per_model.items()}
    rows.append(Row(task, f"macro ({len(labels)} labels)", {**macro, "chance": half}))
    return rows


def _space(sets: RetrievalSets, vectors) -> list[Row]:
    images = [s.query_image for v in sets.paired.values() for s in v]
    images += [c for v in sets.images.values() for c in v]
    studies = [s for v in sets.paired.values() for s in v]
    rows = []
    for kind, items, stack in (
        ("images", images, lambda v: _images(v, images)),
        ("reports", studies, lambda v: _reports(v, studies, sets.sections)),
    ):
        if len(items) < 3:
            continue
        task = f"embedding space: test {kind} ({len(items)})"
        stacked = {name: stack(v) for name, v in vectors.items()}
        nan = _constant(float("nan"), len(items))
        for metric, measure in (
            ("mean top-1 cosine", mean_top1_cosine),
            ("uniformity", uniformity),
            ("effective rank", effective_rank),
        ):
            estimates = {name: _constant(measure(s), len(items)) for name, s in stacked.items()}
            rows.append(Row(task, metric, {**estimates, "chance": nan}))
    return rows
