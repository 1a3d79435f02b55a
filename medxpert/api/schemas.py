"""The REST API's request and response bodies (pydantic), as published in its OpenAPI schema.

The request models are the schema: what they refuse (a 422) is what the schema forbids. Form
fields arrive as text, never null; `k` and `force` are read as JSON scalars (`5`, `true`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
)

from medxpert.data import Case
from medxpert.labels import CHEXPERT_LABELS, positive_labels
from medxpert.report import StructuredReport
from medxpert.retrieval import Hit, Target
from medxpert.retrieval.engine import MAX_TEXT_CHARS
from medxpert.retrieval.export import snippet

ReportFormat = Literal["json", "markdown", "fhir", "dicom-sr"]
# what each report format is sent as
FORMAT_MEDIA_TYPES: dict[str, str] = {
    "json": "application/json",
    "markdown": "text/markdown; charset=utf-8",
    "fhir": "application/fhir+json",
    "dicom-sr": "application/dicom",
}


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("the text query is empty")
    return text


def _whole(value: Any) -> Any:
    """A float with no fractional part as the integer it is (JSON Schema's integer: 5.0 is 5)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _form_scalar(value: Any) -> Any:
    """A form field's text as the JSON number or boolean it spells, else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        parsed = json.loads(value)
    except ValueError:
        return value
    return parsed if isinstance(parsed, bool | int | float) else value


def _form_schema(schema: dict[str, Any]) -> None:
    """A form field is text or absent, never null: its schema without the null branch."""
    for field in schema["properties"].values():
        branches = [branch for branch in field.pop("anyOf", ()) if branch != {"type": "null"}]
        field.update(*branches)
        if field.get("default", "") is None:
            del field["default"]


QueryText = Annotated[
    str,
    Field(
        max_length=MAX_TEXT_CHARS,
        json_schema_extra={"pattern": r"\S"},
        description="text query, e.g. 'cardiomegaly with effusion' (not blank)",
    ),
    AfterValidator(_not_blank),
]
Note = Annotated[
    str | None,
    Field(max_length=MAX_TEXT_CHARS, description="clinical note to go with the image(s)"),
]
TopK = Annotated[
    Annotated[StrictInt, Field(ge=1)] | None,
    BeforeValidator(_whole),
    Field(
        description="studies to return (default: the server's k); fewer come back when the "
        "index holds fewer (see shortfall)"
    ),
]
FormK = Annotated[TopK, BeforeValidator(_form_scalar)]
Force = Annotated[
    StrictBool,
    BeforeValidator(_form_scalar),
    Field(description="diagnose an input the input guard refuses (with a warning)"),
]
IMAGE_PART = {
    "type": "array",
    "minItems": 1,
    "items": {"type": "string", "format": "binary", "minLength": 1},
    "description": "an X-ray (PNG, JPEG or DICOM); several (the field repeated) are one study, "
    "frontal first",
}


HEATMAP_IMAGE_PART = {
    "type": "array",
    "minItems": 1,
    "maxItems": 1,
    "items": {"type": "string", "format": "binary", "minLength": 1},
    "description": "the query X-ray (PNG, JPEG or DICOM)",
}


class ErrorProblem(BaseModel):
    """One reason a request was malformed (422)."""

    type: str = Field(description="e.g. missing, greater_than_equal, extra_forbidden")
    loc: list[str | int] = Field(description='where, e.g. ["body", "k"]')
    msg: str


class ErrorResponse(BaseModel):
    """Every error: what was wrong and its type; a 422 also lists each problem in `detail`."""

    error: str = Field(description="what was wrong and what to do about it")
    type: str = Field(description="the error's class, e.g. InvalidImageError, ValidationError")
    detail: list[ErrorProblem] | None = Field(
        None, description="422 validation errors only: each problem and where it is"
    )


class SearchQuery(BaseModel):
    """A text search (JSON)."""

    model_config = ConfigDict(extra="forbid")

    text: QueryText
    k: TopK = None
    target: Target = Field("reports", description="search the report index, images or both")


class SearchForm(BaseModel):
    """The fields of an X-ray search (multipart) besides its `image` files."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_form_schema)

    note: Note = None
    k: FormK = None
    target: Target = Field("reports", description="search the report index, images or both")


class ImageDiagnoseForm(BaseModel):
    """The fields of an X-ray diagnosis (multipart) besides its `image` files."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_form_schema)

    note: Note = None
    k: FormK = None
    target: Target = Field("both", description="indexes to search")
    force: Force = False


class TextDiagnoseForm(BaseModel):
    """A diagnosis of a text query (multipart, no image)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_form_schema)

    text: QueryText
    k: FormK = None
    target: Target = Field("both", description="indexes to search")
    force: Force = False


class FindingHeatmapForm(BaseModel):
    """The fields of a finding heatmap (multipart) besides its one `image` file."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_form_schema)

    force: Force = False


class SimilarityHeatmapForm(BaseModel):
    """The fields of a similarity heatmap (multipart) besides its one `image` file."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_form_schema)

    side: Literal["query", "retrieved"] = Field(
        "query", description="the map over the query X-ray, or over the retrieved case's X-ray"
    )
    force: Force = False


def multipart_schema(
    form: type[BaseModel], *, images: bool, image_part: dict[str, Any] = IMAGE_PART
) -> dict[str, Any]:
    """The multipart schema of `form`, with the required `image` files when `images`."""
    schema = form.model_json_schema()
    if images:
        schema["properties"] = {"image": image_part, **schema["properties"]}
        schema["required"] = ["image", *schema.get("required", ())]
    return schema


def one_of(*schemas: dict[str, Any]) -> dict[str, Any]:
    """One form that is exactly one of `schemas`: every field at the top (as multipart clients
    read them), and each alternative as its required fields and the others forbidden."""
    fields = {name: field for schema in schemas for name, field in schema["properties"].items()}
    return {
        "type": "object",
        "properties": fields,
        "additionalProperties": False,
        "oneOf": [
            {
                "title": schema["title"],
                "required": schema.get("required", []),
                "properties": {name: False for name in fields if name not in schema["properties"]},
            }
            for schema in schemas
        ],
    }


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


Shortfall = Annotated[
    str | None,
    Field(
        description="why fewer than k hits came back (the index holds fewer studies; a "
        "study's images and report are one hit); null when all k did"
    ),
]


class SearchResponse(BaseModel):
    kind: Literal["text", "image", "study"] = Field(
        description="what the query was: a text, an image, or several images of one study"
    )
    k: int = Field(description="the studies asked for (or the server's k)")
    target: Target
    hits: list[SearchHit] = Field(description="best first; at most k")
    shortfall: Shortfall = None


class DiagnoseResponse(BaseModel):
    """The structured report, the pathology probabilities and the cases it was made from."""

    report: StructuredReport
    probabilities: dict[str, float] = Field(description="CheXpert-14 observation → probability")
    zero_shot_weight: float = Field(description="weight of the caption's zero-shot probabilities")
    provenance: dict[str, str] = Field(
        description="what wrote the report: MedXpert's version, the encoder and case library "
        "with their fingerprints, the captioner and the writer"
    )
    hits: list[SearchHit]
    shortfall: Shortfall = None


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
