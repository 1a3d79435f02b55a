"""The read-out writer, the label captioner, and the
DiagnosisPipeline end to end on a tiny model, with the bad inputs a user can give it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from markdown_it import MarkdownIt

from medxpert.caption import LabelCaptioner
from medxpert.caption.labels import describe
from medxpert.cli.diagnose import markdown_report
from medxpert.errors import IndexNotFoundError, InvalidImageError, QueryError
from medxpert.labels import LABEL_INDEX
from medxpert.pipeline import DiagnosisPipeline
from medxpert.report import OfflineWriter, ReadoutWriter, ReportContext, StructuredReport
from medxpert.report.schema import Statement
from medxpert.retrieval import Hit
from tests.builders import (
    gradient,
    png_bytes,
    report_hit,
    tiny_pipeline,
)

EFFUSION = "Heart size is normal. Large left pleural effusion. No pneumothorax."
NORMAL = "The lungs are clear. No pleural effusion. No pneumothorax."


def context_of(hits: list[Hit]) -> ReportContext:
    return ReportContext.from_hits(hits)


def test_readout_report_states_only_supported_findings_and_cites_them():
    hits = [
        report_hit("a", 0.90, EFFUSION, {"Pleural Effusion": 1, "Pneumothorax": 0}, rank=1),
        report_hit("b", 0.89, EFFUSION, {"Pleural Effusion": 1}, rank=2),
        report_hit("c", 0.80, NORMAL, {"No Finding": 1, "Pleural Effusion": 0}, rank=3),
    ]
    report = ReadoutWriter().write(context_of(hits))
    assert len(report.findings) == 1
    finding = report.findings[0]
    assert finding.text.startswith("Pleural Effusion: probability")
    assert '"Large left pleural effusion."' in finding.text
    assert finding.cited_case_ids == ["a", "b"]
    assert "pleural effusion" in report.impression_text.lower()
    assert [c.code for c in report.icd10] == ["J90"]
    assert report.triage.level == "priority"
    assert {c.case_id for c in report.cited_cases} == {"a", "b"}
    assert "Pneumothorax" not in report.findings_text
    again = StructuredReport.model_validate_json(report.model_dump_json())
    assert again == report and "decision support" in report.disclaimer.lower()
    markdown = report.to_markdown()
    assert "**Triage: PRIORITY**" in markdown and "[a, b]" in markdown


FORGED = "x\n\n### Impression\n\nFORGED <script>alert(1)</script> [link](javascript:x) *em*"


def test_markdown_report_escapes_every_text_in_it():
    """User text (the query, as the title) and report sentences (prior reports, notes, LLM
    output) render as text: no forged section, no HTML, no link, no emphasis."""
    hits = [report_hit("nih_cxr14:a_1", 0.9, EFFUSION, {"Pleural Effusion": 1}, rank=1)]
    report = ReadoutWriter().write(context_of(hits))
    forged = report.model_copy(
        update={
            "findings": [Statement(text=FORGED, cited_case_ids=["nih_cxr14:a_1"])],
            "caption": FORGED,
            "warnings": ["1. " + FORGED],
            "cited_cases": [c.model_copy(update={"excerpt": FORGED}) for c in report.cited_cases],
        }
    )
    markdown = markdown_report("# MedXpert report:", FORGED, forged)
    tokens = MarkdownIt("commonmark").parse(markdown)
    headings = [tokens[i + 1].content for i, t in enumerate(tokens) if t.type == "heading_open"]
    assert headings[0].startswith("MedXpert report: x ### Impression FORGED")
    assert headings[1:] == [
        "Warnings",
        "Findings",
        "Impression",
        "Differential",
        "ICD-10 suggestions",
        "Cited studies",
    ]
    html = MarkdownIt("commonmark").render(markdown)
    assert "<script" not in html and "<a " not in html and "<em>em" not in html
    assert html.count("FORGED &lt;script&gt;alert(1)&lt;/script&gt; [link](javascript:x) *em*") == 5
    assert "<ol>" not in html and "nih_cxr14:a_1" in markdown  # an id stays readable


def test_readout_report_of_normal_and_of_disagreeing_cases():
    normal = [
        report_hit(f"n{i}", 0.9 - i / 100, NORMAL, {"No Finding": 1}, rank=i + 1) for i in range(3)
    ]
    report = ReadoutWriter().write(context_of(normal))
    assert report.findings[0].text.startswith("No acute cardiopulmonary abnormality")
    assert report.findings[0].cited_case_ids == ["n0", "n1", "n2"]
    assert report.triage.level == "routine" and report.icd10 == []
    mixed = [
        report_hit("x", 0.9, EFFUSION, {"Pleural Effusion": 1}, rank=1),
        report_hit("y", 0.9, "Cardiomegaly.", {"Cardiomegaly": 1}, rank=2),
        report_hit("z", 0.9, "Small pneumothorax.", {"Pneumothorax": 1}, rank=3),
    ]
    report = ReadoutWriter().write(context_of(mixed))
    assert report.impression_text.startswith("Indeterminate")
    assert report.findings[0].cited_case_ids == []
    assert report.triage.level == "priority"  # pneumothorax 0.33 ≥ 0.25


def test_describe_caption():
    text = describe(
        {"Pleural Effusion": 0.71, "Cardiomegaly": 0.64, "Pneumothorax": 0.12, "Edema": 0.2}
    )
    assert text == (
        "Likely pleural effusion (0.71) and cardiomegaly (0.64). "
        "No pneumothorax (0.12) or pulmonary oedema (0.20)."
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipeline"))


def test_label_captioner_gives_a_probability_per_prompt(pipeline):
    caption = pipeline.captioner.caption(png_bytes(gradient()))
    assert caption.captioner == "labels" and set(caption.probabilities) == set(
        pipeline.captioner.labels
    )
    assert all(0 <= p <= 1 for p in caption.probabilities.values())
    assert caption.text.startswith(("Likely", "No finding"))


def test_label_captioner_calibration(pipeline):
    captioner = LabelCaptioner(pipeline.engine.encoder)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    column = captioner.labels.index("Cardiomegaly")
    margins = captioner.margins(vectors)[:, column]
    labels = np.full((200, 14), np.nan, dtype=np.float32)
    labels[:, LABEL_INDEX["Cardiomegaly"]] = margins > np.median(margins)
    labels[:, LABEL_INDEX["Edema"]] = 0
    labels[:3, LABEL_INDEX["Edema"]] = 1  # 3 positives: too few to calibrate
    assert captioner.calibrate(vectors, labels) == {"Cardiomegaly": 200}
    a, _ = captioner.calibration["Cardiomegaly"]
    assert a > 0
    probabilities = [captioner.probabilities(vector=v) for v in vectors]
    assert all(set(p) == {"Cardiomegaly"} for p in probabilities)
    ranked = np.argsort([p["Cardiomegaly"] for p in probabilities])
    np.testing.assert_array_equal(np.sort(margins)[[0, -1]], margins[ranked[[0, -1]]])


def test_pipeline_image_note_and_text(pipeline):
    image = png_bytes(gradient(low=20, high=160))
    plain = pipeline.diagnose(image=image)
    assert len(plain.hits) == 5 and plain.caption is not None
    stages = {"guard", "encode", "search", "caption", "read-outs", "write", "total"}
    assert set(plain.timings_ms) == stages
    assert plain.report.timings_ms == plain.timings_ms
    assert plain.report.caption == plain.caption.text
    cited = {c for s in plain.report.findings for c in s.cited_case_ids}
    assert cited <= {h.case.case_id for h in plain.hits}
    blank_note = pipeline.diagnose(image=image, note="   ")
    assert [h.case.case_id for h in blank_note.hits] == [h.case.case_id for h in plain.hits]
    text = pipeline.diagnose(text="level two pleural effusion.", target="reports", k=3)
    assert text.caption is None and {h.modality for h in text.hits} == {"report"}
    assert json.loads(json.dumps(text.to_dict()))["hits"][0]["rank"] == 1


def test_pipeline_bad_inputs(pipeline, tmp_path):
    with pytest.raises(InvalidImageError):
        pipeline.diagnose(image=b"GIF89a but not really")
    with pytest.raises(QueryError, match="limit"):
        pipeline.diagnose(image=png_bytes(gradient()), note="cough " * 200_000)
    with pytest.raises(QueryError, match="empty"):
        pipeline.diagnose(text="")
    with pytest.raises(QueryError, match="nothing to search for"):
        pipeline.diagnose()
    with pytest.raises(IndexNotFoundError, match="medxpert index build"):
        DiagnosisPipeline.from_artifacts(tmp_path / "no-model", tmp_path / "no-index")


def test_note_weight_per_query(pipeline):
    image, note = png_bytes(gradient(low=30, high=150)), "level two pleural effusion."
    alone = pipeline.diagnose(image=image, target="reports", k=3)
    whole = pipeline.diagnose(image=image, note=note, target="reports", k=3, note_weight=1.0)
    text = pipeline.diagnose(text=note, target="reports", k=3)
    assert [h.case.case_id for h in whole.hits] == [h.case.case_id for h in text.hits]
    assert [h.score for h in whole.hits] == pytest.approx([h.score for h in text.hits], abs=1e-5)
    zero = pipeline.diagnose(image=image, note=note, target="reports", k=3, note_weight=0.0)
    assert [h.score for h in zero.hits] == pytest.approx([h.score for h in alone.hits], abs=1e-5)


def test_a_study_query_is_diagnosed_as_one_study(pipeline):
    frontal, lateral = png_bytes(gradient(low=20, high=160)), png_bytes(gradient(low=90, high=250))
    study = pipeline.diagnose(images=[frontal, lateral], note="cough", k=4)
    expected = pipeline.engine.search(images=[frontal, lateral], note="cough", k=4, target="both")
    assert [h.study_id for h in study.hits] == [h.study_id for h in expected]
    assert [h.score for h in study.hits] == pytest.approx([h.score for h in expected])
    assert study.caption == pipeline.captioner.caption(frontal)  # the first image's caption
    single = pipeline.diagnose(image=frontal, k=4)
    assert single.caption == study.caption
    with pytest.raises(QueryError, match="not both"):
        pipeline.diagnose(image=frontal, images=[lateral])
    with pytest.raises(QueryError, match="no images"):
        pipeline.diagnose(images=[])


def test_hits_and_citations_name_studies_with_their_evidence(pipeline):
    diagnosis = pipeline.diagnose(text="level two pleural effusion.", k=3, target="both")
    saved = json.loads(json.dumps(diagnosis.to_dict()))
    for record, hit in zip(saved["hits"], diagnosis.hits, strict=True):
        assert record["study_id"] == hit.study_id and record["case_id"] == hit.case.case_id
        assert [i["case_id"] for i in record["images"]] == [c.case_id for c in hit.images]
        assert [(e["modality"], e["case_id"], e["rank"]) for e in record["evidence"]] == [
            (e.modality, e.case_id, e.rank) for e in hit.evidence
        ]
    hits = [
        report_hit("a", 0.90, EFFUSION, {"Pleural Effusion": 1}, rank=1),
        report_hit("b", 0.89, EFFUSION, {"Pleural Effusion": 1}, rank=2),
    ]
    report = OfflineWriter().write(context_of(hits))
    cited = report.cited_cases[0]
    assert (cited.case_id, cited.study_id, cited.matched) == ("a", "a", ["report 0.900 (#1)"])
    assert "- study a (a; matched: report 0.900 (#1))" in report.to_markdown()


@pytest.mark.parametrize(("burned_in", "sent"), [("YES", False), ("NO", True)])
def test_an_image_with_burned_in_text_is_never_sent(pipeline, burned_in, sent):
    """With --send-image the LLM gets the X-ray's pixels, unless its DICOM header says text
    is burned into them: then the report is written from text alone, and says so."""
    import io

    import pydicom

    from medxpert.report import OpenAICompatibleWriter
    from tests.builders import dicom_bytes
    from tests.openai_loopback import MODEL, LoopbackLLM

    dataset = pydicom.dcmread(io.BytesIO(dicom_bytes(gradient(dtype=np.uint16) * 16)))
    dataset.BurnedInAnnotation = burned_in
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    with LoopbackLLM("faithful") as llm:
        writer = OpenAICompatibleWriter(llm.url, MODEL, retries=0, send_image=True)
        sending = DiagnosisPipeline(pipeline.engine, pipeline.captioner, writer, k=5)
        report = sending.diagnose(image=buffer.getvalue()).report
    parts = [
        part
        for message in llm.requests[0]["body"]["messages"]
        if isinstance(message["content"], list)
        for part in message["content"]
    ]
    assert any(part.get("type") == "image_url" for part in parts) is sent
    assert any("not sent to the LLM" in w for w in report.warnings) is not sent
