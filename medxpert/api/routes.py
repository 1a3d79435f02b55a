"""The routes: /health (open), and /diagnose, /search, /heatmaps, /cases (behind the API key when
set)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from medxpert import __version__
from medxpert.api.errors import CaseNotFoundError, FindingNotScoredError
from medxpert.api.schemas import (
    FORMAT_MEDIA_TYPES,
    HEATMAP_IMAGE_PART,
    CaseRecord,
    DiagnoseResponse,
    ErrorResponse,
    FindingHeatmapForm,
    Health,
    ImageDiagnoseForm,
    IndexInfo,
    ModelInfo,
    ReportFormat,
    SearchForm,
    SearchHit,
    SearchQuery,
    SearchResponse,
    SimilarityHeatmapForm,
    TextDiagnoseForm,
    multipart_schema,
    one_of,
)
from medxpert.api.state import ApiState, Pipeline, State
from medxpert.data import Case, open_image
from medxpert.errors import QueryError
from medxpert.explain import overlay, png_bytes
from medxpert.pipeline import Diagnosis, DiagnosisPipeline
from medxpert.retrieval import Hit, Target

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "bad input: unreadable image, a note without an image, unreadable form data, ..."),
        (401, "missing or wrong X-API-Key (only when the server requires one)"),
        (413, "request body over the size limit"),
        (422, "malformed parameters (type ValidationError; `detail` lists each problem)"),
        (503, "the pipeline is not loaded (e.g. no index built yet)"),
    )
}
REFUSED = {
    422: {
        "model": ErrorResponse,
        "description": "malformed parameters (ValidationError), or an input the input guard "
        "refuses as no chest radiograph (InputRefusedError; force=true overrides it)",
    }
}
SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SearchQuery.model_json_schema()},
            "multipart/form-data": {"schema": multipart_schema(SearchForm, images=True)},
        },
    }
}
DIAGNOSE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": one_of(
                    multipart_schema(ImageDiagnoseForm, images=True),
                    multipart_schema(TextDiagnoseForm, images=False),
                )
            }
        },
    }
}

PNG = {"content": {"image/png": {}}, "description": "the heatmap over the X-ray, as PNG"}


def _heatmap_body(form: type[BaseModel]) -> dict[str, Any]:
    schema = multipart_schema(form, images=True, image_part=HEATMAP_IMAGE_PART)
    return {
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}
    }


open_routes = APIRouter()
routes = APIRouter(responses=ERRORS)


@open_routes.get(
    "/health",
    response_model=Health,
    responses={503: {"model": Health, "description": "the pipeline is not loaded"}},
    summary="Model, index, counts; 503 with the reason when not ready",
)
def health(state: State, response: Response) -> Health:
    limits = {"max_request_bytes": state.max_body_bytes, "api_key_required": state.api_key_required}
    pipeline = state.pipeline
    if pipeline is None:
        response.status_code = 503
        return Health(status="unavailable", version=__version__, error=str(state.error), **limits)
    library, encoder = pipeline.engine.library, pipeline.engine.encoder
    manifest = library.manifest
    return Health(
        status="ok",
        version=__version__,
        model=ModelInfo(
            backbone=encoder.backbone,
            fingerprint=library.encoder_fingerprint,  # checked against the encoder at load
            dir=encoder.info.get("path"),
        ),
        index=IndexInfo(
            name=manifest.get("name"),
            dir=str(state.index_dir) if state.index_dir else None,
            cases=len(library.cases),
            counts={modality: library.count(modality) for modality in library.indexes},
            created=manifest.get("created"),
            sources=sorted({case.source for case in library.cases}),
            splits=sorted({case.split for case in library.cases}),
        ),
        captioner=pipeline.captioner.name,
        writer=pipeline.writer.name,
        writer_model=pipeline.writer.model,
        k=pipeline.k,
        **limits,
    )


REPORT_FORMATS = {
    200: {
        "content": {
            FORMAT_MEDIA_TYPES["markdown"]: {"schema": {"type": "string"}},
            FORMAT_MEDIA_TYPES["fhir"]: {"schema": {"type": "object"}},
            FORMAT_MEDIA_TYPES["dicom-sr"]: {"schema": {"type": "string", "format": "binary"}},
        },
        "description": "the report as JSON (format=json), Markdown (markdown), a FHIR R4 "
        "Bundle (fhir) or a DICOM Comprehensive SR file (dicom-sr)",
    },
    **REFUSED,
}
FormatQuery = Annotated[
    ReportFormat,
    Query(
        alias="format",
        description="json (default), markdown, fhir (FHIR R4 Bundle) or dicom-sr (DICOM SR)",
    ),
]


@routes.post(
    "/diagnose",
    response_model=DiagnoseResponse,
    responses=REPORT_FORMATS,
    openapi_extra=DIAGNOSE_BODY,
    summary="Structured report for an X-ray or a study's X-rays (+ note), or a text query",
)
async def diagnose(
    request: Request, state: State, pipeline: Pipeline, report_format: FormatQuery = "json"
) -> Any:
    """Multipart: `image` files (the field repeated: one study, frontal first) with an
    optional `note`, or a `text` query instead; optional `k`, `target`, `force`. Retrieve the
    most similar prior studies and write a structured report from them: findings with
    citations, impression, differential, ICD-10 suggestions and triage; `?format=` chooses
    JSON, Markdown, a FHIR R4 Bundle or a DICOM SR."""
    fields, uploads = await _read_form(request, "the diagnosis")
    form = ImageDiagnoseForm if uploads else TextDiagnoseForm
    diagnosis, shortfall = await run_in_threadpool(
        _diagnose, state, pipeline, _validated(form, fields), uploads
    )
    if report_format == "json":
        return {
            **diagnosis.to_dict(),
            "hits": [SearchHit.of(hit) for hit in diagnosis.hits],
            "shortfall": shortfall,
        }
    return Response(
        await run_in_threadpool(_formatted, diagnosis, report_format),
        media_type=FORMAT_MEDIA_TYPES[report_format],
        headers={"Content-Disposition": f'inline; filename="{REPORT_FILES[report_format]}"'},
    )


REPORT_FILES = {"markdown": "report.md", "fhir": "report.fhir.json", "dicom-sr": "report.dcm"}


def _formatted(diagnosis: Diagnosis, report_format: ReportFormat) -> bytes:
    """The report in a standard format: Markdown, FHIR R4 JSON or a DICOM SR file."""
    from medxpert.interop import fhir, sr

    if report_format == "markdown":
        return diagnosis.report.to_markdown().encode()
    if report_format == "fhir":
        return fhir.fhir_json(diagnosis).encode()
    return sr.sr_bytes(diagnosis)


@routes.post(
    "/search",
    response_model=SearchResponse,
    openapi_extra=SEARCH_BODY,
    summary="Most similar prior studies for a text (JSON) or X-rays (multipart)",
)
async def search(request: Request, state: State, pipeline: Pipeline) -> SearchResponse:
    """JSON `{"text": ..., "k": 10, "target": "reports"}`, or multipart with an `image` file,
    or several (the field repeated: one study), and optional `note`, `k`, `target`. Hits are
    studies, best first."""
    query, upload = await _read_search(request)
    return await run_in_threadpool(_search, state, pipeline, query, upload)


@routes.post(
    "/heatmaps/findings/{finding}",
    response_class=Response,
    responses={
        200: PNG,
        404: {"model": ErrorResponse, "description": "a finding the captioner does not score"},
        **REFUSED,
    },
    openapi_extra=_heatmap_body(FindingHeatmapForm),
    summary="Which regions of an X-ray raise a finding's score (heatmap PNG)",
)
async def finding_heatmap(
    finding: str, request: Request, state: State, pipeline: Pipeline
) -> Response:
    """Multipart: one `image` (optional `force`). The regions that raise the captioner's
    zero-shot score of `finding` (e.g. Cardiomegaly), as a heatmap over the X-ray."""
    fields, uploads = await _read_form(request, "the heatmap's X-ray")
    form = _validated(FindingHeatmapForm, fields)
    return await run_in_threadpool(_finding_heatmap, state, pipeline, finding, form, uploads)


@routes.post(
    "/heatmaps/cases/{case_id:path}",
    response_class=Response,
    responses={
        200: PNG,
        404: {"model": ErrorResponse, "description": "no case with this id, or no image"},
        **REFUSED,
    },
    openapi_extra=_heatmap_body(SimilarityHeatmapForm),
    summary="Which regions make an X-ray and a library case's X-ray similar (heatmap PNG)",
)
async def similarity_heatmap(
    case_id: str, request: Request, state: State, pipeline: Pipeline
) -> Response:
    """Multipart: one `image` (optional `side`, `force`). The regions that raise the cosine
    of the X-ray and the case's X-ray, over the query (side=query) or the case (retrieved)."""
    fields, uploads = await _read_form(request, "the heatmap's X-ray")
    form = _validated(SimilarityHeatmapForm, fields)
    return await run_in_threadpool(_similarity_heatmap, state, pipeline, case_id, form, uploads)


