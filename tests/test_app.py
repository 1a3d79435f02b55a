"""The Streamlit app (medxpert/app/app.py) under `streamlit.testing`: a text query, a
test-split sample, uploads (corrupt, oversized, DICOM), the sidebar's choices, and no library
built; and `medxpert app` serving it. The app runs
on a tiny workspace (tests.builders.tiny_workspace); its output is compared with the pipeline's."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from medxpert.app import PAGE
from medxpert.config import Settings
from medxpert.data import load_cases
from medxpert.eval.context import history_note
from medxpert.pipeline import DiagnosisPipeline
from medxpert.report.gemini import KEY_VARIABLES
from tests.builders import dicom_bytes, gradient, png_bytes, tiny_encoder

TIMEOUT_S = 120  # a script run that loads the pipeline; later runs take about a second
UPLOAD, SAMPLE, TEXT = "Upload an X-ray", "Sample X-ray (test split)", "Text query"
TRIAGE_COLOURS = {"urgent": "red", "priority": "orange", "routine": "green"}
UNMATCHED_MODEL = "a-untuned"  # sorts first, but the library was not built with it


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_workspace) -> dict[str, str]:
    """A tiny model and its library, plus a second model the library was not built with."""
    root = tmp_path_factory.mktemp("app_workspace")
    environment = make_workspace(root)
    models = Path(environment["MEDXPERT_MODELS_DIR"])
    tiny_encoder(root / "other", seed=1).save(models / UNMATCHED_MODEL)
    return environment


@pytest.fixture
def env(workspace, monkeypatch) -> Settings:
    for name, value in workspace.items():
        monkeypatch.setenv(name, value)
    for name in (*KEY_VARIABLES, "MEDXPERT_LLM_URL", "MEDXPERT_LLM_MODEL"):
        monkeypatch.delenv(name, raising=False)
    return Settings.from_env()


@pytest.fixture(scope="module")
def reference(workspace) -> DiagnosisPipeline:
    """The pipeline the app should load by default, built here to compare with the page."""
    settings = Settings.from_env(workspace)
    return DiagnosisPipeline.from_artifacts(
        settings.models_dir / "medxpert-default", settings.indexes_dir / "medxpert-default"
    )


def run_app() -> AppTest:
    return AppTest.from_file(str(PAGE), default_timeout=TIMEOUT_S).run()


def diagnose(at: AppTest) -> AppTest:
    return at.button(key="diagnose").click().run()


def shown(at: AppTest) -> str:
    """The text of every markdown, caption and heading, with markdown escapes removed."""
    values = [e.value for kind in ("markdown", "caption", "subheader") for e in at.get(kind)]
    return re.sub(r"\\(.)", r"\1", "\n".join(values))


def gallery_ids(at: AppTest) -> list[str]:
    """The study ids of the gallery's cards, in order."""
    captions = [re.sub(r"\\(.)", r"\1", c.value) for c in at.caption]
    return [c.split(" · ")[0] for c in captions if " match · " in c]


def assert_shows(at: AppTest, diagnosis) -> None:
    """The page presents this diagnosis: report, triage, gallery, timings, downloads."""
    assert not at.exception and not at.error, [e.value for e in at.error]
    text = shown(at)
    report = diagnosis.report
    assert all(statement.text in text for statement in report.statements)
    colour = TRIAGE_COLOURS[report.triage.level]
    assert re.search(rf"Triage :{colour}-badge\[[^\]]*{report.triage.level.upper()}\]", text)
    assert report.triage.reason in text
    assert gallery_ids(at) == [hit.study_id for hit in diagnosis.hits]
    assert all(f"Matched: {hit.describe_evidence()}" in text for hit in diagnosis.hits)
    assert [m.label for m in at.metric] == list(diagnosis.timings_ms)
    assert [b.label for b in at.get("download_button")] == [
        "Report as JSON",
        "Report as Markdown",
        "Report as FHIR",
        "Report as DICOM SR",
    ]


def test_a_text_query_shows_the_pipelines_report_triage_and_gallery(env, reference):
    at = run_app()
    assert not at.exception
    at.radio(key="mode").set_value(TEXT).run()
    at.text_area(key="text").input("cardiomegaly with pleural effusion")
    diagnose(at)
    expected = reference.diagnose(text="cardiomegaly with pleural effusion", k=10, target="both")
    assert_shows(at, expected)
    assert "Result for the text query “cardiomegaly with pleural effusion”" in shown(at)
    assert not any(caption for image in at.image for caption in image.captions)  # no query image
    assert "Caption" not in shown(at)


