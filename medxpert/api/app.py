"""`create_app`: the MedXpert REST API on FastAPI.

    app = create_app()                      # loads models/ and indexes/ at startup
    app = create_app(pipeline)              # a ready DiagnosisPipeline (tests)
    uvicorn.run(app, host="127.0.0.1", port=8000)

The pipeline is loaded once, at startup. When that fails with a MedXpertError (say, no index
built yet) the server still starts: /health says why, and every other route answers 503 with
the same message. Inference runs in the threadpool, one request at a time (the pipeline is not
known to be thread-safe).
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Security
from fastapi.security import APIKeyHeader

from medxpert import __version__
from medxpert.api.errors import (
    AuthenticationError,
    BodyLimitMiddleware,
    CatchAllMiddleware,
    UnavailableError,
    describe_size,
    install_error_handlers,
)
from medxpert.api.keys import API_KEY_HEADER, API_KEY_VARIABLE
from medxpert.api.routes import open_routes, routes
from medxpert.api.state import ApiState
from medxpert.config import Settings
from medxpert.errors import MedXpertError
from medxpert.pipeline import DiagnosisPipeline

logger = logging.getLogger(__name__)

DESCRIPTION = """Retrieval-augmented diagnosis for chest X-rays: search a library of prior
cases by X-ray, text or X-ray + clinical note, and get a structured report grounded in the
most similar cases. **Decision support, not a diagnosis.**

Every error is JSON: `{"error": "...", "type": "..."}`; a 422 (`ValidationError`) also lists
each problem and where it is in `detail`. When the server was started with `MEDXPERT_API_KEY`,
every route but /health needs the header `X-API-Key`."""


def create_app(
    pipeline: DiagnosisPipeline | None = None,
    *,
    model_dir: str | Path | None = None,
    index_dir: str | Path | None = None,
    captioner: str | None = None,
    writer: str | None = None,
    writer_options: dict | None = None,
    k: int | None = None,
    settings: Settings | None = None,
    api_key: str | None = None,
    max_body_bytes: int | None = None,
) -> FastAPI:
    """The API around `pipeline`, or around one loaded at startup from `model_dir` and
    `index_dir` (a library name or folder; default: the MEDXPERT_ENCODER one under indexes/;
    the model: the one its manifest records).
    `writer_options` go to the writer (default: the LLM writers' MEDXPERT_LLM_URL and
    MEDXPERT_LLM_MODEL).
    `api_key` (default: $MEDXPERT_API_KEY) makes every route but /health require it;
    `max_body_bytes` (default: MEDXPERT_MAX_IMAGE_MB) limits request bodies."""
    settings = settings or Settings.from_env()
    api_key = api_key or os.environ.get(API_KEY_VARIABLE) or None
    state = ApiState(
        settings,
        max_body_bytes or settings.max_image_bytes,
        api_key is not None,
        pipeline=pipeline,
    )
    index_path = settings.library_path(index_dir)
    if pipeline is None:
        state.index_dir = index_path

    def load() -> DiagnosisPipeline:
        return DiagnosisPipeline.load(
            index_path,
            model=model_dir,
            settings=settings,
            captioner=captioner or settings.captioner,
            writer=writer or settings.writer,
            k=k or settings.top_k,
            writer_options=writer_options,
        )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if state.pipeline is None:
            try:
                state.pipeline = load()
            except MedXpertError as error:
                state.error = UnavailableError(str(error), type(error).__name__)
                logger.error("no pipeline; every route but /health answers 503: %s", error)
        yield

    app = FastAPI(
        title="MedXpert API", description=DESCRIPTION, version=__version__, lifespan=lifespan
    )
    app.state.api = state
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=state.max_body_bytes)
    app.add_middleware(CatchAllMiddleware)
    app.include_router(open_routes)
    app.include_router(routes, dependencies=[Depends(_key_check(api_key))] if api_key else [])
    logger.info(
        "MedXpert API: %s, request limit %s",
        f"{API_KEY_HEADER} required" if api_key else "no API key",
        describe_size(state.max_body_bytes),
    )
    return app


SuppliedKey = Annotated[str | None, Security(APIKeyHeader(name=API_KEY_HEADER, auto_error=False))]


def _key_check(expected: str) -> Callable[[str | None], None]:
    def check(supplied: SuppliedKey) -> None:
        if supplied is None or not hmac.compare_digest(supplied.encode(), expected.encode()):
            raise AuthenticationError(
                f"missing or wrong {API_KEY_HEADER} header: this server requires the API key "
                f"it was started with ({API_KEY_VARIABLE})."
            )

    return check
