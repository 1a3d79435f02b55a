"""Search the case library by image, text, or image + clinical note."""

from medxpert.retrieval.engine import (
    DEFAULT_NOTE_WEIGHT,
    TARGETS,
    Filters,
    Hit,
    SearchEngine,
)

__all__ = ["DEFAULT_NOTE_WEIGHT", "TARGETS", "Filters", "Hit", "SearchEngine"]