@routes.get(
    "/cases/{case_id:path}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "the case's X-ray as PNG"},
        404: {"model": ErrorResponse, "description": "no case with this id, or it has no image"},
    },
    summary="A case's X-ray as an 8-bit grayscale PNG",
)
def case_image(case_id: str, state: State, pipeline: Pipeline) -> Response:
    case = _case(pipeline, case_id)
    if not case.has_image or not Path(case.image_path).is_file():
        raise CaseNotFoundError(f"case {case_id} has no image on this server.")
    buffer = io.BytesIO()
    open_image(case.image_path, max_pixels=state.settings.max_image_pixels).save(buffer, "PNG")
    return Response(buffer.getvalue(), media_type="image/png")


@routes.get(
    "/cases/{case_id:path}",
    response_model=CaseRecord,
    responses={404: {"model": ErrorResponse, "description": "no case with this id"}},
    summary="A case of the library: ids, report text, labels",
)
def case_record(case_id: str, pipeline: Pipeline) -> CaseRecord:
    return CaseRecord.of(_case(pipeline, case_id))


def _case(pipeline: DiagnosisPipeline, case_id: str) -> Case:
    library = pipeline.engine.library
    row = library.row_of(case_id)
    if row is None:
        raise CaseNotFoundError(
            f"no case {case_id!r} in the library; take case ids from the hits of /search "
            "(they look like nih_cxr14:00000013_005)."
        )
    return library.case(row)


