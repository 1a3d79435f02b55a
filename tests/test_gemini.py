"""The Gemini writer against a server of our own on 127.0.0.1 that answers in the Gemini
`generateContent` REST format: a good answer, an unfaithful one, malformed JSON, a schema
violation, 429 then success, a timeout, no key; what is sent (the offline draft and its
evidence, de-identified, no image unless opted in); the key never logged."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from medxpert.report import GeminiWriter, OfflineWriter, ReportContext
from medxpert.report.deid import deidentify
from tests.builders import report_hit, send_json

KEY = "test-key-not-a-secret-4711"
NOTE = "Seen by Dr. Jane Smith on 03/14/2024, MRN 12345678, jane@example.org. Fever, cough."
DRAFT = {
    "findings": [
        {"text": "Large left pleural effusion.", "cited_case_ids": ["S1", "ghost"]},
    ],
    "impression": [{"text": "Left pleural effusion.", "cited_case_ids": ["S1"]}],
}
UNFAITHFUL = {
    "findings": [
        *DRAFT["findings"],
        {"text": "Large right pneumothorax.", "cited_case_ids": ["S1"]},
        {"text": "Heart size is normal.", "cited_case_ids": []},
    ],
    "impression": DRAFT["impression"],
}


class FakeGemini(BaseHTTPRequestHandler):
    """Replies with the next scripted (status, body, delay); records each request."""

    script: ClassVar[list[tuple[int, object, float]]] = []
    requests: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        FakeGemini.requests.append(
            {"path": self.path, "headers": dict(self.headers), "body": body.decode()}
        )
        status, payload, delay = FakeGemini.script.pop(0)
        time.sleep(delay)
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        send_json(self, status, data)

    def log_message(self, *args) -> None:
        pass


def answer(text: str) -> dict:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"text": text}]},
                "finishReason": "STOP",
                "index": 0,
            }
        ],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 10,
            "totalTokenCount": 20,
        },
        "modelVersion": "gemini-test",
    }


ERROR_429 = {
    "error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}
}


@pytest.fixture
def server():
    FakeGemini.script, FakeGemini.requests = [], []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeGemini)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def context() -> ReportContext:
    hits = [
        report_hit(
            case_id,
            score,
            f"Large left pleural effusion. Call 617-555-0199 ({case_id}).",
            {"Pleural Effusion": 1},
            rank=rank,
        )
        for rank, (case_id, score) in enumerate((("a", 0.9), ("b", 0.85)), start=1)
    ]
    return ReportContext.from_hits(
        hits, note=NOTE, has_image=True, image_png=b"\x89PNG fake image bytes"
    )


def writer(base_url: str, **options) -> GeminiWriter:
    defaults = {"api_key": KEY, "base_url": base_url, "timeout_s": 5, "backoff_s": 0.01}
    return GeminiWriter("gemini-test", **{**defaults, **options})


def test_a_good_answer_becomes_the_report(server, context, caplog):
    FakeGemini.script = [(200, answer(json.dumps(DRAFT)), 0)]
    with caplog.at_level(logging.DEBUG):
        report = writer(server).write(context)
    assert report.writer == "gemini" and report.model == "gemini-test"
    assert report.findings_text == "Large left pleural effusion."
    assert report.impression_text == "Left pleural effusion."
    assert report.findings[0].cited_case_ids == ["a"]  # S1; "ghost" was never retrieved
    assert any("ghost" in w for w in report.warnings)
    offline = OfflineWriter().write(context)
    assert report.icd10 == offline.icd10 and report.triage == offline.triage
    assert report.differential == offline.differential  # computed, not generated
    assert [c.case_id for c in report.cited_cases] == ["a"]
    (request,) = FakeGemini.requests
    assert request["path"].endswith("/models/gemini-test:generateContent")
    assert request["headers"].get("x-goog-api-key") == KEY
    body = request["body"]
    assert "Jane" not in body and "12345678" not in body and "jane@example.org" not in body
    assert "555-0199" not in body and "[EMAIL]" in body and "Fever, cough." in body
    assert "inlineData" not in body and "inline_data" not in body, "no image without consent"
    assert "application/json" in body and "responseSchema" in body
    prompt = json.loads(json.loads(body)["contents"][0]["parts"][0]["text"])
    drafted = [s.text for s in offline.findings]
    assert [s["text"] for s in prompt["draft"]["findings"]] == [deidentify(t) for t in drafted]
    assert [c["case_id"] for c in prompt["retrieved_cases"]] == ["S1", "S2"]
    assert prompt["reporting_thresholds"]["Pleural Effusion"] == 0.5
    assert prompt["supported_findings"]["as a fact"] == ["Pleural Effusion"]
    assert KEY not in caplog.text and KEY not in repr(writer(server))


def test_an_unfaithful_answer_is_checked(server, context):
    FakeGemini.script = [(200, answer(json.dumps(UNFAITHFUL)), 0)]
    report = writer(server).write(context)
    assert report.writer == "gemini"
    assert report.findings_text == "Large left pleural effusion."
    removed = [w for w in report.warnings if w.startswith("Removed")]
    assert len(removed) == 2 and "pneumothorax" in removed[0] and "cites no" in removed[1]


def test_the_image_is_sent_only_with_consent(server, context):
    FakeGemini.script = [(200, answer(json.dumps(DRAFT)), 0)]
    writer(server, send_image=True).write(context)
    assert "inlineData" in FakeGemini.requests[0]["body"]


@pytest.mark.parametrize(
    ("text", "why"),
    [("{not json", "malformed JSON"), (json.dumps({"impression": "x"}), "schema violation")],
)
def test_bad_answers_fall_back_to_the_offline_report(server, context, text, why):
    FakeGemini.script = [(200, answer(text), 0)]
    report = writer(server).write(context)
    assert report.writer == "offline" and why in report.warnings[-1]
    assert report.findings == OfflineWriter().write(context).findings


def test_429_is_retried_with_backoff(server, context):
    FakeGemini.script = [
        (429, ERROR_429, 0),
        (429, ERROR_429, 0),
        (200, answer(json.dumps(DRAFT)), 0),
    ]
    report = writer(server, retries=3).write(context)
    assert report.writer == "gemini" and len(FakeGemini.requests) == 3
    FakeGemini.script = [(429, ERROR_429, 0)] * 2
    report = writer(server, retries=1).write(context)
    assert report.writer == "offline" and "HTTP 429" in report.warnings[-1]


def test_a_timeout_falls_back_quickly(server, context):
    FakeGemini.script = [(200, answer(json.dumps(DRAFT)), 3.0)]
    started = time.perf_counter()
    report = writer(server, timeout_s=0.5, retries=0).write(context)
    assert time.perf_counter() - started < 2.5
    assert report.writer == "offline" and "Gemini failed" in report.warnings[-1]


def test_no_key_means_no_request(server, context, monkeypatch):
    for variable in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(variable, raising=False)
    report = GeminiWriter("gemini-test", base_url=server).write(context)
    assert report.writer == "offline" and "no API key" in report.warnings[-1]
    assert FakeGemini.requests == []


def test_writer_registry():
    from medxpert.errors import ConfigError
    from medxpert.report import make_writer

    assert isinstance(make_writer("gemini", model="m", send_image=True), GeminiWriter)
    with pytest.raises(ConfigError, match="for the LLM writers"):
        make_writer("offline", send_image=True)
    with pytest.raises(ConfigError, match="gemini writer takes no option url"):
        make_writer("gemini", url="http://127.0.0.1:1/v1")
    with pytest.raises(ConfigError, match="available: offline, readout, gemini, openai-compatible"):
        make_writer("gpt")
