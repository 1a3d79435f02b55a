"""What the app loads: the case libraries on disk (each with the model it was built with), the
pipeline (once per choice), the test-split sample X-rays and the gallery's study thumbnails,
each cached by Streamlit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from PIL import Image

from medxpert.config import Settings
from medxpert.data import Case, load_cases
from medxpert.errors import MedXpertError
from medxpert.explain import Explainer
from medxpert.index.library import library_model, read_manifest
from medxpert.pipeline import DiagnosisPipeline
from medxpert.retrieval.export import side_by_side

SAMPLE_SOURCES = ("nih_cxr14", "covid_cxr")  # the shared packs with test-split X-rays
THUMBNAIL_PX = 256


@dataclass(frozen=True)
class Library:
    """A case library folder under indexes/, the model it was built with, its vector counts."""

    name: str
    path: Path
    model: Path  # the saved encoder its manifest records (under models/)
    counts: dict[str, int]  # vectors per index: "images", "reports"


@dataclass(frozen=True)
class Artifacts:
    libraries: list[Library]
    problems: list[str]  # folders that look like libraries but cannot be used, and why


def find_artifacts(settings: Settings) -> Artifacts:
    """Every library under `settings.indexes_dir` whose model is under `settings.models_dir`."""
    libraries, problems = [], []
    for path in _folders(settings.indexes_dir):
        try:
            manifest = read_manifest(path)
            model = library_model(path, settings.models_dir)
        except MedXpertError as error:
            problems.append(str(error))
            continue
        counts = {name: entry["count"] for name, entry in manifest["indexes"].items()}
        libraries.append(Library(path.name, path, model, counts))
    return Artifacts(libraries, problems)


def how_to_build(settings: Settings) -> str:
    """Markdown that says what is missing and the commands that make it."""
    return (
        f"**Nothing to search yet:** no case library in `{settings.indexes_dir}` whose model "
        f"is in `{settings.models_dir}`.\n\n"
        "Build the offline default (fine-tunes the encoder when there is none, then embeds the "
        "train and val cases, about 12 minutes on 2 CPU cores):\n\n"
        "```bash\n./dev.sh index\n```\n\n"
        "or step by step: `medxpert train` (→ `models/medxpert-default`), then "
        "`medxpert index build` (→ `indexes/medxpert-default`). Then reload this page."
    )


@st.cache_resource(show_spinner="Loading the model and the case library…", max_entries=2)
def load_pipeline(
    model_dir: str,
    index_dir: str,
    *,
    captioner: str,
    writer: str,
    writer_options: dict,
    device: str,
    blip_dir: str | None,
) -> DiagnosisPipeline:
    """The pipeline for these choices, loaded once per process and shared by every session."""
    return DiagnosisPipeline.from_artifacts(
        model_dir,
        index_dir,
        captioner=captioner,
        writer=writer,
        device=device,
        writer_options=writer_options,
        blip_source=blip_dir,
    )


@st.cache_resource(show_spinner=False, max_entries=2)
def load_explainer(_pipeline: DiagnosisPipeline, provenance: str) -> Explainer:
    """The heatmap explainer of a pipeline's encoder and captioner, made once per pipeline
    (`provenance`, the pipeline's, tells them apart)."""
    return Explainer(_pipeline.engine.encoder, _pipeline.captioner)


@st.cache_resource(show_spinner=False)
def test_samples(settings: Settings) -> tuple[list[Case], list[str]]:
    """Test-split cases with an X-ray from the shared packs, and a note per pack not found."""
    cases, problems = [], []
    for source in SAMPLE_SOURCES:
        try:
            cases += [c for c in load_cases(source, "test", settings=settings) if c.has_image]
        except MedXpertError as error:
            problems.append(f"{source}: {error}")
    return cases, problems


@st.cache_data(show_spinner=False, max_entries=2000)
def study_thumbnail(paths: tuple[str, ...]) -> Image.Image | None:
    """A study's X-rays side by side, small, for the gallery; None when one cannot be read."""
    try:
        return Image.fromarray(side_by_side(paths, height=THUMBNAIL_PX))
    except MedXpertError:
        return None


def _folders(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
