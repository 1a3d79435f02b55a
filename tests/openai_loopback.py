"""A small OpenAI-protocol server on 127.0.0.1 (`POST /v1/chat/completions`, `GET /v1/models`)
that plays an LLM in one of `MODES`, and records every request.

    with LoopbackLLM("unfaithful") as llm:
        OpenAICompatibleWriter(llm.url, "loopback-llm").write(context)
        llm.requests[0]["body"]["response_format"]

Modes: `faithful` echoes the draft it is given (parsed from the request); `unfaithful` adds
to it a finding no retrieved study supports ("Large right pneumothorax.", citing a retrieved
study), a sentence that cites nothing and one with an `XXXX` token; `fabricated` answers only
those; `malformed` answers broken JSON; `timeout` answers after `delay_s`; `error500` answers
HTTP 500; `no-json-schema` answers 400 to a json_schema response format (then as `faithful`);
`text-only` answers 400 to any response format and a ```json fenced draft after some prose to
a request without one. With `busy=N` the first N chat requests get HTTP 429 (rate limited).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.builders import send_json

MODES = (
    "faithful",
    "unfaithful",
    "fabricated",
    "malformed",
    "timeout",
    "error500",
    "no-json-schema",
    "text-only",
)
MODEL = "loopback-llm"
UNSUPPORTED = "Large right pneumothorax."
UNCITED = "Clinical correlation is recommended."
DEIDENTIFIED = "Stable XXXX of the chest."


class LoopbackLLM:
    """The server, started on a free port by `with` (or `start()`), stopped on exit."""

    def __init__(self, mode: str = "faithful", *, delay_s: float = 2.0, busy: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
        self.mode, self.delay_s, self.busy = mode, delay_s, busy
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> LoopbackLLM:
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LoopbackLLM:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def record(self, request: dict) -> None:
        with self._lock:
            self.requests.append(request)

    def answer(self, body: dict) -> tuple[int, dict]:
        """(status, JSON body) for a chat-completions request, as the mode has it."""
        kind = (body.get("response_format") or {}).get("type")
        with self._lock:
            busy, self.busy = self.busy > 0, max(self.busy - 1, 0)
        if busy:
            return 429, _error("rate limit reached, try again", "rate_limit_exceeded")
        if self.mode == "error500":
            return 500, _error("the model crashed", "server_error")
        if (self.mode == "no-json-schema" and kind == "json_schema") or (
            self.mode == "text-only" and kind
        ):
            return 400, _error(f"response_format {kind} is not supported", "invalid_request")
        if self.mode == "timeout":
            time.sleep(self.delay_s)
        if self.mode == "malformed":
            return 200, _completion('{"findings": [{"text": "Large left pleural effusion.",')
        prompt = json.loads(_text(body["messages"][-1]["content"]))
        draft = prompt["draft"]
        first = prompt["retrieved_cases"][0]["case_id"]
        inventions = [
            {"text": UNSUPPORTED, "cited_case_ids": [first]},
            {"text": UNCITED, "cited_case_ids": []},
            {"text": DEIDENTIFIED, "cited_case_ids": [first]},
        ]
        if self.mode == "unfaithful":
            draft = {
                "findings": draft["findings"] + inventions,
                "impression": draft["impression"] + inventions[:1],
            }
        elif self.mode == "fabricated":
            draft = {"findings": inventions, "impression": inventions[:1]}
        content = json.dumps(draft)
        if self.mode == "text-only":
            content = f"Here is the rewritten report.\n```json\n{content}\n```"
        return 200, _completion(content)


def _handler(server: LoopbackLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            server.record(
                {
                    "method": "GET",
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
            )
            if self.path.rstrip("/").endswith("/v1/models"):
                self._send(200, {"object": "list", "data": [_model()]})
            else:
                self._send(404, _error(f"no route {self.path}", "not_found"))

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            body = json.loads(raw)
            server.record(
                {
                    "method": "POST",
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "raw": raw,
                    "body": body,
                }
            )
            if not self.path.endswith("/v1/chat/completions"):
                self._send(404, _error(f"no route {self.path}", "not_found"))
                return
            self._send(*server.answer(body))

        def _send(self, status: int, payload: dict) -> None:
            send_json(self, status, json.dumps(payload).encode())

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _text(content: str | list[dict]) -> str:
    """The text of a message's content (a string, or parts of which one is text)."""
    if isinstance(content, str):
        return content
    return next(part["text"] for part in content if part.get("type") == "text")


def _model() -> dict:
    return {"id": MODEL, "object": "model", "created": 0, "owned_by": "tests"}


def _completion(content: str) -> dict:
    return {
        "id": "chatcmpl-loopback",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
    }


def _error(message: str, kind: str) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}
