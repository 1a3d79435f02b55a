"""The local-LLM writer (`openai-compatible`) with the real `openai` client against an
OpenAI-protocol server of our own on 127.0.0.1 (tests/openai_loopback.py): a faithful answer,
an unfaithful one (checked sentence by sentence), every failure falling back to the offline
report, the response-format fallbacks, retries, what is sent (de-identified text, the offline
draft and its evidence, no image unless asked), the key never shown; configuration mistakes."""

from __future__ import annotations

import json
import logging
import socket
import time

import pytest

from medxpert.config import Settings
from medxpert.errors import ConfigError
from medxpert.labels import CHEXPERT_LABELS, default_labeler
from medxpert.pipeline import DiagnosisPipeline
from medxpert.report import (
    OfflineWriter,
    OpenAICompatibleWriter,
    ReportContext,
    StructuredReport,
    make_writer,
    writer_options,
)
from medxpert.report.openai_compatible import is_local_host, warn_if_remote
from tests.builders import report_hit
from tests.openai_loopback import DEIDENTIFIED, MODEL, UNCITED, UNSUPPORTED, LoopbackLLM

NOTE = "Seen by Dr. Jane Smith on 03/14/2024, MRN 12345678, jane@example.org. Fever, cough."
FALLBACK = "This is the offline writer's report."
STUDIES = (
    ("a", "Heart size is normal. Large left pleural effusion. No pneumothorax.", 1),
    ("b", "The heart is normal in size. Moderate left pleural effusion. No pneumothorax.", 1),
    ("c", "The lungs are clear. No pleural effusion. No pneumothorax.", 0),
)


@pytest.fixture(scope="module")
def context() -> ReportContext:
    hits = [
        report_hit(
            case_id,
            0.9 - rank / 100,
            findings,
            {"Pleural Effusion": effusion, "Pneumothorax": 0},
            rank=rank + 1,
            impression="Left pleural effusion." if effusion else "No acute disease.",
        )
        for rank, (case_id, findings, effusion) in enumerate(STUDIES)
    ]
    return ReportContext.from_hits(
        hits, note=NOTE, has_image=True, image_png=b"\x89PNG fake image bytes"
    )


@pytest.fixture(scope="module")
def offline(context) -> StructuredReport:
    return OfflineWriter().write(context)


def writer(url: str, **options) -> OpenAICompatibleWriter:
    defaults = {"model": MODEL, "timeout_s": 0.5, "retries": 0, "backoff_s": 0.01}
    return OpenAICompatibleWriter(url, **{**defaults, **options})


def assert_faithful(report: StructuredReport, context: ReportContext) -> None:
    """Every sentence cites retrieved studies, holds no XXXX, and states only findings the
    evidence supports and one of its cited studies is positive for."""
    retrieved = {hit.case.case_id for hit in context.hits}
    texts = [s.text for s in report.statements]
    for statement, vector in zip(
        report.statements, default_labeler().label_many(texts), strict=True
    ):
        cited = set(statement.cited_case_ids)
        assert cited and cited <= retrieved, f"uncited: {statement}"
        assert "XXXX" not in statement.text.upper(), statement
        for label, value in zip(CHEXPERT_LABELS, vector, strict=True):
            if value == 1 and label != "No Finding":
                assert context.stated(label), f"unsupported {label}: {statement}"
                assert cited & set(context.vote.evidence[label]), f"{label} not cited: {statement}"
    body = report.to_markdown().split("### Findings")[1]  # the warnings, first, may quote XXXX
    assert "XXXX" not in body.split("### Cited studies")[0]


def assert_fallback(report: StructuredReport, offline: StructuredReport, why: str) -> None:
    assert report.writer == "offline" and report.model is None
    assert report.findings == offline.findings and report.impression == offline.impression
    assert report.warnings[-1].endswith(FALLBACK) and why in report.warnings[-1], report.warnings


