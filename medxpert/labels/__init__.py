"""The one label vocabulary (CheXpert-14), the maps into it, and the report labeler."""

from medxpert.labels.labeler import Mention, ReportLabeler, default_labeler, label_report
from medxpert.labels.mappings import (
    chexpert_columns_labels,
    diagnosis_labels,
    mesh_labels,
    nih_labels,
)
from medxpert.labels.vocabulary import (
    CHEXPERT_LABELS,
    LABEL_INDEX,
    NUM_LABELS,
    PATHOLOGIES,
    UNCERTAIN_POLICIES,
    empty_labels,
    label_vector,
    positive_labels,
    positive_matrix,
)

__all__ = [
    "CHEXPERT_LABELS",
    "LABEL_INDEX",
    "NUM_LABELS",
    "PATHOLOGIES",
    "UNCERTAIN_POLICIES",
    "Mention",
    "ReportLabeler",
    "chexpert_columns_labels",
    "default_labeler",
    "diagnosis_labels",
    "empty_labels",
    "label_report",
    "label_vector",
    "mesh_labels",
    "nih_labels",
    "positive_labels",
    "positive_matrix",
]
