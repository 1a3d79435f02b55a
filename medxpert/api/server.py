"""Run the API with uvicorn, on the loopback interface unless told otherwise."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from medxpert.api.app import API_KEY_HEADER, API_KEY_VARIABLE, create_app
from medxpert.errors import ConfigError

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


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
) -> None:
    """Load the pipeline and serve the API until interrupted (`writer_options` as in
    `create_app`)."""
    import uvicorn

    check_exposure(host, os.environ.get(API_KEY_VARIABLE), allow_no_key)
    app = create_app(
        model_dir=model_dir,
        index_dir=index_dir,
        captioner=captioner,
        writer=writer,
        writer_options=writer_options,
        k=k,
    )
    uvicorn.run(app, host=host, port=port)