def chat_requests(llm: LoopbackLLM) -> list[dict]:
    return [r for r in llm.requests if r["path"].endswith("/chat/completions")]


def test_a_faithful_answer_becomes_the_report(context, offline, monkeypatch):
    monkeypatch.delenv("MEDXPERT_LLM_API_KEY", raising=False)
    with LoopbackLLM("faithful") as llm:
        report = writer(llm.url).write(context)
    assert report.writer == "openai-compatible" and report.model == MODEL
    assert report.findings == offline.findings and report.impression == offline.impression
    assert report.warnings == offline.warnings  # nothing removed
    assert report.icd10 == offline.icd10 and report.differential == offline.differential
    assert_faithful(report, context)
    (request,) = llm.requests  # the model was given: no GET /v1/models
    body = request["body"]
    assert request["path"] == "/v1/chat/completions" and body["model"] == MODEL
    assert body["temperature"] == 0.0
    assert request["headers"]["authorization"] == "Bearer unused"
    schema = body["response_format"]
    assert schema["type"] == "json_schema" and schema["json_schema"]["strict"] is True
    case_id = schema["json_schema"]["schema"]["properties"]["findings"]["items"]
    assert case_id["properties"]["cited_case_ids"]["items"]["enum"] == ["S1", "S2", "S3"]
    raw = request["raw"]
    for identifier in ("Jane", "Smith", "03/14/2024", "12345678", "jane@example.org"):
        assert identifier not in raw, identifier
    assert "Fever, cough." in raw and "image_url" not in raw, "no image without consent"
    system, user = body["messages"]
    assert system["role"] == "system" and "JSON" in system["content"]
    prompt = json.loads(user["content"])
    names = {"a": "S1", "b": "S2", "c": "S3"}  # the studies' pseudonyms, in rank order
    assert prompt["draft"]["findings"] == [
        {"text": s.text, "cited_case_ids": [names[c] for c in s.cited_case_ids]}
        for s in offline.findings
    ]
    assert prompt["reporting_thresholds"]["Pleural Effusion"] == 0.5
    assert prompt["supported_findings"]["as a fact"] == ["Pleural Effusion"]
    assert prompt["positive_case_ids"]["Pleural Effusion"] == ["S1", "S2"]
    assert [c["case_id"] for c in prompt["retrieved_cases"]] == ["S1", "S2", "S3"]
    assert all("study_id" not in c for c in prompt["retrieved_cases"])


REAL_IDS = ("nih_cxr14:00028016_000", "iu_xray:CXR1234_IM-0123-1001")


def test_source_identifiers_never_leave_the_machine():
    """The server sees pseudonyms only; the report cites the real case ids."""
    hits = [
        report_hit(
            case_id,
            0.9 - rank / 100,
            f"Large left pleural effusion, as on {case_id.split(':')[1]}. No pneumothorax.",
            {"Pleural Effusion": 1, "Pneumothorax": 0},
            rank=rank + 1,
            impression="Left pleural effusion.",
        )
        for rank, case_id in enumerate(REAL_IDS)
    ]
    context = ReportContext.from_hits(hits, note=f"Compare {REAL_IDS[1]}.", has_image=False)
    with LoopbackLLM("faithful") as llm:
        report = writer(llm.url).write(context)
    raw = llm.requests[0]["raw"]
    for identifier in (*REAL_IDS, "00028016", "CXR1234", "IM-0123-1001"):
        assert identifier not in raw, identifier
    assert report.writer == "openai-compatible" and report.statements
    cited = {c for s in report.statements for c in s.cited_case_ids}
    assert cited and cited <= set(REAL_IDS)
    assert {c.case_id for c in report.cited_cases} == cited


