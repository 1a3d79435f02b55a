"""Maps from each source's own label set into the CheXpert-14 vocabulary.

Every function returns `(vector, extras)`: the CheXpert-14 label vector and the source labels
that have no place in the vocabulary (kept, not dropped). docs/labels.md explains each choice.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medxpert.labels.vocabulary import (
    CHEXPERT_LABELS,
    LABEL_INDEX,
    NEGATIVE,
    PATHOLOGIES,
    POSITIVE,
    empty_labels,
)

LabelResult = tuple[np.ndarray, tuple[str, ...]]

# Lung Opacity is the parent of these in CheXpert's hierarchy: a source that marks a child
# positive but says nothing of "opacity" does not thereby say the lung has no opacity.
OPACITY_CHILDREN = ("Edema", "Consolidation", "Pneumonia", "Lung Lesion", "Atelectasis")

# --- NIH ChestX-ray14 -------------------------------------------------------------------
NIH_TO_CHEXPERT: dict[str, str] = {
    "No Finding": "No Finding",
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
}
NIH_EXTRA_LABELS: tuple[str, ...] = ("Emphysema", "Fibrosis", "Hernia")
NIH_LABELS: tuple[str, ...] = (*NIH_TO_CHEXPERT, *NIH_EXTRA_LABELS)


def nih_labels(finding_labels: str) -> LabelResult:
    """Map an NIH `Finding Labels` string (e.g. ``"Effusion|Mass"``) into CheXpert-14.

    NIH labels every image for its 14 findings, so the observations they cover are 0 unless
    named; observations NIH never labels (Enlarged Cardiomediastinum, Fracture, Support
    Devices) stay NaN.
    """
    names = [name.strip() for name in finding_labels.split("|") if name.strip()]
    unknown = sorted(set(names) - set(NIH_LABELS))
    if unknown:
        raise ValueError(f"unknown NIH label(s) {unknown}; expected names from {NIH_LABELS}")
    vector = empty_labels()
    for target in set(NIH_TO_CHEXPERT.values()):
        vector[LABEL_INDEX[target]] = NEGATIVE
    for name in names:
        if name in NIH_TO_CHEXPERT:
            vector[LABEL_INDEX[NIH_TO_CHEXPERT[name]]] = POSITIVE
    _unset_opacity_if_child_positive(vector)
    return vector, tuple(name for name in names if name in NIH_EXTRA_LABELS)


# --- IU X-ray MeSH tags ------------------------------------------------------------------
@dataclass(frozen=True)
class MeshRule:
    """A MeSH heading maps to `targets` when its qualifiers include one of `any_of`
    (always, when `any_of` is empty) and none of `none_of`."""

    heading: str
    targets: tuple[str, ...]
    any_of: frozenset[str] = frozenset()
    none_of: frozenset[str] = frozenset()

    def matches(self, heading: str, qualifiers: frozenset[str]) -> bool:
        if heading.lower() != self.heading.lower():
            return False
        if self.any_of and not (qualifiers & self.any_of):
            return False
        return not (qualifiers & self.none_of)


def _rule(heading: str, *targets: str, any_of: tuple[str, ...] = (), none_of: tuple[str, ...] = ()):
    return MeshRule(heading, targets, frozenset(any_of), frozenset(none_of))


# First matching rule wins. Choices follow the CheXpert labeler's observation definitions
# (e.g. scarring and interstitial markings are "Lung Opacity"; a blunted costophrenic angle
# is "Pleural Effusion"); docs/labels.md lists them.
MESH_RULES: tuple[MeshRule, ...] = (
    _rule("Cardiomegaly", "Cardiomegaly"),
    _rule("Cardiac Shadow", "Cardiomegaly", any_of=("enlarged", "borderline")),
    _rule("Heart", "Cardiomegaly", any_of=("enlarged",)),
    _rule(
        "Mediastinum",
        "Enlarged Cardiomediastinum",
        any_of=("enlarged", "prominent", "widened"),
        none_of=("lymph nodes",),
    ),
    _rule("Opacity", "Lung Opacity"),
    _rule("Airspace Disease", "Lung Opacity"),
    _rule("Infiltrate", "Lung Opacity"),
    _rule("Density", "Lung Opacity", any_of=("lung", "retrocardiac")),
    _rule("Markings", "Lung Opacity", any_of=("interstitial",)),
    _rule("Lung", "Lung Opacity", any_of=("interstitial",)),
    _rule("Lung Diseases, Interstitial", "Lung Opacity"),
    _rule("Cicatrix", "Pleural Other", any_of=("pleura",)),
    _rule("Cicatrix", "Lung Opacity"),
    _rule("Nodule", "Lung Lesion"),
    _rule("Mass", "Lung Lesion", any_of=("lung",)),
    _rule("Cavitation", "Lung Lesion"),
    _rule("Pulmonary Edema", "Edema"),
    _rule("Pulmonary Congestion", "Edema"),
    _rule("Heart Failure", "Edema"),
    _rule("Consolidation", "Consolidation"),
    _rule("Pneumonia", "Pneumonia"),
    _rule("Pulmonary Atelectasis", "Atelectasis"),
    _rule("Atelectasis", "Atelectasis"),
    _rule("Pneumothorax", "Pneumothorax"),
    _rule("Hydropneumothorax", "Pneumothorax", "Pleural Effusion"),
    _rule("Hemopneumothorax", "Pneumothorax", "Pleural Effusion"),
    _rule("Pleural Effusion", "Pleural Effusion"),
    _rule("Hemothorax", "Pleural Effusion"),
    _rule("Costophrenic Angle", "Pleural Effusion", any_of=("blunted", "obscured")),
    _rule("Pleura", "Pleural Effusion", any_of=("blunted",)),
    _rule("Pleura", "Pleural Other"),
    _rule("Thickening", "Pleural Other", any_of=("pleura",)),
    _rule("Fractures, Bone", "Fracture"),
    _rule("Catheters, Indwelling", "Support Devices"),
    _rule("Implanted Medical Device", "Support Devices"),
    _rule("Medical Device", "Support Devices"),
    _rule("Tube, Inserted", "Support Devices"),
    _rule("Surgical Instruments", "Support Devices"),
    _rule("Stents", "Support Devices"),
    _rule("Sutures", "Support Devices"),
)
# Extra (out-of-vocabulary) terms keep their qualifiers ("Lung/hyperdistention/mild"); their
# headings are spelt like their NIH counterparts where one exists.
MESH_EXTRA_ALIASES: dict[str, str] = {
    "pulmonary emphysema": "Emphysema",
    "emphysema": "Emphysema",
    "bullous emphysema": "Emphysema",
    "pulmonary fibrosis": "Fibrosis",
    "fibrosis": "Fibrosis",
    "hernia, hiatal": "Hernia",
    "hernia, diaphragmatic": "Hernia",
}
MESH_NORMAL = "normal"
MESH_UNINDEXED = "No Indexing"


def parse_mesh(mesh: str) -> list[tuple[str, tuple[str, ...]]]:
    """Split an Open-i MeSH string (``"Opacity/lung/base/left;Cardiomegaly/mild"``) into
    (heading, qualifiers in source order) pairs."""
    terms = []
    for term in mesh.split(";"):
        parts = [" ".join(part.split()) for part in term.split("/")]
        if parts[0]:
            terms.append((parts[0], tuple(p for p in parts[1:] if p)))
    return terms


def mesh_labels(mesh: str) -> LabelResult:
    """Map an IU X-ray MeSH string into CheXpert-14.

    ``normal`` → No Finding 1 and every other observation 0. Otherwise each mapped term is
    positive and observations the tags do not name stay NaN (MeSH lists what is present,
    not what is absent). No Finding follows CheXpert's rule (1 when no mapped pathology is
    positive), so a study tagged only with out-of-vocabulary terms (degenerative spine,
    calcified granuloma) has No Finding 1, as the CheXpert labeler would give it.
    ``No Indexing`` alone leaves everything NaN.
    """
    terms = parse_mesh(mesh)
    vector = empty_labels()
    headings = {heading.lower() for heading, _ in terms}
    if headings <= {MESH_UNINDEXED.lower()}:
        return vector, ()
    if headings == {MESH_NORMAL}:
        vector[:] = NEGATIVE
        vector[LABEL_INDEX["No Finding"]] = POSITIVE
        return vector, ()
    extras: list[str] = []
    for heading, qualifiers in terms:
        if heading.lower() in (MESH_NORMAL, MESH_UNINDEXED.lower()):
            continue
        qualifier_set = frozenset(q.lower() for q in qualifiers)
        rule = next((r for r in MESH_RULES if r.matches(heading, qualifier_set)), None)
        if rule is None:
            extra = "/".join((MESH_EXTRA_ALIASES.get(heading.lower(), heading), *qualifiers))
            if extra not in extras:
                extras.append(extra)
            continue
        for target in rule.targets:
            vector[LABEL_INDEX[target]] = POSITIVE
    vector[LABEL_INDEX["No Finding"]] = no_finding_from_pathologies(vector)
    return vector, tuple(extras)


# --- MIMIC-CXR chexpert / negbio CSVs ----------------------------------------------------
def chexpert_columns_labels(row: Mapping[str, object]) -> np.ndarray:
    """Read the 14 CheXpert columns (1, 0, -1, blank) of a MIMIC chexpert/negbio row."""
    vector = empty_labels()
    for i, name in enumerate(CHEXPERT_LABELS):
        value = row.get(name)
        if value is None or value == "":
            continue
        number = float(value)  # type: ignore[arg-type]
        if not math.isnan(number):
            if number not in (POSITIVE, NEGATIVE, -1.0):
                raise ValueError(f"{name}={number}: CheXpert values are 1, 0, -1 or blank")
            vector[i] = number
    return vector


# --- COVID-19 image data collection diagnoses --------------------------------------------
PNEUMONIA_DIAGNOSES = frozenset(
    name.lower()
    for name in (
        "COVID-19",
        "SARS",
        "MERS",
        "Pneumonia",
        "Pneumocystis",
        "Streptococcus",
        "Klebsiella",
        "Mycoplasma Bacterial Pneumonia",
        "Legionella",
        "Lipoid",
        "Varicella",
        "Bacterial",
        "Viral",
        "Fungal",
        "E.Coli",
        "Influenza",
        "Chlamydophila",
        "Aspergillosis",
        "Nocardia",
        "Staphylococcus",
    )
)


def diagnosis_labels(diagnosis: str) -> LabelResult:
    """Map a COVID-pack diagnosis (``"COVID-19, ARDS"``) into CheXpert-14.

    Infectious pneumonias (COVID-19, bacterial, viral, fungal, lipoid) → Pneumonia 1;
    ``No Finding`` → No Finding 1 and every pathology 0. The diagnosis names are kept as
    extras, since most (COVID-19, ARDS, the organisms) have no place in the vocabulary.
    """
    names = [name.strip() for name in diagnosis.replace("/", ",").split(",") if name.strip()]
    vector = empty_labels()
    if [n.lower() for n in names] == ["no finding"]:
        vector[:] = NEGATIVE
        vector[LABEL_INDEX["No Finding"]] = POSITIVE
        return vector, ()
    if names:
        vector[LABEL_INDEX["No Finding"]] = NEGATIVE
    if any(name.lower() in PNEUMONIA_DIAGNOSES for name in names):
        vector[LABEL_INDEX["Pneumonia"]] = POSITIVE
    return vector, tuple(names)


def _unset_opacity_if_child_positive(vector: np.ndarray) -> None:
    opacity = LABEL_INDEX["Lung Opacity"]
    if vector[opacity] == NEGATIVE and any(
        vector[LABEL_INDEX[child]] == POSITIVE for child in OPACITY_CHILDREN
    ):
        vector[opacity] = np.nan


def no_finding_from_pathologies(vector: np.ndarray) -> float:
    """CheXpert's rule: No Finding is 1 when no pathology is positive or uncertain, else 0."""
    values = [vector[LABEL_INDEX[name]] for name in PATHOLOGIES]
    return NEGATIVE if any(v in (POSITIVE, -1.0) for v in values) else POSITIVE
