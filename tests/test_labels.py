"""The CheXpert-14 vocabulary, the maps into it, and the report labeler."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from medxpert.labels import (
    CHEXPERT_LABELS,
    LABEL_INDEX,
    ReportLabeler,
    chexpert_columns_labels,
    default_labeler,
    diagnosis_labels,
    label_vector,
    mesh_labels,
    nih_labels,
    positive_labels,
)
from medxpert.labels.labeler import VOCABULARY_PATH


def values(vector: np.ndarray) -> dict[str, float]:
    """{label: value} for the mentioned (non-NaN) labels."""
    return {
        name: float(v) for name, v in zip(CHEXPERT_LABELS, vector, strict=True) if not math.isnan(v)
    }


def test_vocabulary_is_chexpert_order():
    assert CHEXPERT_LABELS[0] == "No Finding"
    assert CHEXPERT_LABELS[-1] == "Support Devices"
    assert len(CHEXPERT_LABELS) == 14 and len(set(CHEXPERT_LABELS)) == 14
    assert positive_labels(label_vector({"Edema": 1, "Fracture": -1})) == ["Edema"]


# --- source maps -----------------------------------------------------------------------
def test_nih_labels_map_and_keep_extras():
    vector, extras = nih_labels("Effusion|Mass|Emphysema|Pleural_Thickening")
    got = values(vector)
    assert got["Pleural Effusion"] == 1 and got["Lung Lesion"] == 1 and got["Pleural Other"] == 1
    assert got["Cardiomegaly"] == 0 and got["No Finding"] == 0
    assert extras == ("Emphysema",)
    for never_labelled in ("Enlarged Cardiomediastinum", "Fracture", "Support Devices"):
        assert never_labelled not in got


def test_nih_opacity_is_unknown_when_a_child_opacity_is_positive():
    assert "Lung Opacity" not in values(nih_labels("Consolidation")[0])
    assert values(nih_labels("Cardiomegaly")[0])["Lung Opacity"] == 0
    assert values(nih_labels("Infiltration")[0])["Lung Opacity"] == 1


def test_nih_no_finding_and_unknown_label():
    got = values(nih_labels("No Finding")[0])
    assert got["No Finding"] == 1 and got["Atelectasis"] == 0
    with pytest.raises(ValueError, match="Pneumonitis"):
        nih_labels("Pneumonitis")


def test_mesh_normal_is_negative_for_everything():
    got = values(mesh_labels("normal")[0])
    assert got["No Finding"] == 1
    assert all(v == 0 for name, v in got.items() if name != "No Finding")
    assert len(got) == 14


@pytest.mark.parametrize(
    ("mesh", "positives", "extras"),
    [
        ("Cardiomegaly/mild;Opacity/lung/base/left", {"Cardiomegaly", "Lung Opacity"}, ()),
        (
            "Thickening/pleura/apex;Thickening/bronchovascular",
            {"Pleural Other"},
            ("Thickening/bronchovascular",),
        ),
        ("Costophrenic Angle/left/blunted", {"Pleural Effusion"}, ()),
        ("Hydropneumothorax/right", {"Pneumothorax", "Pleural Effusion"}, ()),
        ("Mass/breast/large;Nodule/lung", {"Lung Lesion"}, ("Mass/breast/large",)),
        (
            "Catheters, Indwelling/right;Pulmonary Emphysema/severe",
            {"Support Devices"},
            ("Emphysema/severe",),
        ),
        ("Mediastinum/lymph nodes/enlarged", set(), ("Mediastinum/lymph nodes/enlarged",)),
    ],
)
def test_mesh_rules(mesh, positives, extras):
    vector, got_extras = mesh_labels(mesh)
    assert set(positive_labels(vector)) - {"No Finding"} == positives
    assert got_extras == extras
    assert values(vector)["No Finding"] == (0 if positives - {"Support Devices"} else 1)


def test_mesh_unindexed_has_no_labels():
    vector, extras = mesh_labels("No Indexing")
    assert np.isnan(vector).all() and extras == ()


def test_mimic_chexpert_columns():
    row = {name: "" for name in CHEXPERT_LABELS} | {
        "Edema": "1.0",
        "Pneumonia": "-1.0",
        "Fracture": 0.0,
        "Atelectasis": float("nan"),
    }
    assert values(chexpert_columns_labels(row)) == {"Edema": 1, "Pneumonia": -1, "Fracture": 0}
    with pytest.raises(ValueError, match="1, 0, -1"):
        chexpert_columns_labels({"Edema": "2"})


def test_covid_diagnoses():
    vector, extras = diagnosis_labels("COVID-19, ARDS")
    assert values(vector) == {"No Finding": 0, "Pneumonia": 1}
    assert extras == ("COVID-19", "ARDS")
    assert values(diagnosis_labels("No Finding")[0])["No Finding"] == 1
    assert "Pneumonia" not in values(diagnosis_labels("ARDS")[0])


# --- the report labeler ------------------------------------------------------------------
@pytest.fixture(scope="module")
def labeler() -> ReportLabeler:
    return default_labeler()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mild cardiomegaly.", {"Cardiomegaly": 1}),
        ("The heart is moderately enlarged.", {"Cardiomegaly": 1}),
        ("No pneumothorax or pleural effusion.", {"Pneumothorax": 0, "Pleural Effusion": 0}),
        ("No visible pneumothorax.", {"Pneumothorax": 0}),
        ("Pneumothorax is not seen.", {"Pneumothorax": 0}),
        ("Possible left lower lobe pneumonia.", {"Pneumonia": -1}),
        ("Atelectasis cannot be excluded.", {"Atelectasis": -1}),
        ("Cardiomegaly is not excluded.", {"Cardiomegaly": -1}),
        ("Borderline cardiomegaly.", {"Cardiomegaly": -1}),
        ("No change in the large left pleural effusion.", {"Pleural Effusion": 1}),
        ("The left pleural effusion has resolved.", {"Pleural Effusion": 0}),
        ("Small right hydropneumothorax.", {"Pneumothorax": 1, "Pleural Effusion": 1}),
        ("No pericardial effusion.", {}),
        ("Blunting of the left costophrenic angle.", {"Pleural Effusion": 1}),
        ("Right IJ central venous catheter tip in the SVC.", {"Support Devices": 1}),
        ("Calcified granuloma. Old granulomatous infection.", {}),
        ("Pulmonary vascular engorgement within limits of normal.", {"Edema": 0}),
    ],
)
def test_labeler_sentences(labeler, text, expected):
    got = values(labeler.label(text))
    no_finding = got.pop("No Finding")
    assert got == expected
    pathology_present = any(v in (1, -1) for k, v in expected.items() if k != "Support Devices")
    assert no_finding == (0 if pathology_present else 1)


def test_positive_beats_negative_within_a_report(labeler):
    text = "No pneumothorax on the left. Small right apical pneumothorax."
    assert values(labeler.label(text))["Pneumothorax"] == 1


def test_label_many_and_mentions(labeler):
    matrix = labeler.label_many(["Mild edema.", "", "No edema."])
    assert matrix.shape == (3, 14) and matrix.dtype == np.float32
    edema = LABEL_INDEX["Edema"]
    assert matrix[0, edema] == 1 and np.isnan(matrix[1, edema]) and matrix[2, edema] == 0
    mentions = labeler.mentions("No edema. Possible effusion.")
    assert [(m.label, m.status) for m in mentions] == [
        ("Edema", "negative"),
        ("Pleural Effusion", "uncertain"),
    ]


def test_vocabulary_file_is_validated(tmp_path):
    vocabulary = json.loads(VOCABULARY_PATH.read_text())
    vocabulary["observations"]["Pneumonitis"] = ["pneumonitis"]
    bad = tmp_path / "observations.json"
    bad.write_text(json.dumps(vocabulary))
    with pytest.raises(ValueError, match="Pneumonitis"):
        ReportLabeler(bad)
