"""The local-LLM writer: any server that speaks OpenAI's chat-completions protocol (Ollama,
vLLM, llama.cpp's server, LM Studio), through the official `openai` client.

    OpenAICompatibleWriter("http://127.0.0.1:11434/v1", "llama3.1").write(context)

Nothing leaves the machine unless the URL points elsewhere: a host that is not loopback or
private is warned about once per process. What the server gets is what Gemini gets
(`report.llm.evidence_prompt`: de-identified text, the studies under pseudonyms), and the X-ray
only with `send_image=True` (its pixels as a PNG). A key, when the server wants one, comes from
the `api_key` argument or MEDXPERT_LLM_API_KEY, and is never logged.

Structured output: the request asks for a strict JSON schema of the draft; a server that
rejects that (HTTP 400 / 422) is asked for a JSON object, then for plain text, and the writer
remembers what the server took. Every answer is parsed and validated (`report.llm`). 429, 5xx,
timeouts and connection errors are retried with exponential backoff; other 4xx are not.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import logging
import os
import socket
from urllib.parse import urlsplit

from medxpert.errors import ConfigError
from medxpert.report.context import ReportContext
from medxpert.report.llm import (
    INSTRUCTIONS,
    RETRY_STATUS,
    LLMError,
    LLMWriter,
    draft_schema,
    with_retries,
)

logger = logging.getLogger(__name__)

KEY_VARIABLE = "MEDXPERT_LLM_API_KEY"
NO_KEY = "unused"  # the client wants a key; local servers ignore it
FORMATS = ("json_schema", "json_object", "text")


class OpenAICompatibleWriter(LLMWriter):
    """`OpenAICompatibleWriter(url, model).write(context)` → `StructuredReport` (the offline
    report on any failure). Without `model`, the first model the server lists (vLLM and
    llama.cpp serve one)."""

    name = "openai-compatible"
    label = "The local LLM"

    def __init__(
        self,
        url: str | None = None,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        retries: int = 2,
        backoff_s: float = 1.0,
        send_image: bool = False,
    ) -> None:
        if not url:
            raise ConfigError(
                "the openai-compatible writer needs the server's URL: give --llm-url (e.g. "
                "http://127.0.0.1:11434/v1 for Ollama) or set MEDXPERT_LLM_URL."
            )
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"--llm-url {url!r} is not an http(s) URL; give the server's base URL, e.g. "
                "http://127.0.0.1:11434/v1 (Ollama) or http://127.0.0.1:8000/v1 (vLLM)."
            )
        if timeout_s <= 0 or retries < 0 or backoff_s < 0:
            raise ConfigError("timeout_s must be positive, retries and backoff_s at least 0.")
        self.url, self.model = url.rstrip("/"), model or None
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.send_image = send_image
        self._api_key = api_key or os.environ.get(KEY_VARIABLE) or NO_KEY
        self._format = 0  # the first of FORMATS the server has not rejected
        self._client = None
        warn_if_remote(parts.hostname)

    def __repr__(self) -> str:  # never show the key
        return (
            f"OpenAICompatibleWriter(url={self.url!r}, model={self.model!r}, "
            f"send_image={self.send_image})"
        )

    def _answer(self, context: ReportContext, prompt: str, image: bytes | None) -> str:
        content: str | list[dict] = prompt
        if image is not None:
            picture = "data:image/png;base64," + base64.b64encode(image).decode()
            content = [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": picture}},
            ]
        messages = [
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": content},
        ]
        model = self.model or self._served_model()
        while True:
            kind = FORMATS[self._format]
            try:
                completion = self._retrying(
                    functools.partial(self._create, model, messages, kind, context)
                )
            except _FormatRejectedError as rejection:
                self._format += 1
                logger.info(
                    "%s rejected response_format %s (%s); asking for %s",
                    self.url,
                    kind,
                    rejection,
                    FORMATS[self._format],
                )
                continue
            if not completion.choices or not completion.choices[0].message.content:
                raise LLMError("the answer is empty")
            return completion.choices[0].message.content

    def _create(self, model: str, messages: list[dict], kind: str, context: ReportContext):
        import openai

        formats = {
            "json_schema": {
                "type": "json_schema",
                "json_schema": {
                    "name": "chest_xray_report",
                    "strict": True,
                    "schema": draft_schema(context),
                },
            },
            "json_object": {"type": "json_object"},
        }
        extra = {"response_format": formats[kind]} if kind in formats else {}
        try:
            return self.client.chat.completions.create(
                model=model, messages=messages, temperature=0.0, **extra
            )
        except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
            if kind not in formats:
                raise
            raise _FormatRejectedError(_status_text(error)) from error

    def _served_model(self) -> str:
        served = self._retrying(self.client.models.list)
        if not served.data:
            raise LLMError(f"{self.url} serves no model; give one with --llm-model")
        self.model = served.data[0].id
        logger.info("%s serves %s; using it", self.url, self.model)
        return self.model

    def _retrying(self, call):
        return with_retries(
            call, self._failure, retries=self.retries, backoff_s=self.backoff_s, label=self.label
        )

    def _failure(self, error: Exception) -> tuple[str, bool] | None:
        """(why, transient) for the client's errors; None for any other."""
        import openai

        if isinstance(error, openai.APIStatusError):
            code = error.status_code
            return _status_text(error), code in RETRY_STATUS or code >= 500
        if isinstance(error, openai.APITimeoutError):
            return f"no answer from {self.url} within {self.timeout_s:g} s", True
        if isinstance(error, openai.APIConnectionError):
            return f"cannot connect to {self.url}", True
        return None

    @property
    def client(self):
        """The `openai.OpenAI` client of the server (made once; it keeps its connections)."""
        if self._client is None:
            import openai

            self._client = openai.OpenAI(
                base_url=self.url, api_key=self._api_key, timeout=self.timeout_s, max_retries=0
            )
        return self._client


class _FormatRejectedError(Exception):
    """The server does not take the response_format that was asked for."""


def _status_text(error) -> str:
    """ "HTTP 500 (the server's message)", the message cut short."""
    body = error.body if isinstance(error.body, dict) else {}
    detail = body.get("error", body)
    message = detail.get("message") if isinstance(detail, dict) else detail
    message = " ".join(str(message or error.message).split())[:200]
    return f"HTTP {error.status_code} ({message})"


def is_local_host(host: str) -> bool:
    """True for localhost and for hosts whose every address is loopback or private."""
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        addresses = {ipaddress.ip_address(host.strip("[]"))}
    except ValueError:  # a host name: what it resolves to
        try:
            found = socket.getaddrinfo(host, None)
        except OSError:
            return False
        addresses = {ipaddress.ip_address(info[4][0].split("%")[0]) for info in found}
    return bool(addresses) and all(
        a.is_loopback or a.is_private or a.is_link_local for a in addresses
    )


@functools.cache
def warn_if_remote(host: str) -> None:
    """Warn, once per host and process, when `host` is not on this machine or its network."""
    if not is_local_host(host):
        logger.warning(
            "the local-LLM writer's server %s is not a loopback or private address: the "
            "de-identified evidence of every report will leave this network",
            host,
        )
