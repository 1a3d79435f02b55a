"""Fail at once, not after minutes of retries, when the Hugging Face hub cannot be reached."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from medxpert.errors import HubUnavailableError


def require_hub(what: str, offline_hint: str, timeout: float = 3.0) -> None:
    """Raise `HubUnavailableError` naming `what` needs the hub and `offline_hint` (what to use
    instead) when the hub endpoint does not answer within `timeout` seconds. With
    HF_HUB_OFFLINE=1 the hub client itself answers from the local cache or fails at once."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return
    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError as error:
        raise HubUnavailableError(
            f"{what} needs its weights from the Hugging Face hub, and {endpoint.hostname} cannot "
            f"be reached ({error}). {offline_hint} If the weights are already in your Hugging "
            "Face cache, set HF_HUB_OFFLINE=1."
        ) from None
