"""The public face: `import medxpert` and its exports, `medxpert.load(name)` (a case library by
name, with the model its manifest records), and the README's first Python snippet, run as it
is written on a tiny workspace."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import medxpert
from medxpert.config import Settings
from medxpert.errors import ModelNotFoundError
from medxpert.index import CaseLibrary, embed_cases
from medxpert.index.library import MANIFEST, library_model
from medxpert.pipeline import DiagnosisPipeline
from tests.builders import tiny_encoder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, make_workspace) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("public")
    return root, make_workspace(root)


@pytest.fixture
def env(workspace, monkeypatch) -> Settings:
    for name, value in workspace[1].items():
        monkeypatch.setenv(name, value)
    for name in ("MEDXPERT_ENCODER", "MEDXPERT_WRITER", "MEDXPERT_CAPTIONER"):
        monkeypatch.delenv(name, raising=False)
    return Settings.from_env()


def readme_python_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def test_the_readmes_first_python_snippet_is_three_lines_to_a_report(env, monkeypatch, tmp_path):
    snippet = readme_python_snippets()[0]
    lines = [line for line in snippet.splitlines() if line.strip()]
    assert len(lines) == 3 and "diagnose(" in snippet
    image = next(
        case.image_path
        for case in medxpert.load_cases("nih_cxr14", "test", settings=env)
        if case.has_image
    )
    (path,) = re.findall(r'image="([^"]+)"', snippet)
    shutil.copy(image, tmp_path / path)
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, "README.md", "exec"), {})
    report = printed.getvalue()
    assert report.startswith("**Triage: ") and "### Impression" in report
    expected = DiagnosisPipeline.from_artifacts(
        env.models_dir / "medxpert-default", env.indexes_dir / "medxpert-default"
    ).diagnose(image=tmp_path / path, note="fever, productive cough")
    assert report.strip() == expected.report.to_markdown().strip()


def test_load_finds_the_library_by_name_and_its_model_by_the_manifest(env):
    pipeline = medxpert.load("medxpert-default")
    assert isinstance(pipeline, medxpert.DiagnosisPipeline)
    assert pipeline.engine.encoder.info["path"] == str(env.models_dir / "medxpert-default")
    manifest = pipeline.engine.library.manifest
    assert manifest["encoder"]["model"] == "medxpert-default"
    assert medxpert.load().engine.library.manifest["name"] == "medxpert-default"  # the default
    engine = medxpert.SearchEngine.load("medxpert-default")
    hits = engine.search(text="Cardiomegaly with small pleural effusions.", k=3)
    assert len(hits) == 3 and hits[0].score >= hits[-1].score


def test_a_library_from_before_models_were_named_finds_its_model_by_fingerprint(env, tmp_path):
    library = tmp_path / "old"
    shutil.copytree(env.indexes_dir / "medxpert-default", library)
    manifest = json.loads((library / MANIFEST).read_text())
    for key in ("model", "model_path"):
        manifest["encoder"].pop(key)
    (library / MANIFEST).write_text(json.dumps(manifest))
    models = tmp_path / "models"
    shutil.copytree(env.models_dir, models)
    tiny_encoder(tmp_path / "other", seed=3).save(models / "0-other")  # scanned first
    assert library_model(library, models) == models / "medxpert-default"


def test_a_library_whose_model_is_missing_says_where_it_looked(env, tmp_path):
    library = tmp_path / "moved"
    shutil.copytree(env.indexes_dir / "medxpert-default", library)
    manifest = json.loads((library / MANIFEST).read_text())
    manifest["encoder"]["model_path"] = str(tmp_path / "gone" / "medxpert-default")
    (library / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ModelNotFoundError) as error:
        medxpert.load(library, settings=Settings.from_env(models_dir=tmp_path / "empty"))
    message = str(error.value)
    assert "'medxpert-default'" in message and str(tmp_path / "empty") in message
    assert "--model" in message and "medxpert index build" in message


def test_a_library_of_an_unsaved_encoder_needs_the_model_named(env, tmp_path):
    encoder = tiny_encoder(tmp_path, seed=5)  # never saved: no folder to record
    cases = medxpert.load_cases("iu_xray", "train", settings=env)[:6]
    CaseLibrary.from_embeddings(encoder, cases, embed_cases(encoder, cases)).save(
        tmp_path / "unsaved"
    )
    with pytest.raises(ModelNotFoundError, match="no model under"):
        medxpert.load(tmp_path / "unsaved")
    saved = encoder.save(tmp_path / "saved-later")
    assert medxpert.load(tmp_path / "unsaved", model=saved).engine.encoder.info["path"] == str(
        saved
    )


def test_the_package_exports_its_main_classes_without_importing_torch():
    from medxpert.data import load_cases, open_image
    from medxpert.encoders import DualEncoder
    from medxpert.retrieval import SearchEngine

    assert medxpert.DualEncoder is DualEncoder and medxpert.SearchEngine is SearchEngine
    assert medxpert.load_cases is load_cases and medxpert.open_image is open_image
    assert (
        set(medxpert.__all__)
        == set(dir(medxpert))
        == {*medxpert._EXPORTS, "MedXpertError", "__version__", "load"}
    )
    assert all(getattr(medxpert, name) is not None for name in medxpert.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = medxpert.nothing
    light = subprocess.run(
        [sys.executable, "-c", "import sys, medxpert; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert light.stdout.strip() == "False"
