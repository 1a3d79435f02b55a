"""Pathology probabilities from retrieved cases, ICD-10 suggestions and triage, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from medxpert.data import Case
from medxpert.labels import CHEXPERT_LABELS, label_vector
from medxpert.labels.clinical import icd10_suggestions, icd10_table, triage, triage_rules
from medxpert.retrieval import Hit
from medxpert.retrieval.probabilities import label_probabilities


def hit(case_id: str, score: float, labels: dict, modality: str = "report", rank: int = 1) -> Hit:
    return Hit(
        Case(case_id=case_id, source="t", split="train", labels=label_vector(labels)),
        score,
        rank,
        modality,
    )


def probabilities(**values: float) -> dict[str, float]:
    return {label: values.get(label.replace(" ", "_"), 0.0) for label in CHEXPERT_LABELS}


def test_vote_is_softmax_weighted_per_modality():
    hits = [
        hit("a", 0.30, {"Pleural Effusion": 1, "Edema": 0}),
        hit("b", 0.25, {"Pleural Effusion": -1}),
        hit("c", 0.20, {"Cardiomegaly": 1}),
    ]
    vote = label_probabilities(hits, temperature=0.05)
    w = np.exp(np.array([0.30, 0.25, 0.20]) / 0.05)
    w /= w.sum()
    assert vote.probabilities["Pleural Effusion"] == pytest.approx(w[0] + 0.5 * w[1], abs=1e-4)
    assert vote.probabilities["Cardiomegaly"] == pytest.approx(w[2], abs=1e-4)
    assert vote.probabilities["Edema"] == 0 and vote.probabilities["Pneumothorax"] == 0
    assert vote.evidence["Pleural Effusion"] == ("a",) and vote.evidence["Cardiomegaly"] == ("c",)


def test_modalities_vote_separately_then_average():
    hits = [hit("img", 0.99, {"Edema": 1}, "image"), hit("rep", 0.15, {"Edema": 0}, "report")]
    assert label_probabilities(hits).probabilities["Edema"] == pytest.approx(0.5)
    assert label_probabilities([]).probabilities["Edema"] == 0


def test_icd10_suggestions():
    assert set(icd10_table()) <= set(CHEXPERT_LABELS)
    found = icd10_suggestions(
        probabilities(Pleural_Effusion=0.8, Consolidation=0.6, Pneumonia=0.7, Edema=0.4),
        {"Pleural Effusion": ("a", "b")},
    )
    assert [(s.code, s.finding) for s in found] == [
        ("J90", "Pleural Effusion"),
        ("J18.9", "Pneumonia"),
    ]
    assert found[0].evidence == ("a", "b") and found[0].probability == 0.8
    assert icd10_suggestions(probabilities(Edema=0.4), threshold=0.3)[0].code == "J81"


@pytest.mark.parametrize(
    ("values", "level", "reason"),
    [
        ({"Pneumothorax": 0.6}, "urgent", "Pneumothorax probability 0.60 ≥ 0.50"),
        ({"Pneumothorax": 0.3, "Edema": 0.7}, "urgent", "Edema probability 0.70 ≥ 0.60"),
        ({"Pneumothorax": 0.3}, "priority", "Pneumothorax probability 0.30 ≥ 0.25"),
        ({"Pleural_Effusion": 0.5}, "priority", "a pleural effusion"),
        ({"Cardiomegaly": 0.9}, "routine", "no finding reached a triage threshold"),
    ],
)
def test_triage_rules(values, level, reason):
    result = triage(probabilities(**values))
    assert result.level == level and reason in result.reason
    assert result.level in triage_rules()["levels"]