def test_unfaithful_sentences_are_removed_with_a_warning_each(context, offline):
    with LoopbackLLM("unfaithful") as llm:
        report = writer(llm.url).write(context)
    assert report.writer == "openai-compatible"
    assert_faithful(report, context)
    texts = [s.text for s in report.statements]
    for invented in (UNSUPPORTED, UNCITED, DEIDENTIFIED):
        assert invented not in texts
    assert report.findings == offline.findings and report.impression == offline.impression
    removed = report.warnings[len(offline.warnings) :]
    assert len(removed) == 4, removed
    assert "it states pneumothorax, which the evidence does not support" in removed[0]
    assert "it cites no retrieved study" in removed[1]
    assert "de-identification token" in removed[2]
    assert "from the impression" in removed[3]


def test_nothing_faithful_means_the_offline_report(context, offline):
    with LoopbackLLM("fabricated") as llm:
        report = writer(llm.url).write(context)
    assert_fallback(report, offline, "the faithfulness check removed it all")
    assert "wrote nothing in its findings and impression" in report.warnings[-1]
    assert sum(w.startswith("Removed") for w in report.warnings) == 4
    assert_faithful(report, context)


@pytest.mark.parametrize(
    ("mode", "why", "attempts"),
    [
        ("malformed", "The local LLM failed: malformed JSON in the answer", 1),
        ("error500", "The local LLM failed: HTTP 500 (the model crashed)", 3),
        ("timeout", "within 0.5 s", 3),
    ],
)
def test_failures_fall_back_to_the_offline_report(context, offline, mode, why, attempts):
    with LoopbackLLM(mode, delay_s=1.5) as llm:
        started = time.perf_counter()
        report = writer(llm.url, retries=2).write(context)
        elapsed = time.perf_counter() - started
    assert_fallback(report, offline, why)
    assert len(chat_requests(llm)) == attempts  # 5xx and timeouts retried, bad JSON not
    assert elapsed < 0.5 * attempts + 1.5


def test_no_server_falls_back(context, offline):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report = writer(f"http://127.0.0.1:{port}/v1", retries=1).write(context)
    assert_fallback(report, offline, f"cannot connect to http://127.0.0.1:{port}/v1")


def test_other_4xx_are_not_retried(context, offline):
    with LoopbackLLM("faithful") as llm:
        report = writer(llm.url.removesuffix("/v1"), retries=3).write(context)
    assert_fallback(report, offline, "HTTP 404 (no route /chat/completions)")
    assert len(llm.requests) == 1


def test_rate_limits_are_retried(context):
    with LoopbackLLM("faithful", busy=2) as llm:
        report = writer(llm.url, retries=2).write(context)
    assert report.writer == "openai-compatible" and len(chat_requests(llm)) == 3


def test_a_server_without_json_schema_gets_json_object(context, offline):
    with LoopbackLLM("no-json-schema") as llm:
        local = writer(llm.url)
        report = local.write(context)
        assert report.writer == "openai-compatible" and report.findings == offline.findings
        local.write(context)  # remembered: no second json_schema request
    kinds = [r["body"]["response_format"]["type"] for r in chat_requests(llm)]
    assert kinds == ["json_schema", "json_object", "json_object"]


def test_a_server_without_response_formats_gets_plain_text(context, offline):
    with LoopbackLLM("text-only") as llm:
        report = writer(llm.url).write(context)
    assert report.writer == "openai-compatible" and report.findings == offline.findings
    kinds = [(r["body"].get("response_format") or {}).get("type") for r in chat_requests(llm)]
    assert kinds == ["json_schema", "json_object", None]