def test_a_test_split_sample_is_diagnosed_with_its_history_as_the_note(env, reference):
    with_notes = [
        case
        for case in load_cases("covid_cxr", "test", settings=env)
        if case.has_image and history_note(case.text())
    ]
    assert with_notes, "the mini covid pack should have a test case with a history note"
    case = with_notes[0]
    at = run_app()
    at.radio(key="mode").set_value(SAMPLE).run()
    at.selectbox(key="sample").select(case.case_id).run()
    note = at.text_area(key=f"note:{case.case_id}").value
    assert note == history_note(case.text())
    diagnose(at)
    expected = reference.diagnose(image=case.image_path, note=note, k=10, target="both")
    assert_shows(at, expected)
    text = shown(at)
    assert f"Result for the test X-ray {case.case_id}" in text
    assert f"**Caption** (labels): {expected.caption.text}" in text
    assert f"**Clinical note:** {note}" in text
    assert at.image[0].captions == [f"test X-ray {case.case_id}"]


def test_heatmaps_of_a_finding_and_of_a_similar_study_are_shown_on_request(env, reference):
    """The heatmap toggles show the explainer's overlays: beside the query, for the chosen
    finding; on a gallery card, the query and the study's X-ray."""
    from medxpert.explain import Explainer

    case = next(c for c in load_cases("covid_cxr", "test", settings=env) if c.has_image)
    at = run_app()
    at.radio(key="mode").set_value(SAMPLE).run()
    at.selectbox(key="sample").select(case.case_id).run()
    diagnose(at)
    before = len(at.image)
    assert before and not at.toggle(key="heatmap_query").value
    at.toggle(key="heatmap_query").set_value(True).run()
    findings = Explainer(reference.engine.encoder, reference.captioner).findings
    assert sorted(at.selectbox(key="heatmap_finding").options) == sorted(findings)
    finding = at.selectbox(key="heatmap_finding").value
    captions = [caption for image in at.image for caption in image.captions]
    assert any(c.startswith(f"What raises the {finding} score") for c in captions), captions
    hit = next(hit for hit in reference.diagnose(image=case.image_path, k=10).hits if hit.images)
    at.toggle(key=f"why_similar_{hit.rank}").set_value(True).run()
    assert not at.exception and not at.error
    captions = [caption for image in at.image for caption in image.captions]
    assert "query" in captions and f"#{hit.rank}" in captions


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("broken.png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 64, "broken.png is a corrupt PNG"),
        ("scan.dcm", dicom_bytes(gradient(dtype=np.uint16))[:-600], "scan.dcm is a corrupt"),
        ("notes.pdf", b"%PDF-1.4\n" + b"x" * 200, "notes.pdf is not a chest X-ray image"),
    ],
)
def test_a_bad_upload_shows_an_error_and_the_app_keeps_working(env, reference, name, data, message):
    at = run_app()
    at.radio(key="mode").set_value(UPLOAD).run()
    at.file_uploader(key="upload").set_value((name, data, "application/octet-stream"))
    diagnose(at)
    assert not at.exception
    assert len(at.error) == 1 and message in at.error[0].value
    assert "Result for" not in shown(at)
    dicom = dicom_bytes(gradient(160, 192, 0, 4000, np.uint16))
    at.file_uploader(key="upload").set_value(("chest.dcm", dicom, "application/dicom"))
    diagnose(at)
    assert_shows(at, reference.diagnose(image=dicom, k=10, target="both"))
    assert "Result for the uploaded X-ray chest.dcm" in shown(at)
    assert at.image[0].captions == ["uploaded X-ray chest.dcm"]  # the decoded DICOM


def test_several_uploads_are_diagnosed_as_one_study(env, reference):
    library = reference.engine.library
    study = next(
        library.study(case.study_id)
        for case in library.cases
        if case.view == "lateral" and len(library.study(case.study_id).images) == 2
    )
    files = [(Path(c.image_path).name, Path(c.image_path).read_bytes()) for c in study.images]
    at = run_app()
    at.radio(key="mode").set_value(UPLOAD).run()
    (frontal, frontal_data), (lateral, lateral_data) = files
    at.file_uploader(key="upload").set_value((frontal, frontal_data, "image/jpeg"))
    at.file_uploader(key="more_views").set_value([(lateral, lateral_data, "image/jpeg")])
    diagnose(at)
    expected = reference.diagnose(images=[data for _, data in files], k=10, target="both")
    assert_shows(at, expected)
    names = [name for name, _ in files]
    assert f"Result for the uploaded study {' + '.join(names)}" in shown(at)
    assert at.image[0].captions == names
    assert f"**Caption** (labels): {expected.caption.text}" in shown(at)


def test_an_upload_over_the_size_limit_is_refused_before_decoding(env, monkeypatch):
    monkeypatch.setenv("MEDXPERT_MAX_IMAGE_MB", "1")
    big = png_bytes(np.random.default_rng(0).integers(0, 255, (1100, 1100), dtype=np.uint8))
    assert len(big) > 1024 * 1024
    at = run_app()
    at.radio(key="mode").set_value(UPLOAD).run()
    at.file_uploader(key="upload").set_value(("big.png", big, "image/png"))
    diagnose(at)
    assert not at.exception
    assert "big.png is 1.2 MB, over the 1 MB limit" in at.error[0].value
    assert "MEDXPERT_MAX_IMAGE_MB" in at.error[0].value


