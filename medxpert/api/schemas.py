"""The REST API's request and response bodies (pydantic), as published in its OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from medxpert.data import Case
from medxpert.labels import CHEXPERT_LABELS, positive_labels
from medxpert.report import StructuredReport
from medxpert.retrieval import Hit
from medxpert.retrieval.export import snippet

Target = Literal["reports", "images", "both"]


class ErrorResponse(BaseModel):
    """Every error except FastAPI's 422 validation errors (which keep FastAPI's `detail`)."""

    error: str = Field(description="what was wrong and what to do about it")
    type: str | None = Field(None, description="the error's class, e.g. InvalidImageError")


class SearchQuery(BaseModel):
    """A search: a text query (JSON), or an image with an optional note (multipart)."""

    model_config = ConfigDict(extra="forbid")

    text: str | None = Field(None, description="text query, e.g. 'cardiomegaly with effusion'")
    note: str | None = Field(None, description="clinical note added to an image query")
    k: int | None = Field(None, ge=1, description="results to return (default: the server's k)")
    target: Target = Field("reports", description="search the report index, images or both")


class StudyImage(BaseModel):
    """An image of a retrieved study (its X-ray: GET /cases/{case_id}/image)."""

    case_id: str
    view: str


class EvidenceItem(BaseModel):
    """A vector of the study that matched the query."""

    modality: Literal["report", "image"] = Field(description="the index it was found in")
    case_id: str = Field(description="the image's case, or the study's first case for a report")
    view: str
    score: float = Field(description="cosine similarity to the query")
    rank: int = Field(description="1-based rank in that index's results")


class SearchHit(BaseModel):
    """One retrieved prior study, with the case that stands for it."""

    rank: int
    study_id: str
    case_id: str = Field(description="the best-matching image's case, or the report's")
    score: float = Field(
        description="what the hits are ordered by: the cosine similarity for one index, the "
        "fused score (rrf by default) for target both"
    )
    modality: Literal["report", "image"] = Field(description="the index of the best evidence")
    source: str
    split: str
    view: str
    labels: list[str] = Field(description="positive CheXpert-14 labels of the study")
    excerpt: str = Field(description="start of the study's report (impression first)")
    has_image: bool
    images: list[StudyImage] = Field(description="the study's images, frontal first")
    evidence: list[EvidenceItem] = Field(description="what of the study matched, best first")

    @classmethod
    def of(cls, hit: Hit) -> SearchHit:
        case = hit.case
        return cls(
            rank=hit.rank,
            study_id=hit.study_id,
            case_id=case.case_id,
            score=round(hit.score, 4),
            modality=hit.modality,
            source=case.source,
            split=case.split,
            view=case.view,
            labels=positive_labels(case.labels),
            excerpt=snippet(hit),
            has_image=case.has_image,
            images=[StudyImage(case_id=c.case_id, view=c.view) for c in hit.images],
            evidence=[
                EvidenceItem(
                    modality=e.modality,
                    case_id=e.case_id,
                    view=e.view,
                    score=round(e.score, 4),
                    rank=e.rank,
                )
                for e in hit.evidence
            ],
        )


class SearchResponse(BaseModel):
    kind: Literal["text", "image", "study"] = Field(
        description="what the query was: a text, an image, or several images of one study"
    )
    k: int
    target: Target
    hits: list[SearchHit] = Field(description="best first")


class DiagnoseResponse(BaseModel):
    """The structured report, the pathology probabilities and the cases it was made from."""

    report: StructuredReport
    probabilities: dict[str, float] = Field(description="CheXpert-14 observation → probability")
    zero_shot_weight: float = Field(description="weight of the caption's zero-shot probabilities")
    hits: list[SearchHit]


class CaseRecord(BaseModel):
    """A case of the library."""

    case_id: str
    study_id: str
    patient_id: str
    source: str
    split: str
    view: str
    findings: str
    impression: str
    report: str
    labels: list[str] = Field(description="positive CheXpert-14 labels")
    uncertain_labels: list[str]
    extra_labels: list[str] = Field(description="source labels outside CheXpert-14")
    has_image: bool
    licence: str

    @classmethod
    def of(cls, case: Case) -> CaseRecord:
        return cls(
            case_id=case.case_id,
            study_id=case.study_id,
            patient_id=case.patient_id,
            source=case.source,
            split=case.split,
            view=case.view,
            findings=case.findings,
            impression=case.impression,
            report=case.report,
            labels=positive_labels(case.labels),
            uncertain_labels=[
                name
                for name, value in zip(CHEXPERT_LABELS, case.labels, strict=True)
                if value == -1
            ],
            extra_labels=list(case.extra_labels),
            has_image=case.has_image,
            licence=case.licence,
        )


class ModelInfo(BaseModel):
    backbone: str
    fingerprint: str
    dir: str | None


class IndexInfo(BaseModel):
    name: str | None
    dir: str | None
    cases: int
    counts: dict[str, int] = Field(description="vectors per index: images, reports")
    created: str | None
    sources: list[str]
    splits: list[str]


class Health(BaseModel):
    """200 with status ok when the pipeline is loaded; 503 with the reason when it is not."""

    status: Literal["ok", "unavailable"]
    version: str
    error: str | None = Field(None, description="why the pipeline is not loaded")
    model: ModelInfo | None = None
    index: IndexInfo | None = None
    captioner: str | None = None
    writer: str | None = None
    writer_model: str | None = None
    k: int | None = Field(None, description="cases retrieved when a request gives no k")
    max_request_bytes: int
    api_key_required: bool