def test_the_image_is_sent_only_when_asked(context):
    with LoopbackLLM("faithful") as llm:
        writer(llm.url, send_image=True).write(context)
    text, image = llm.requests[0]["body"]["messages"][1]["content"]
    assert text["type"] == "text" and json.loads(text["text"])["draft"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")


def test_without_a_model_the_servers_first_is_used(context):
    with LoopbackLLM("faithful") as llm:
        local = OpenAICompatibleWriter(llm.url, timeout_s=0.5, retries=0)
        report = local.write(context)
    assert [r["path"] for r in llm.requests] == ["/v1/models", "/v1/chat/completions"]
    assert report.model == MODEL == local.model == llm.requests[1]["body"]["model"]


def test_the_key_is_sent_but_never_shown(context, monkeypatch, caplog):
    secret = "test-llm-key-0123456789"
    monkeypatch.setenv("MEDXPERT_LLM_API_KEY", secret)
    with LoopbackLLM("error500") as llm, caplog.at_level(logging.DEBUG):
        local = writer(llm.url, retries=1)
        report = local.write(context)
    assert {r["headers"]["authorization"] for r in llm.requests} == {f"Bearer {secret}"}
    assert secret not in caplog.text and secret not in repr(local)
    assert secret not in report.model_dump_json()


def test_configuration_mistakes_say_what_to_set(monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match=r"--llm-url .*MEDXPERT_LLM_URL"):
        make_writer("openai-compatible", model="llama3.1")
    # the pipeline makes its writer before it loads anything (no model or library here)
    with pytest.raises(ConfigError, match=r"--llm-url"):
        DiagnosisPipeline.from_artifacts(
            tmp_path / "no-model", tmp_path / "no-library", writer="openai-compatible"
        )
    with pytest.raises(ConfigError, match="not an http"):
        make_writer("openai-compatible", url="127.0.0.1:11434")
    with pytest.raises(ConfigError, match="takes no option base_url"):
        make_writer("openai-compatible", url="http://127.0.0.1:1/v1", base_url="x")
    with pytest.raises(ConfigError, match="MEDXPERT_WRITER"):
        Settings.from_env({"MEDXPERT_WRITER": "ollama"})
    settings = Settings.from_env(
        {"MEDXPERT_LLM_URL": "http://127.0.0.1:11434/v1", "MEDXPERT_LLM_MODEL": "llama3.1"}
    )
    assert writer_options("openai-compatible", settings) == {
        "url": "http://127.0.0.1:11434/v1",
        "model": "llama3.1",
    }
    assert writer_options("openai-compatible", settings, model="qwen3", send_image=False) == {
        "url": "http://127.0.0.1:11434/v1",
        "model": "qwen3",
    }
    assert writer_options("gemini", settings) == {"model": "llama3.1"}
    assert writer_options("offline", settings) == {}
    local = make_writer("openai-compatible", **writer_options("openai-compatible", settings))
    assert isinstance(local, OpenAICompatibleWriter) and local.model == "llama3.1"


def test_a_server_beyond_this_network_is_warned_about_once(caplog):
    assert is_local_host("localhost") and is_local_host("127.0.0.1") and is_local_host("[::1]")
    assert is_local_host("10.1.2.3") and is_local_host("192.168.0.7")
    assert not is_local_host("8.8.8.8") and not is_local_host("no-such-host.invalid")
    warn_if_remote.cache_clear()
    with caplog.at_level(logging.WARNING, logger="medxpert.report.openai_compatible"):
        OpenAICompatibleWriter("http://10.0.0.5:8000/v1")
        assert not caplog.records
        OpenAICompatibleWriter("http://8.8.8.8:8000/v1")
        OpenAICompatibleWriter("http://8.8.8.8:8001/v1", "other")
    (record,) = caplog.records
    assert "8.8.8.8" in record.getMessage() and "leave this network" in record.getMessage()


def test_the_settings_know_every_writer_the_registry_builds():
    from medxpert import config
    from medxpert.report.registry import LLM_WRITERS, OFFLINE_WRITERS

    assert set(config.WRITERS) == set(OFFLINE_WRITERS) | set(LLM_WRITERS)
    for name in OFFLINE_WRITERS:
        assert hasattr(make_writer(name), "write")
    with pytest.raises(ConfigError, match="available: " + ", ".join(config.WRITERS)):
        make_writer("nonesuch")