Upload = tuple[bytes, str | None]  # an uploaded file's bytes and name
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")
Model = TypeVar("Model", bound=BaseModel)


async def _read_search(request: Request) -> tuple[SearchQuery | SearchForm, list[Upload]]:
    """The query and, for multipart, the uploaded images' bytes and file names."""
    if request.headers.get("content-type", "").startswith("application/json"):
        return _validated(SearchQuery, await request.body()), []
    fields, uploads = await _read_form(request, "the search as JSON (application/json) or")
    return _validated(SearchForm, fields), uploads


async def _read_form(request: Request, what: str) -> tuple[dict[str, Any], list[Upload]]:
    """A form's text fields, as sent (an empty one too; a field sent twice as the list of its
    values, which validation refuses), and its `image` files."""
    if not request.headers.get("content-type", "").startswith(FORMS):
        raise QueryError(f"send {what} as multipart form data (curl -F image=@cxr.png).")
    async with request.form() as form:
        uploads = form.getlist("image")
        if any(isinstance(upload, str) for upload in uploads):
            raise QueryError("send the image as a file (curl -F image=@cxr.png), not as text.")
        values: dict[str, list[Any]] = {}
        for key, value in form.multi_items():
            if key != "image":
                values.setdefault(key, []).append(value)
        fields = {key: sent[0] if len(sent) == 1 else sent for key, sent in values.items()}
        return fields, [(await upload.read(), upload.filename) for upload in uploads]


def _validated(model: type[Model], raw: Any) -> Model:
    """The request parsed by `model`; a bad one is a 422 with each problem."""
    try:
        if isinstance(raw, bytes):
            return model.model_validate_json(raw)
        return model.model_validate(raw)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in errors]
        ) from None


def _image_query(pictures: list[Image.Image]) -> dict:
    """One decoded upload as `image`, several (one study) as `images`, none as nothing."""
    if len(pictures) > 1:
        return {"images": pictures}
    return {"image": pictures[0] if pictures else None}


def _capped(pipeline: DiagnosisPipeline, k: int | None, target: Target) -> tuple[int, int]:
    """The k asked for (or the pipeline's), and that k capped at the vectors `target` searches
    (the most hits there can be)."""
    asked = k or pipeline.k
    library = pipeline.engine.library
    return asked, min(asked, sum(library.count(m) for m in _modalities(target)))


