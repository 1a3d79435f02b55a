"""The routes: /health (open), and /diagnose, /search, /cases (behind the API key when set)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from medxpert import __version__
from medxpert.api.errors import CaseNotFoundError
from medxpert.api.schemas import (
    CaseRecord,
    DiagnoseResponse,
    ErrorResponse,
    Health,
    IndexInfo,
    ModelInfo,
    SearchHit,
    SearchQuery,
    SearchResponse,
    Target,
)
from medxpert.api.state import ApiState, Pipeline, State
from medxpert.data import Case, open_image
from medxpert.errors import QueryError
from medxpert.pipeline import DiagnosisPipeline

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "bad input: unreadable image, empty text, k larger than the index, ..."),
        (401, "missing or wrong X-API-Key (only when the server requires one)"),
        (413, "request body over the size limit"),
        (503, "the pipeline is not loaded (e.g. no index built yet)"),
    )
}
SEARCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": SearchQuery.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "an X-ray; several (the field repeated) are one "
                            "study, e.g. its frontal and lateral views",
                        },
                        "note": {"type": "string"},
                        "k": {"type": "integer", "minimum": 1},
                        "target": {"type": "string", "enum": ["reports", "images", "both"]},
                    },
                }
            },
        },
    }
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
            fingerprint=encoder.fingerprint(),
            dir=str(state.model_dir) if state.model_dir else None,
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
        captioner=getattr(pipeline.captioner, "name", type(pipeline.captioner).__name__),
        writer=getattr(pipeline.writer, "name", type(pipeline.writer).__name__),
        writer_model=getattr(pipeline.writer, "model", None),
        k=pipeline.k,
        **limits,
    )


@routes.post(
    "/diagnose",
    response_model=DiagnoseResponse,
    summary="Structured report for an X-ray or a study's X-rays (+ note), or a text query",
)
def diagnose(
    state: State,
    pipeline: Pipeline,
    image: Annotated[
        list[UploadFile] | None,
        File(
            description="X-ray: PNG, JPEG or DICOM; the field repeated gives several images of "
            "one study (frontal first: the caption is of the first)"
        ),
    ] = None,
    note: Annotated[str | None, Form(description="clinical note to go with the image")] = None,
    text: Annotated[str | None, Form(description="a text query instead of an image")] = None,
    k: Annotated[int | None, Form(ge=1, description="cases to retrieve")] = None,
    target: Annotated[Target, Form(description="indexes to search")] = "both",
) -> dict:
    """Retrieve the most similar prior studies and write a structured report from them:
    findings with citations, impression, differential, ICD-10 suggestions and triage."""
    pictures = [state.decode(upload.file.read(), upload.filename) for upload in image or ()]
    with state.lock:
        diagnosis = pipeline.diagnose(
            **_image_query(pictures), text=text, note=note, k=k, target=target
        )
    return {**diagnosis.to_dict(), "hits": [SearchHit.of(hit) for hit in diagnosis.hits]}


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


@routes.get(
    "/cases/{case_id:path}/image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "the case's X-ray as PNG"}},
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


async def _read_search(request: Request) -> tuple[SearchQuery, list[Upload]]:
    """The query and, for multipart, the uploaded images' bytes and file names."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return _validated(SearchQuery.model_validate_json, await request.body()), []
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise QueryError(
            "send the search as JSON (content-type application/json) or as multipart form "
            "data with an image file."
        )
    async with request.form() as form:
        uploads = form.getlist("image")
        fields = {key: value for key, value in form.items() if key != "image" and value != ""}
        query = _validated(SearchQuery.model_validate, fields)
        if any(isinstance(upload, str) for upload in uploads):
            raise QueryError("send the image as a file (curl -F image=@cxr.png), not as text.")
        return query, [(await upload.read(), upload.filename) for upload in uploads]


def _image_query(pictures: list[Image.Image]) -> dict:
    """One decoded upload as `image`, several (one study) as `images`, none as nothing."""
    if len(pictures) > 1:
        return {"images": pictures}
    return {"image": pictures[0] if pictures else None}


def _validated(parse: Callable[[Any], SearchQuery], raw: Any) -> SearchQuery:
    """Parse the body; a bad one is a 422 in FastAPI's own format."""
    try:
        return parse(raw)
    except ValidationError as error:
        errors = error.errors(include_url=False, include_input=False)
        raise RequestValidationError(
            [{**item, "loc": ("body", *item["loc"])} for item in errors]
        ) from None


def _search(
    state: ApiState, pipeline: DiagnosisPipeline, query: SearchQuery, uploads: list[Upload]
) -> SearchResponse:
    pictures = [state.decode(*upload) for upload in uploads]
    k = query.k or pipeline.k
    with state.lock:
        hits = pipeline.engine.search(
            **_image_query(pictures), text=query.text, note=query.note, k=k, target=query.target
        )
    return SearchResponse(
        kind="text" if not pictures else "image" if len(pictures) == 1 else "study",
        k=k,
        target=query.target,
        hits=[SearchHit.of(hit) for hit in hits],
    )
