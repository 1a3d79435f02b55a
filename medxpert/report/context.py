"""Everything a report writer may use: the query, the retrieved cases and their read-outs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from medxpert.caption import Caption
from medxpert.labels.clinical import ICD10Suggestion, Triage, icd10_suggestions, triage
from medxpert.retrieval import Hit
from medxpert.retrieval.probabilities import LabelVote, blend, label_probabilities


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

    @classmethod
    def from_hits(
        cls, hits: Sequence[Hit], *, zero_shot_weight: float = 0.0, **query: object
    ) -> ReportContext:
        """The vote of `hits` (blended at `zero_shot_weight` with the caption's zero-shot
        probabilities, when the caption has them), its ICD-10 suggestions and triage; `query`
        fills the rest (caption, query_text, note, has_image, image_png)."""
        vote = label_probabilities(hits)
        caption = query.get("caption")
        if isinstance(caption, Caption) and caption.probabilities:
            vote = blend(vote, caption.probabilities, zero_shot_weight)
        return cls(
            hits=hits,
            vote=vote,
            icd10=icd10_suggestions(vote.probabilities, vote.evidence),
            triage=triage(vote.probabilities),
            **query,
        )
