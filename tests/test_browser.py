"""The app in a real browser: `streamlit run` on 127.0.0.1 and headless Chromium through
Selenium. A text query, a corrupt upload (an error, the app alive) and a real X-ray upload,
checked on the rendered page text; a screenshot goes to results/app_browser_test.png.

Skips when chromium or chromedriver is missing; with MEDXPERT_REQUIRE_BROWSER=1 (CI) it fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from medxpert.config import Settings
from medxpert.data import load_cases
from medxpert.index import CaseLibrary
from medxpert.pipeline import DiagnosisPipeline
from tests.browser import AppPage, chromium, missing_browser, streamlit_app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "results" / "app_browser_test.png"
QUERY = "cardiomegaly with pleural effusion"


@pytest.fixture(scope="module")
def browser() -> None:
    reason = missing_browser()
    if reason is None:
        return
    if os.environ.get("MEDXPERT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test is required (MEDXPERT_REQUIRE_BROWSER=1): {reason}")
    pytest.skip(reason)


def test_text_query_and_uploads_in_headless_chromium(browser, make_workspace, tmp_path):
    environment = make_workspace(tmp_path / "workspace")
    settings = Settings.from_env(environment)
    model, index = (
        settings.models_dir / "medxpert-default",
        settings.indexes_dir / "medxpert-default",
    )
    library_ids = {case.case_id for case in CaseLibrary.load(index).cases}
    reference = DiagnosisPipeline.from_artifacts(model, index)
    xray = next(c for c in load_cases("covid_cxr", "test", settings=settings) if c.has_image)
    assert xray.image_path.endswith(".png")
    upload = tmp_path / "chest.png"
    shutil.copy(xray.image_path, upload)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00not an image" * 50)

    with (
        streamlit_app(environment, tmp_path / "streamlit.log") as url,
        chromium(tmp_path / "profile") as driver,
    ):
        page = AppPage(driver, url).open()
        page.choose("Text query")
        page.type_text("Text query", QUERY)
        page.diagnose()
        expected = reference.diagnose(text=QUERY, k=10, target="both")
        text = page.wait_for_text(f"Result for the text query “{QUERY}”", "Impression")
        assert all(s.text in text for s in expected.report.statements)
        assert f"{expected.report.triage.level.upper()}\n{expected.report.triage.reason}" in text
        top = expected.hits[0]  # a study, shown by its id
        assert top.case.case_id in library_ids and top.study_id in text

        page.choose("Upload an X-ray")
        page.upload(corrupt)
        page.diagnose()
        text = page.wait_for_text("corrupt.png is a corrupt PNG file")
        assert "Result for" not in text and "Diagnose" in text

        page.upload(upload)
        page.diagnose()
        expected = reference.diagnose(image=upload, k=10, target="both")
        text = page.wait_for_text("Result for the uploaded X-ray chest.png", "Impression")
        assert "corrupt" not in text
        assert expected.caption.text in text and expected.report.impression_text in text
        assert expected.report.triage.reason in text
        page.screenshot(tmp_path / "app.png")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "app.png", SCREENSHOT)
    assert SCREENSHOT.stat().st_size > 50_000
