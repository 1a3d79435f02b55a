"""Everything a report writer may use: the query, the retrieved cases and their read-outs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medxpert.caption import Caption
from medxpert.labels.clinical import ICD10Suggestion, Triage
from medxpert.retrieval import Hit
from medxpert.retrieval.probabilities import LabelVote


@dataclass(frozen=True)
class ReportContext:
    """The evidence for one report. `note` is the clinical note as the user gave it."""

    hits: Sequence[Hit]
    vote: LabelVote
    icd10: Sequence[ICD10Suggestion]
    triage: Triage
    caption: Caption | None = None
    query_text: str | None = None
    note: str | None = None
    has_image: bool = False
    image_png: bytes | None = None  # the query image, only for a writer the user let send it
