"""Retrieval metrics against hand-computed values; the protocols end to end; the result files."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medxpert.data import Case
from medxpert.eval.results import write_results
from medxpert.eval.retrieval import Embedder, RetrievalSets, balanced_queries, cached, evaluate
from medxpert.labels import CHEXPERT_LABELS, LABEL_INDEX, label_vector
from medxpert.metrics.bootstrap import bootstrap_auc, bootstrap_mean, roc_auc
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
    recall_at_k,
    reciprocal_rank,
    top_k,
    uniformity,
)

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


def labelled_images(split: str, n: int) -> list[Case]:
    """Labelled images without a report (NIH-like), one class each."""
    return [
        Case(
            case_id=f"{split}:img{i}",
            source="nih_cxr14",
            split=split,
            labels=label_vector({c: int(c == CLASSES[i % 5]) for c in CLASSES}),
            image_path=f"{CLASSES[i % 5]}|{split}img{i}",
        )
        for i in range(n)
    ]


def paired_studies(split: str, n: int, shared_report_every: int = 0) -> list[Case]:
    """IU-like studies: a lateral and a frontal view sharing one report and its labels. With
    `shared_report_every`, every such study repeats the report of the study before it."""
    cases = []
    for i in range(n):
        label = CLASSES[i % 5]
        report = i - 1 if shared_report_every and i % shared_report_every == 1 else i
        for view in ("lateral", "frontal"):
            cases.append(
                Case(
                    case_id=f"{split}:s{i}:{view}",
                    source="iu_xray",
                    split=split,
                    study_id=f"{split}:s{i}",
                    view=view,
                    labels=label_vector({c: int(c == label) for c in CLASSES}),
                    image_path=f"{label}|{split}s{i}|{view}",
                    findings=f"{CLASSES[report % 5]}|{split}s{report}",
                )
            )
    return cases


def oracle(noise: float, seed: int = 0) -> Embedder:
    """A study's images and report near one point (its class plus its own offset), plus noise;
    a lone image near its class."""
    rng = np.random.default_rng(seed)
    bases: dict[str, np.ndarray] = {}

    def basis(key: str) -> np.ndarray:
        return bases.setdefault(key, rng.normal(size=32))

    def embed(items):
        if len(items) == 0:
            return np.empty((0, 32), np.float32)
        out = []
        for item in items:
            label, own = item.split("|")[:2]
            out.append(basis(label) + 0.7 * basis(own) + noise * rng.normal(size=32))
        out = np.array(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return Embedder(images=embed, texts=embed)


def test_the_views_of_a_study_are_one_query():
    lateral_only = [c for c in paired_studies("test", 31)[-2:] if c.view == "lateral"]
    test = paired_studies("test", 30) + lateral_only
    sets = RetrievalSets.from_cases(test, paired_studies("train", 20))
    studies = sets.paired["IU X-ray"]
    assert len(studies) == 30, "two views, one study, one query; no frontal, no query"
    assert all(s.query_image.view == "frontal" for s in studies)
    queries, gallery = sets.knn["IU X-ray"]
    assert len(queries) == 30 and len(gallery) == 20


def test_identical_reports_are_one_answer():
    """Study 1 repeats study 0's report: retrieving either report answers either query."""
    groups = np.array([0, 0, 1])
    similarity = np.array([[0.2, 0.9, 0.1], [0.9, 0.2, 0.1], [0.9, 0.8, 0.3]])
    np.testing.assert_array_equal(group_recall_at_k(similarity, groups, groups, 1), [1, 1, 0])
    np.testing.assert_allclose(group_reciprocal_rank(similarity, groups, groups), [1, 1, 1 / 3])
    with pytest.raises(ValueError, match="match"):
        group_recall_at_k(similarity, np.array([5, 0, 1]), groups, 1)


def test_chance_recall_and_mrr_match_every_ranking():
    groups = np.array([0, 0, 1, 2])
    recalls, reciprocal = [], []
    for order in itertools.permutations(range(4)):
        similarity = np.tile(-np.argsort(order).astype(float), (4, 1))
        recalls.append(group_recall_at_k(similarity, groups, groups, 2))
        reciprocal.append(group_reciprocal_rank(similarity, groups, groups))
    np.testing.assert_allclose(chance_group_recall(groups, groups, 2), np.mean(recalls, axis=0))
    np.testing.assert_allclose(chance_group_mrr(groups, groups), np.mean(reciprocal, axis=0))


def test_space_measures_tell_a_collapsed_space_from_a_spread_one():
    rng = np.random.default_rng(0)
    spread = rng.normal(size=(200, 32))
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    collapsed = np.ones((200, 32)) + 0.01 * rng.normal(size=(200, 32))
    collapsed /= np.linalg.norm(collapsed, axis=1, keepdims=True)
    assert mean_top1_cosine(collapsed) > 0.99 > 0.7 > mean_top1_cosine(spread)
    assert uniformity(collapsed) > -0.1 and uniformity(spread) < -3
    assert effective_rank(spread) > 25 and effective_rank(spread[:, :1]) == pytest.approx(1.0)


def test_evaluate_every_protocol_good_model_beats_chance(tmp_path):
    test = paired_studies("test", 60, shared_report_every=6) + labelled_images("test", 60)
    train = paired_studies("train", 40) + labelled_images("train", 60)
    sets = RetrievalSets.from_cases(test, train)
    assert len(sets.paired["IU X-ray"]) == 60 and len(sets.images["NIH"]) == 60
    rows = evaluate({"random": oracle(100.0), "good": oracle(0.05)}, sets, knn_k=5, n_boot=200)
    tasks = {row.task for row in rows}
    assert {
        "IU X-ray studies image→report (pool 60)",
        "IU X-ray studies report→image (pool 60)",
        "IU X-ray studies image→report (60)",
        "IU X-ray studies report→image (60)",
        "IU X-ray studies image→image (60)",
        "NIH image→image (60)",
        "NIH image→IU X-ray report (60 × 60)",
        "NIH kNN AUC (60 test, 60 train)",
        "IU X-ray kNN AUC (60 test, 40 train)",
        "embedding space: test images (120)",
        "embedding space: test reports (60)",
    } <= tasks
    assert any("5×" in task for task in tasks)
    r1 = next(r for r in rows if r.task.endswith("(pool 60)") and r.metric == "R@1")
    # 10 studies repeat the report before them: 20 queries have two right answers
    assert r1.estimates["chance"].value == pytest.approx((40 * 1 / 60 + 20 * 2 / 60) / 60)
    assert r1.estimates["good"].value > 0.75
    for row in rows:
        if row.task.startswith("embedding space"):
            continue
        good, chance = row.estimates["good"], row.estimates["chance"]
        assert good.value > chance.value, (row.task, row.metric)
    macro = next(r for r in rows if r.metric.startswith("macro"))
    assert macro.estimates["good"].value > 0.95
    assert abs(macro.estimates["random"].value - 0.5) < 0.2
    cosine = next(r for r in rows if r.metric == "mean top-1 cosine")
    assert np.isnan(cosine.estimates["chance"].value)

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
    test = labelled_images("test", 40)  # 8 positives per class: too few for an AUC
    sets = RetrievalSets.from_cases(test, labelled_images("train", 60))
    rows = evaluate({"good": oracle(0.1)}, sets, knn_k=5, n_boot=50)
    assert rows and not any("kNN AUC" in row.task for row in rows)


def test_balanced_queries_take_the_same_number_per_class():
    cases = labelled_images("test", 23)  # 5 classes: 5, 5, 5, 4, 4 single-label cases
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