def test_no_upload_asks_for_one(env):
    at = run_app()
    at.radio(key="mode").set_value(UPLOAD).run()
    diagnose(at)
    assert not at.exception and "no X-ray uploaded" in at.error[0].value


def test_the_sidebar_shows_the_librarys_model_and_unavailable_backends(env, monkeypatch):
    at = run_app()
    notes = " ".join(c.value for c in at.sidebar.caption)
    # the library loads with the model its manifest names, not the one that sorts first
    assert "Model: `medxpert-default`" in notes and UNMATCHED_MODEL not in notes
    writer, captioner = at.radio(key="writer"), at.radio(key="captioner")
    assert writer.disabled and writer.value == "offline"
    assert captioner.disabled and captioner.value == "labels"
    assert "GEMINI_API_KEY or GOOGLE_API_KEY" in notes
    assert "no local weights" in notes and "medxpert train-captioner" in notes


def test_with_a_key_gemini_can_be_chosen_and_the_key_is_never_shown(env, monkeypatch):
    secret = "test-key-0123456789"
    monkeypatch.setenv("GEMINI_API_KEY", secret)
    at = run_app()
    assert not at.radio(key="writer").disabled
    at.radio(key="writer").set_value("gemini").run()
    assert not at.exception
    assert at.checkbox(key="send_image").value is False  # the image is sent only on request
    assert at.text_input(key="llm_model").value == "gemini-2.5-flash"
    rendered = [
        str(getattr(node, "proto", "")) for block in (at.main, at.sidebar) for node in block
    ]
    assert rendered and not any(secret in proto for proto in rendered)


def test_with_a_server_url_a_local_llm_can_be_chosen(env, monkeypatch):
    monkeypatch.setenv("MEDXPERT_LLM_URL", "http://127.0.0.1:11434/v1")
    at = run_app()
    writer = at.radio(key="writer")
    assert not writer.disabled and writer.options == [
        "Offline (nothing leaves this machine)",
        "Local LLM (OpenAI-compatible server)",
    ]
    writer.set_value("openai-compatible").run()
    assert not at.exception
    assert at.text_input(key="llm_url").value == "http://127.0.0.1:11434/v1"
    assert at.text_input(key="local_llm_model").value == ""
    assert at.checkbox(key="send_image").value is False


def test_without_a_library_the_app_says_how_to_build_one(env, monkeypatch, tmp_path):
    monkeypatch.setenv("MEDXPERT_INDEXES_DIR", str(tmp_path / "indexes"))
    at = run_app()
    assert not at.exception and not at.error
    message = at.info[0].value
    assert f"no case library in `{tmp_path / 'indexes'}`" in message
    assert "./dev.sh index" in message and "medxpert index build" in message
    assert not at.button and not at.radio  # no query until there is a library


def test_a_library_without_its_model_is_skipped_with_the_reason(env, monkeypatch, tmp_path):
    import json
    import shutil

    library = tmp_path / "indexes" / "medxpert-default"
    shutil.copytree(env.indexes_dir / "medxpert-default", library)
    manifest = json.loads((library / "manifest.json").read_text())
    manifest["encoder"]["model_path"] = str(tmp_path / "moved")  # no longer there
    (library / "manifest.json").write_text(json.dumps(manifest))
    models = tmp_path / "models"
    (models / "broken").mkdir(parents=True)
    (models / "broken" / "medxpert.json").write_text("{truncated")  # an unreadable model folder
    monkeypatch.setenv("MEDXPERT_MODELS_DIR", str(models))
    monkeypatch.setenv("MEDXPERT_INDEXES_DIR", str(library.parent))
    at = run_app()
    assert not at.exception and not at.button  # no query without a usable library
    assert f"whose model is in `{models}`" in at.info[0].value
    skipped = [c.value for c in at.caption if c.value.startswith("Skipped:")]
    assert len(skipped) == 1 and "medxpert-default" in skipped[0]
    assert f"no model under {models} has it" in skipped[0]


def test_medxpert_app_serves_the_page_and_stays_on_this_machine_unless_told(tmp_path):
    import subprocess
    import sys
    import urllib.request

    from tests.builders import free_port

    refused = subprocess.run(
        [sys.executable, "-m", "medxpert", "app", "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--trusted-network" in refused.stderr
    port = free_port()
    log = (tmp_path / "app.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "medxpert", "app", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        page = None
        for _ in range(240):
            assert server.poll() is None, (tmp_path / "app.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health") as health:
                    assert health.read() == b"ok"
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/") as answer:
                    page = answer.read().decode()
                break
            except OSError:
                time.sleep(0.25)
        assert page is not None and "<title>Streamlit</title>" in page
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert f"MedXpert UI on http://127.0.0.1:{port}" in (tmp_path / "app.log").read_text()
