"""The one label vocabulary: the 14 CheXpert observations, in their usual order.

A label vector is float32 of length 14: 1 positive, 0 negative, -1 uncertain, NaN not mentioned.
Every other label set (NIH-14, IU MeSH, MIMIC chexpert/negbio) is mapped into it at the edge
(see `medxpert.labels.mappings`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NUM_LABELS = len(CHEXPERT_LABELS)
LABEL_INDEX: dict[str, int] = {name: i for i, name in enumerate(CHEXPERT_LABELS)}

# The observations that are findings (everything except "No Finding" and "Support Devices");
# "No Finding" is positive only when none of these is positive or uncertain (CheXpert's rule).
PATHOLOGIES: tuple[str, ...] = tuple(
    name for name in CHEXPERT_LABELS if name not in ("No Finding", "Support Devices")
)

POSITIVE, NEGATIVE, UNCERTAIN = 1.0, 0.0, -1.0
# How an uncertain (-1) label is read where a yes/no is needed: as positive (U-Ones) or negative.
UNCERTAIN_POLICIES = ("positive", "negative")


def empty_labels() -> np.ndarray:
    """A label vector with every observation unmentioned (NaN)."""
    return np.full(NUM_LABELS, np.nan, dtype=np.float32)


def label_vector(values: Mapping[str, float]) -> np.ndarray:
    """Build a label vector from `{observation: value}`; unknown names raise KeyError."""
    vector = empty_labels()
    for name, value in values.items():
        vector[LABEL_INDEX[name]] = value
    return vector


def positive_labels(vector: np.ndarray) -> list[str]:
    """Names of the observations marked positive (1) in `vector`."""
    return [name for name, value in zip(CHEXPERT_LABELS, vector, strict=True) if value == POSITIVE]


def positive_matrix(vectors: Iterable[np.ndarray]) -> np.ndarray:
    """Stack label vectors into a boolean (n, 14) matrix of positives (uncertain, NaN → False)."""
    matrix = np.asarray(list(vectors), dtype=np.float32).reshape(-1, NUM_LABELS)
    return matrix == POSITIVE
