"""Search the case library by image, study, text, or image + clinical note; studies as hits."""

from medxpert.retrieval.engine import (
    DEFAULT_NOTE_WEIGHT,
    TARGETS,
    Filters,
    SearchEngine,
    Target,
    study_vector,
)
from medxpert.retrieval.fusion import (
    DEFAULT_FUSION,
    FUSION_METHODS,
    Calibration,
    Fusion,
    read_fusion,
    write_fusion,
)
from medxpert.retrieval.hits import Evidence, Hit, StudyMatch

__all__ = [
    "DEFAULT_FUSION",
    "DEFAULT_NOTE_WEIGHT",
    "FUSION_METHODS",
    "TARGETS",
    "Calibration",
    "Evidence",
    "Filters",
    "Fusion",
    "Hit",
    "SearchEngine",
    "StudyMatch",
    "Target",
    "read_fusion",
    "study_vector",
    "write_fusion",
]
