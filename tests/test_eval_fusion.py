"""Choosing the fusion of the report and image indexes: the query set, the calibration, label
P@k, the choice on validation queries and the test rows (pure functions, fake searches)."""

from __future__ import annotations

import numpy as np
import pytest

from medxpert.cli.common import FUSION_CHOICES
from medxpert.data import Case
from medxpert.eval.fusion import (
    FusionSet,
    calibration_of,
    choose_method,
    evaluate_fusion,
    fusion_queries,
    label_precision,
)
from medxpert.labels import label_vector
from medxpert.retrieval import FUSION_METHODS

EDEMA, NORMAL = label_vector({"Edema": 1}), label_vector({"No Finding": 1})


def test_the_cli_offers_every_fusion_method():
    assert FUSION_CHOICES == FUSION_METHODS


def test_queries_are_one_frontal_image_per_labelled_study():
    def case(case_id, study, view, labels=EDEMA, image=True):
        return Case(
            case_id,
            "iu_xray",
            "val",
            study_id=study,
            view=view,
            image_path=f"/x/{case_id}.png" if image else "",
            labels=labels,
        )

    cases = [
        case("lat", "s1", "lateral"),
        case("front", "s1", "frontal"),
        case("only-lateral", "s2", "lateral"),
        case("unlabelled", "s3", "frontal", labels=label_vector({"Edema": 0})),
        case("nih", "nih:1", "frontal", labels=NORMAL),
    ]
    assert [c.case_id for c in fusion_queries(cases)] == ["front", "nih"]


def test_calibration_pools_each_index_and_label_precision_counts_shared_labels():
    scores = [{"image": [0.9, 0.8], "report": [0.3]}, {"image": [1.0], "report": [0.1]}]
    stats = calibration_of(scores)
    assert stats["image"] == pytest.approx((0.9, np.std([0.9, 0.8, 1.0])))
    assert stats["report"] == pytest.approx((0.2, 0.1))
    retrieved = np.stack([EDEMA, NORMAL, label_vector({"Edema": 1, "Cardiomegaly": 1})])
    assert label_precision(EDEMA, retrieved, k=3) == pytest.approx(2 / 3)
    assert label_precision(NORMAL, retrieved, k=3) == pytest.approx(1 / 3)  # No Finding counts
    assert label_precision(EDEMA, retrieved[:1], k=2) == 0.5  # too few retrieved: misses
    assert label_precision(EDEMA, np.zeros((0, 14)), k=2) == 0.0
    assert choose_method({"a": np.array([0.5]), "b": np.array([0.5])}, ["b", "a"]) == "b"


def fake_set(n: int, good: str, sources: list[str]) -> FusionSet:
    """Queries whose method `good` retrieves 8 relevant studies of 10, every other method 2;
    "calibrated" only when it is given the calibration measured on the validation scores."""
    seen: list[dict] = []

    def retrieve(i: int, method: str, stats: dict) -> np.ndarray:
        seen.append(stats)
        hits = 8 if method == good and (method != "calibrated" or "image" in stats) else 2
        return np.stack([EDEMA] * hits + [NORMAL] * (10 - hits))

    scores = [{"image": [0.9 + i / 1000], "report": [0.2]} for i in range(n)]
    return FusionSet(np.stack([EDEMA] * n), sources, scores, retrieve)


def test_the_best_method_on_validation_is_chosen_and_every_one_reported_on_test():
    val = fake_set(6, "calibrated", ["iu_xray"] * 6)
    test = fake_set(8, "calibrated", ["iu_xray"] * 5 + ["nih_cxr14"] * 3)
    result = evaluate_fusion(
        val, test, ["rrf", "calibrated", "rank"], baselines=["max-cosine"], n_boot=50
    )
    assert result.method == "calibrated"
    assert result.validation == {"rrf": 0.2, "calibrated": 0.8, "rank": 0.2}
    assert result.calibration["image"][0] == pytest.approx(
        np.mean([0.9 + i / 1000 for i in range(6)])
    )
    assert result.columns == ["max-cosine", "rrf", "rank", "calibrated"]
    assert [row.task for row in result.rows] == [
        "IU X-ray (5 test queries)",
        "NIH (3 test queries)",
        "all (8 test queries)",
    ]
    everything = result.rows[-1].estimates
    assert everything["calibrated"].value == pytest.approx(0.8) and everything["calibrated"].n == 8
    assert everything["max-cosine"].value == pytest.approx(0.2)
    tie = evaluate_fusion(val, test, ["rank", "rrf"], n_boot=10)
    assert tie.method == "rank"  # equal on val: the earlier listed
