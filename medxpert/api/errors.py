"""Errors as JSON: MedXpert's errors by status, the router's and the form parser's HTTP errors,
validation errors, the request size limit, and a last-resort 500 that keeps the traceback in
the server log. Every error has one shape (a 422 adds `detail`, the list of problems):

    {"error": "<what was wrong and what to do>", "type": "<ClassName>"}
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medxpert.errors import InputRefusedError, MedXpertError, QueryError

logger = logging.getLogger(__name__)


class CaseNotFoundError(QueryError):
    """No case with the requested id in the library (404)."""

    status_code = 404


class FindingNotScoredError(QueryError):
    """A heatmap asked for a finding the captioner does not score (404)."""

    status_code = 404


class AuthenticationError(MedXpertError):
    """The X-API-Key header is missing or wrong (401)."""

    status_code = 401


class UnavailableError(MedXpertError):
    """The pipeline is not loaded (503); `type_name` is the class of the error that stopped it."""

    status_code = 503

    def __init__(self, message: str, type_name: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class RequestTooLargeError(HTTPException):
    """The request body is over the limit (413). An HTTPException, so that FastAPI's body
    parsing passes it on instead of turning it into a 400."""

    def __init__(self, limit: int, size: int | None = None) -> None:
        size_text = f"is {describe_size(size)}," if size is not None else "goes"
        super().__init__(
            413,
            f"the request body {size_text} over the {describe_size(limit)} limit; send a "
            "smaller image (the server's MEDXPERT_MAX_IMAGE_MB raises the limit).",
        )


def describe_size(count: int) -> str:
    """Bytes for people: MB as MEDXPERT_MAX_IMAGE_MB counts them (2**20), or bytes."""
    return f"{count / 2**20:.1f} MB" if count >= 100_000 else f"{count:,} bytes"


HTTP_ERROR_TYPES = {
    400: "MalformedRequestError",
    404: "RouteNotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
}


def error_body(message: str, type_name: str) -> dict[str, str]:
    return {"error": message, "type": type_name}


def status_of(error: MedXpertError) -> int:
    """An error's HTTP status: its own, 422 for an input the guard refuses, else 400."""
    if isinstance(error, InputRefusedError):
        return 422
    return getattr(error, "status_code", 400)


def http_message(request: Request, error: HTTPException) -> str:
    """What the router or the form parser refused, said for a client."""
    if error.status_code == 404:
        return f"no route {request.url.path}: see /docs for the routes of this API."
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        return f"{request.method} is not allowed on {request.url.path}; use {allowed}."
    if error.status_code == 400:
        return f"the request's form data could not be read: {error.detail}"
    return str(error.detail)


def validation_body(error: RequestValidationError) -> dict:
    """A 422: the problems in one line, and each with where it is."""
    problems = [
        {"type": item["type"], "loc": list(item["loc"]), "msg": item["msg"]}
        for item in error.errors()
    ]
    summary = "; ".join(
        f"{'.'.join(map(str, problem['loc'][1:])) or problem['loc'][0]}: {problem['msg']}"
        for problem in problems
    )
    return {**error_body(f"malformed request: {summary}.", "ValidationError"), "detail": problems}


def install_error_handlers(app: FastAPI) -> None:
    """MedXpertError → its status (`status_of`); the HTTP errors of routing and form parsing,
    413 and 422 validation errors in the same shape."""

    async def medxpert_error(request: Request, error: MedXpertError) -> JSONResponse:
        name = getattr(error, "type_name", type(error).__name__)
        return JSONResponse(error_body(str(error), name), status_code=status_of(error))

    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        body = error_body(
            http_message(request, error), HTTP_ERROR_TYPES.get(error.status_code, "HTTPError")
        )
        return JSONResponse(body, status_code=error.status_code, headers=error.headers)

    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(error), status_code=422)

    app.add_exception_handler(MedXpertError, medxpert_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, invalid)  # type: ignore[arg-type]


class BodyLimitMiddleware:
    """Refuse a body over `max_bytes`: by its Content-Length before reading anything, and by
    counting while it is read (chunked bodies have no Content-Length)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            error = RequestTooLargeError(self.max_bytes, int(declared))
            await _send_json(send, 413, error_body(error.detail, "RequestTooLargeError"))
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise RequestTooLargeError(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


class CatchAllMiddleware:
    """Any exception no handler took: log it with its traceback, answer a bare 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watching_send)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            if started:
                raise
            await _send_json(send, 500, error_body("internal error", "InternalError"))


async def _send_json(send: Send, status: int, body: dict) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
