"""Run the API with uvicorn, on the loopback interface unless told otherwise.

`serve` checks the exposure rule in the parent process, then hands the app's configuration
to uvicorn's workers as JSON in `$MEDXPERT_SERVE_CONFIG`; each worker builds its app with
`worker_app` (a factory) and loads its own pipeline. The case library's vectors are
memory-mapped, so the workers share one copy of them in the page cache. Every answer names
its worker's process id in the `X-MedXpert-Worker` header.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from medxpert.api.keys import API_KEY_HEADER, API_KEY_VARIABLE
from medxpert.config import is_loopback
from medxpert.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

logger = logging.getLogger(__name__)

CONFIG_VARIABLE = "MEDXPERT_SERVE_CONFIG"
WORKER_HEADER = "X-MedXpert-Worker"
# Seconds a worker may take to answer the supervisor's health check (uvicorn's default, 5,
# is tight while a worker on a busy 2-core machine loads its pipeline).
HEALTHCHECK_TIMEOUT_S = 30


def check_exposure(host: str, api_key: str | None, allow_no_key: bool = False) -> None:
    """Refuse to serve beyond this machine without an API key, unless explicitly allowed."""
    if is_loopback(host) or api_key:
        return
    if allow_no_key:
        logger.warning("serving on %s without an API key: anyone who can reach it can use it", host)
        return
    raise ConfigError(
        f"refusing to serve on {host} without an API key: anyone who can reach that address "
        f"could query the case library. Set {API_KEY_VARIABLE} (clients then send it in the "
        f"{API_KEY_HEADER} header), bind to 127.0.0.1, or pass --no-api-key if the network "
        "is trusted."
    )


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    model_dir: str | Path | None = None,
    index_dir: str | Path | None = None,
    captioner: str | None = None,
    writer: str | None = None,
    writer_options: dict | None = None,
    k: int | None = None,
    allow_no_key: bool = False,
    workers: int = 1,
) -> None:
    """Serve the API until interrupted, from `workers` processes that each load the pipeline
    (`writer_options` as in `create_app`)."""
    import uvicorn

    check_exposure(host, os.environ.get(API_KEY_VARIABLE), allow_no_key)
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}.")
    config = {
        "model_dir": None if model_dir is None else str(model_dir),
        "index_dir": None if index_dir is None else str(index_dir),
        "captioner": captioner,
        "writer": writer,
        "writer_options": writer_options,
        "k": k,
    }
    # Each worker's torch would use every core; N workers share them instead.
    threads = max(1, (os.cpu_count() or 1) // workers)
    with _environment(CONFIG_VARIABLE, json.dumps({**config, "torch_threads": threads})):
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT_S,
        )


def worker_app() -> FastAPI:
    """The app of one worker: `create_app` with the configuration `serve` put in
    `$MEDXPERT_SERVE_CONFIG`, its answers naming the worker (`X-MedXpert-Worker`)."""
    try:
        config = json.loads(os.environ[CONFIG_VARIABLE])
    except (KeyError, json.JSONDecodeError) as error:
        raise ConfigError(
            f"worker_app needs the JSON configuration that `medxpert serve` puts in "
            f"{CONFIG_VARIABLE} ({error!r}); use `create_app` to run the API otherwise."
        ) from None
    import torch

    from medxpert.api.app import create_app

    torch.set_num_threads(config.pop("torch_threads", torch.get_num_threads()))
    app = create_app(**config)
    app.add_middleware(WorkerHeader)
    return app


class WorkerHeader:
    """ASGI middleware: the worker's process id in the `X-MedXpert-Worker` response header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.header = (WORKER_HEADER.lower().encode(), str(os.getpid()).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, send_named)


@contextmanager
def _environment(name: str, value: str) -> Iterator[None]:
    """`$name` set to `value` (inherited by worker processes), restored afterwards."""
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous
