"""What a search returns: one `Hit` per study, with the `Evidence` that matched.

A study is the unit of retrieval: its images (views) and its one report. The image index holds
a vector per image, the report index one per study; a hit gathers every vector of its study
that the search found, so no study appears twice in one result.
"""

from __future__ import annotations

from dataclasses import dataclass

from medxpert.data import Case

MODALITY_ORDER = ("report", "image")  # the order of the indexes; breaks ties between them


@dataclass(frozen=True)
class Evidence:
    """One vector of a study that matched the query: its index ("image" or "report"), the case
    it belongs to (the image's own; the study's first row for a report), that case's view, its
    cosine similarity and its 1-based rank in that index's results."""

    modality: str
    case_id: str
    view: str
    score: float
    rank: int

    def describe(self, rank: bool = True) -> str:
        """e.g. "frontal image 0.953 (#1)" or "report 0.214 (#3)" (without `rank`: no "(#n)")."""
        what = "report" if self.modality == "report" else f"{self.view} image"
        return f"{what} {self.score:.3f}" + (f" (#{self.rank})" if rank else "")


@dataclass(frozen=True)
class StudyMatch:
    """One study in one index's results: its 1-based rank among that index's studies and its
    vectors that matched, best first."""

    study_id: str
    rank: int
    evidence: tuple[Evidence, ...]

    @property
    def modality(self) -> str:
        return self.evidence[0].modality

    @property
    def cosine(self) -> float:
        return self.evidence[0].score


@dataclass(frozen=True)
class Hit:
    """One retrieved study.

    `case` stands for it (the report's row for a report match, the best-matching image's case
    for an image match); `score` is what the result is ordered by (the cosine for one index,
    the fused score for both); `modality` is that of the best evidence; `images` are all the
    study's cases with an image, frontal first; `evidence` every vector of it that matched.
    A hit made from a case alone is a study of that one case.
    """

    case: Case
    score: float
    rank: int
    modality: str  # "report" or "image"
    study_id: str = ""
    images: tuple[Case, ...] = ()
    evidence: tuple[Evidence, ...] = ()

    def __post_init__(self) -> None:
        if not self.study_id:
            object.__setattr__(self, "study_id", self.case.study_key)
        if not self.images and self.case.has_image:
            object.__setattr__(self, "images", (self.case,))
        if not self.evidence:
            own = Evidence(self.modality, self.case.case_id, self.case.view, self.score, self.rank)
            object.__setattr__(self, "evidence", (own,))

    @property
    def cosine(self) -> float:
        """The best cosine of the hit's own modality (its `score` when one index was searched)."""
        return max(e.score for e in self.evidence if e.modality == self.modality)

    def describe_evidence(self) -> str:
        """What matched, on one line: "frontal image 0.953 (#1); report 0.214 (#3)"."""
        return "; ".join(evidence.describe() for evidence in self.evidence)
