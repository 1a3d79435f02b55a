"""Everything a report writer may use: the query, the retrieved cases and their read-outs.

What the evidence supports is decided here, once, for every writer and for the faithfulness
check: a finding is *stated* when its vote reaches the finding's threshold (chosen on val,
`report.thresholds`) and at least one retrieved study is positive for it; it is *possible*
(worded as a possibility, never as a fact) when it has a positive study and a vote of at least
`POSSIBLE_FRACTION` of its threshold (and `POSSIBLE_MIN`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from medxpert.caption import Caption
from medxpert.data.images import DicomHeader
from medxpert.labels.clinical import ICD10Suggestion, Triage, icd10_suggestions, triage
from medxpert.report.thresholds import default_thresholds
from medxpert.retrieval import Hit
from medxpert.retrieval.probabilities import LabelVote, blend, label_probabilities

ROUTINE = "routine"
POSSIBLE_FRACTION = 0.9
POSSIBLE_MIN = 0.3


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
    thresholds: Mapping[str, float] = field(default_factory=default_thresholds)
    phrasing: Mapping[str, int] = field(default_factory=dict)  # sentence → count in the library
    # Why the input guard refused the query image, when `force` made it diagnose anyway.
    guard_warnings: Sequence[str] = ()
    image_not_sent: str | None = None  # why a writer allowed to send the image did not get it
    # the query images' DICOM headers, None for a PNG or JPEG (what a DICOM SR references)
    dicom_headers: Sequence[DicomHeader | None] = ()

    def stated(self, label: str) -> bool:
        """The evidence supports `label` as a fact."""
        return (
            bool(self.vote.evidence[label])
            and self.vote.probabilities[label] >= (self.thresholds[label])
        )

    def possible(self, label: str) -> bool:
        """The evidence supports `label` only as a possibility (minority support)."""
        p = self.vote.probabilities[label]
        return (
            not self.stated(label)
            and bool(self.vote.evidence[label])
            and p >= max(POSSIBLE_FRACTION * self.thresholds[label], POSSIBLE_MIN)
        )

    @classmethod
    def from_hits(
        cls, hits: Sequence[Hit], *, zero_shot_weight: float = 0.0, **query: object
    ) -> ReportContext:
        """The vote of `hits` (blended at `zero_shot_weight` with the caption's zero-shot
        probabilities, when the caption has them), its ICD-10 suggestions and triage (never
        above routine for an input the guard flagged); `query` fills the rest (caption,
        query_text, note, has_image, image_png, image_not_sent, thresholds, phrasing,
        guard_warnings, dicom_headers)."""
        vote = label_probabilities(hits)
        caption = query.get("caption")
        if isinstance(caption, Caption) and caption.probabilities:
            vote = blend(vote, caption.probabilities, zero_shot_weight)
        return cls(
            hits=hits,
            vote=vote,
            icd10=icd10_suggestions(vote.probabilities, vote.evidence),
            triage=_capped(triage(vote.probabilities), bool(query.get("guard_warnings"))),
            **query,
        )


def _capped(decided: Triage, flagged: bool) -> Triage:
    """Routine for an input the guard flagged: its probabilities describe no chest X-ray."""
    if not flagged or decided.level == ROUTINE:
        return decided
    return Triage(
        ROUTINE,
        f"capped at routine because the input guard flagged the image (the vote alone would "
        f"give {decided.level}: {decided.reason})",
        decided.rule,
    )
