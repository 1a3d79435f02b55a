"""The sidebar: case library (with its model), top-K, target, captioner, writer, note weight."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import streamlit as st

from medxpert.app.artifacts import Artifacts, Library
from medxpert.caption.registry import BLIP_DIR_NAME
from medxpert.config import Settings
from medxpert.report import writer_options
from medxpert.report.gemini import DEFAULT_MODEL, KEY_VARIABLES
from medxpert.retrieval import DEFAULT_NOTE_WEIGHT, TARGETS, Target

MAX_K = 50
CAPTIONER_NAMES = {"labels": "Zero-shot labels (offline)", "blip": "BLIP (transformers)"}
WRITER_NAMES = {
    "offline": "Offline (nothing leaves this machine)",
    "gemini": "Gemini (Google API)",
    "openai-compatible": "Local LLM (OpenAI-compatible server)",
}
LLM_LABELS = {"gemini": "Gemini", "openai-compatible": "the local LLM"}


@dataclass(frozen=True)
class Choices:
    """Everything the sidebar lets the user pick."""

    library: Library
    k: int
    target: Target
    captioner: str
    writer: str
    note_weight: float
    writer_options: dict = field(default_factory=dict)
    blip_dir: str | None = None


def sidebar(settings: Settings, artifacts: Artifacts) -> Choices:
    """Render the sidebar and return the choices (the artifacts hold a library)."""
    with st.sidebar:
        st.header("Settings")
        library = _pick_library(settings, artifacts)
        st.caption(f"Model: `{library.model.name}` (the one this library was built with)")
        for problem in artifacts.problems:
            st.caption(f"Skipped: {problem}")
        st.subheader("Search")
        targets = [t for t in sorted(TARGETS, key="both".__ne__) if _count(library, t)]
        target = st.radio("Search in", targets, horizontal=True, key="target")
        most = min(MAX_K, _count(library, target))
        k = st.slider("Top-K cases", 1, most, min(settings.top_k, most), key="k")
        note_weight = st.slider(
            "Note weight",
            0.0,
            1.0,
            DEFAULT_NOTE_WEIGHT,
            0.05,
            key="note_weight",
            help="How much a clinical note moves an X-ray query: (1 − w)·image + w·note.",
        )
        st.subheader("Report")
        captioner, blip_dir = _pick_captioner(settings)
        writer, options = _pick_writer(settings)
    return Choices(library, k, target, captioner, writer, note_weight, options, blip_dir)


def _pick_library(settings: Settings, artifacts: Artifacts) -> Library:
    names = [library.name for library in artifacts.libraries]
    default = names.index(settings.encoder) if settings.encoder in names else 0
    name = st.selectbox("Case library", names, index=default, key="library")
    return artifacts.libraries[names.index(name)]


def _pick_captioner(settings: Settings) -> tuple[str, str | None]:
    blip = settings.models_dir / BLIP_DIR_NAME
    available = blip.is_dir()
    default = settings.captioner if available else "labels"
    captioner = st.radio(
        "Captioner",
        list(CAPTIONER_NAMES),
        index=list(CAPTIONER_NAMES).index(default),
        format_func=CAPTIONER_NAMES.get,
        disabled=not available,
        key="captioner",
    )
    if not available:
        st.caption(
            f"BLIP is unavailable: the app runs offline and there are no local weights in "
            f"`{blip}`. `medxpert train-captioner` makes them."
        )
    return captioner, str(blip) if captioner == "blip" else None


def _pick_writer(settings: Settings) -> tuple[str, dict]:
    """The writers that can run here: Gemini with a key, the local LLM with MEDXPERT_LLM_URL."""
    usable = {
        "offline": True,
        "gemini": any(os.environ.get(name) for name in KEY_VARIABLES),
        "openai-compatible": bool(settings.llm_url),
    }
    names = [name for name in WRITER_NAMES if usable[name]]
    writer = st.radio(
        "Report writer",
        names,
        index=names.index(settings.writer) if settings.writer in names else 0,
        format_func=WRITER_NAMES.get,
        disabled=len(names) == 1,
        key="writer",
    )
    if not usable["gemini"]:
        st.caption(
            f"Gemini is unavailable: set {' or '.join(KEY_VARIABLES)} in the app's environment "
            "to use it."
        )
    if not usable["openai-compatible"]:
        st.caption(
            "A local LLM is unavailable: set MEDXPERT_LLM_URL (e.g. http://127.0.0.1:11434/v1 "
            "for Ollama) in the app's environment to use one."
        )
    if writer == "offline":
        return writer, {}
    options = writer_options(writer, settings)
    if writer == "gemini":
        model = st.text_input("Gemini model", options.get("model", DEFAULT_MODEL), key="llm_model")
        options["model"] = model.strip() or DEFAULT_MODEL
    else:
        url = st.text_input("Local LLM server (URL)", options["url"], key="llm_url")
        model = st.text_input(
            "Local LLM model",
            options.get("model", ""),
            key="local_llm_model",
            help="Empty: the first model the server lists.",
        )
        options.update(url=url.strip() or options["url"], model=model.strip() or None)
    label = LLM_LABELS[writer]
    options["send_image"] = st.checkbox(
        f"Also send the X-ray image to {label}",
        key="send_image",
        help=f"Off: {label} receives de-identified text only (the offline draft, caption, "
        "probabilities, report excerpts, note).",
    )
    return writer, options


def _count(library: Library, target: Target) -> int:
    if target == "both":
        return sum(library.counts.values())
    return library.counts.get(target, 0)