def _shortfall(pipeline: DiagnosisPipeline, target: Target, k: int, hits: list[Hit]) -> str | None:
    """Why fewer than k hits came back: the studies the searched indexes hold."""
    if len(hits) >= k:
        return None
    library, modalities = pipeline.engine.library, _modalities(target)
    studies = {
        library.case(row).study_key
        for modality in modalities
        if modality in library.indexes
        for row in library.indexes[modality].ids()
    }
    return (
        f"{len(hits)} of the {k} studies asked for: the {' and '.join(modalities)} "
        f"{'indexes hold' if len(modalities) > 1 else 'index holds'} {len(studies)} studies "
        "(a study's images and report are one hit)."
    )


def _modalities(target: Target) -> list[str]:
    return ["reports", "images"] if target == "both" else [target]


def _search(
    state: ApiState,
    pipeline: DiagnosisPipeline,
    query: SearchQuery | SearchForm,
    uploads: list[Upload],
) -> SearchResponse:
    pictures = [state.decode(*upload) for upload in uploads]
    text, note = getattr(query, "text", None), getattr(query, "note", None)
    asked, k = _capped(pipeline, query.k, query.target)
    with state.lock:
        hits = pipeline.engine.search(
            **_image_query(pictures), text=text, note=note, k=k, target=query.target
        )
    return SearchResponse(
        kind="text" if not pictures else "image" if len(pictures) == 1 else "study",
        k=asked,
        target=query.target,
        hits=[SearchHit.of(hit) for hit in hits],
        shortfall=_shortfall(pipeline, query.target, asked, hits),
    )


def _diagnose(
    state: ApiState,
    pipeline: DiagnosisPipeline,
    form: ImageDiagnoseForm | TextDiagnoseForm,
    uploads: list[Upload],
) -> tuple[Diagnosis, str | None]:
    """The diagnosis and why it has fewer studies than asked for (None when it has them)."""
    pictures = [state.decode(*upload) for upload in uploads]
    query = {"text": getattr(form, "text", None), "note": getattr(form, "note", None)}
    asked, k = _capped(pipeline, form.k, form.target)
    with state.lock:
        diagnosis = pipeline.diagnose(
            **_image_query(pictures), **query, k=k, target=form.target, force=form.force
        )
    return diagnosis, _shortfall(pipeline, form.target, asked, diagnosis.hits)


def _query_picture(
    state: ApiState, pipeline: DiagnosisPipeline, uploads: list[Upload], force: bool
) -> Image.Image:
    """The one uploaded X-ray, decoded and past the input guard."""
    if len(uploads) != 1:
        raise QueryError(f"send one image for a heatmap ({len(uploads)} were sent).")
    return pipeline.checked_images([state.decode(*uploads[0])], force=force)[0]


def _finding_heatmap(
    state: ApiState,
    pipeline: DiagnosisPipeline,
    finding: str,
    form: FindingHeatmapForm,
    uploads: list[Upload],
) -> Response:
    explainer = state.explainer(pipeline)
    if finding not in explainer.findings:
        raise FindingNotScoredError(
            f"no heatmap for {finding!r}: the captioner scores "
            f"{', '.join(explainer.findings) or 'no findings'}."
        )
    with state.lock:
        picture = _query_picture(state, pipeline, uploads, form.force)
        heatmap = explainer.finding_maps(picture, [finding])[finding]
    return Response(png_bytes(overlay(picture, heatmap)), media_type="image/png")


def _similarity_heatmap(
    state: ApiState,
    pipeline: DiagnosisPipeline,
    case_id: str,
    form: SimilarityHeatmapForm,
    uploads: list[Upload],
) -> Response:
    case = _case(pipeline, case_id)
    if not case.has_image or not Path(case.image_path).is_file():
        raise CaseNotFoundError(f"case {case_id} has no image on this server.")
    retrieved = open_image(case.image_path, max_pixels=state.settings.max_image_pixels)
    with state.lock:
        picture = _query_picture(state, pipeline, uploads, form.force)
        on_query, on_retrieved = state.explainer(pipeline).similarity_maps(picture, retrieved)
    shown = (picture, on_query) if form.side == "query" else (retrieved, on_retrieved)
    return Response(png_bytes(overlay(*shown)), media_type="image/png")
