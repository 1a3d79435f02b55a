"""Retrieval metrics against hand-computed values; the protocols end to end; the result files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medxpert.data import Case
from medxpert.eval.bootstrap import bootstrap_auc, bootstrap_mean, roc_auc
from medxpert.eval.results import write_results
from medxpert.eval.retrieval import Embedder, RetrievalSets, balanced_queries, cached, evaluate
from medxpert.eval.retrieval_metrics import (
    chance_label_precision,
    class_precision_at_k,
    knn_label_scores,
    label_precision_at_k,
    recall_at_k,
    reciprocal_rank,
    top_k,
)
from medxpert.labels import CHEXPERT_LABELS, LABEL_INDEX, label_vector

SIMILARITY = np.array(
    [
        [0.9, 0.1, 0.5],  # query 0: its match ranks 1st
        [0.8, 0.2, 0.1],  # query 1: its match ranks 2nd
        [0.7, 0.9, 0.3],
    ]
)  # query 2: its match ranks 3rd


def test_paired_metrics_by_hand():
    np.testing.assert_array_equal(top_k(SIMILARITY, 2), [[0, 2], [0, 1], [1, 0]])
    np.testing.assert_array_equal(recall_at_k(SIMILARITY, 1), [1, 0, 0])
    np.testing.assert_array_equal(recall_at_k(SIMILARITY, 2), [1, 1, 0])
    np.testing.assert_allclose(reciprocal_rank(SIMILARITY), [1, 1 / 2, 1 / 3])


def test_tied_scores_count_against_the_match():
    collapsed = np.full((4, 4), 0.5)
    np.testing.assert_array_equal(recall_at_k(collapsed, 1), [0, 0, 0, 0])
    np.testing.assert_allclose(reciprocal_rank(collapsed), [1 / 4] * 4)


def test_label_precision_by_hand():
    query = np.array([[True, False], [False, True]])
    gallery = np.array([[True, False], [True, True], [False, True]])
    similarity = np.array([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]])
    np.testing.assert_allclose(label_precision_at_k(similarity, query, gallery, 2), [1.0, 0.5])
    np.testing.assert_allclose(chance_label_precision(query, gallery), [2 / 3, 2 / 3])
    own = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.8], [0.1, 0.8, 1.0]])
    np.testing.assert_allclose(
        label_precision_at_k(own, gallery, gallery, 1, exclude_self=True), [1, 1, 1]
    )
    np.testing.assert_allclose(
        class_precision_at_k(similarity, np.array([0, 1]), gallery, 2), [1.0, 0.5]
    )


def test_knn_scores_weight_closer_neighbours_more():
    gallery = np.array([[1], [0], [0]], dtype=bool)
    scores = knn_label_scores(np.array([[0.9, 0.5, 0.4]]), gallery, k=3, temperature=0.1)
    assert 0.5 < scores[0, 0] < 1.0
    flat = knn_label_scores(np.array([[0.5, 0.5, 0.5]]), gallery, k=3)
    assert flat[0, 0] == pytest.approx(1 / 3)


def test_auc_matches_sklearn_and_bootstrap_brackets_it():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 200)
    scores = truth * 0.5 + rng.normal(0, 0.5, 200)
    scores[:10] = scores[10]  # ties
    assert roc_auc(truth == 1, scores) == pytest.approx(roc_auc_score(truth, scores))
    assert np.isnan(roc_auc(np.zeros(5, bool), np.arange(5)))
    matrix = np.stack([truth, 1 - truth], axis=1).astype(float)
    matrix[0, 1] = np.nan
    per_label, macro = bootstrap_auc(matrix, np.stack([scores, -scores], 1), n_boot=200)
    assert per_label[0].low < per_label[0].value < per_label[0].high
    assert per_label[1].n == 199
    assert macro.value == pytest.approx(np.mean([p.value for p in per_label]))


def test_bootstrap_mean_is_seeded_and_brackets_the_mean():
    values = np.random.default_rng(1).random(100)
    first, second = bootstrap_mean(values, seed=3), bootstrap_mean(values, seed=3)
    assert first == second and first.low < values.mean() < first.high and first.n == 100


# --- protocols end to end ------------------------------------------------------------------------
CLASSES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")


def labelled_cases(split: str, n: int, with_image: bool) -> list[Case]:
    cases = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        cases.append(
            Case(
                case_id=f"{split}{with_image}:{i}",
                source="t",
                split=split,
                study_id=f"{split}{with_image}:{i}",
                labels=label_vector({c: int(c == label) for c in CLASSES}),
                image_path=f"{label}|{i}" if with_image else "",
                findings="" if with_image else f"{label}|{i}",
            )
        )
    pairs = [
        Case(
            case_id=f"pair:{split}:{i}",
            source="t",
            split=split,
            image_path=f"pair|{i}",
            findings=f"pair|{i}",
        )
        for i in range(12)
    ]
    return cases + (pairs if with_image else [])


def oracle(noise: float, seed: int = 0) -> Embedder:
    """Vectors from the label (or pair id) in the 'path' / 'text', plus noise."""
    rng = np.random.default_rng(seed)
    basis = {name: rng.normal(size=32) for name in (*CLASSES, *[f"pair{i}" for i in range(12)])}

    def embed(items):
        if len(items) == 0:
            return np.empty((0, 32), np.float32)
        out = []
        for item in items:
            kind, index = item.split("|")
            key = f"pair{index}" if kind == "pair" else kind
            out.append(basis[key] + noise * rng.normal(size=32))
        out = np.array(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return Embedder(images=embed, texts=embed)


def test_evaluate_every_protocol_good_model_beats_chance(tmp_path):
    test = labelled_cases("test", 60, True) + labelled_cases("test", 30, False)
    train = labelled_cases("train", 60, True)
    sets = RetrievalSets.from_cases(test, train)
    assert (len(sets.pairs), len(sets.images), len(sets.reports), len(sets.knn_gallery)) == (
        12,
        60,
        30,
        60,
    )
    rows = evaluate({"random": oracle(100.0), "good": oracle(0.1)}, sets, knn_k=5, n_boot=200)
    tasks = {row.task for row in rows}
    assert {
        "paired image→text",
        "paired text→image",
        "report→image",
        "image→report",
        "image→image",
        "kNN AUC",
    } <= tasks
    assert any(task.startswith("report→image 5×") for task in tasks)
    for row in rows:
        good, chance = row.estimates["good"], row.estimates["chance"]
        assert good.value > chance.value, (row.task, row.metric)
    macro = next(r for r in rows if r.metric.startswith("macro"))
    assert macro.estimates["good"].value > 0.95
    assert abs(macro.estimates["random"].value - 0.5) < 0.2

    paths = write_results(
        rows,
        tmp_path / "retrieval",
        ["chance", "random", "good"],
        title="toy",
        meta={"split": "test"},
    )
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == len(rows) and data["split"] == "test"
    assert "good beats the rest" in data["rows"][0]
    table = [line for line in paths["md"].read_text().splitlines() if line.startswith("| ")]
    assert len(table) == len(rows) + 2  # header, rule, one line per row
    assert paths["csv"].read_text().splitlines()[0].startswith("task,metric,n,chance_value")
    assert paths["png"].stat().st_size > 10_000


def test_knn_auc_needs_ten_positives_per_label():
    test = labelled_cases("test", 40, True)  # 8 positives per class: too few for an AUC
    sets = RetrievalSets.from_cases(test, labelled_cases("train", 60, True))
    rows = evaluate({"good": oracle(0.1)}, sets, knn_k=5, n_boot=50)
    assert rows and not any(row.task == "kNN AUC" for row in rows)


def test_balanced_queries_take_the_same_number_per_class():
    cases = labelled_cases("test", 23, False)  # 5 classes: 5, 5, 5, 4, 4 single-label cases
    queries, classes = balanced_queries(cases)
    assert len(queries) == 20
    assert [int((classes == LABEL_INDEX[c]).sum()) for c in CLASSES] == [4] * 5
    chosen_labels = [CHEXPERT_LABELS[int(np.flatnonzero(cases[q].labels == 1)[0])] for q in queries]
    assert [CHEXPERT_LABELS[c] for c in classes] == chosen_labels


def test_cached_embeds_only_what_the_cache_lacks():
    calls = []

    def embed(items):
        calls.append(list(items))
        return np.array([[float(len(item)), 0.0] for item in items], dtype=np.float32)

    lookup = cached(embed, {"a": np.array([9.0, 9.0], dtype=np.float32)})
    np.testing.assert_array_equal(lookup(["a", "bbb", "a"]), [[9, 9], [3, 0], [9, 9]])
    assert calls == [["bbb"]]
    assert lookup(["a"]).shape == (1, 2) and calls == [["bbb"]]
