"""The query: uploaded X-rays (one, or several of one study) or a test-split sample, each with
an optional clinical note, or a text query. Uploads are size-checked and decoded by
`open_image`."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st
from PIL import Image

from medxpert.app.artifacts import SAMPLE_SOURCES, test_samples
from medxpert.config import Settings
from medxpert.data import Case, open_image
from medxpert.errors import QueryError
from medxpert.eval.context import history_note
from medxpert.labels import positive_labels

UPLOAD, SAMPLE, TEXT = "Upload an X-ray", "Sample X-ray (test split)", "Text query"
TEXT_EXAMPLES = "e.g. left lower lobe consolidation; cardiomegaly with effusion"


@dataclass(frozen=True)
class Query:
    """What to diagnose: decoded X-rays (one, or several of one study; each with its name) with
    an optional note, or a text."""

    title: str
    images: tuple[Image.Image, ...] = ()
    names: tuple[str, ...] = ()
    text: str | None = None
    note: str | None = None
    force: bool = False  # diagnose even an image the input guard refuses

    @property
    def image_arguments(self) -> dict:
        """`DiagnosisPipeline.diagnose`'s image=, or images= for a study of several."""
        if len(self.images) > 1:
            return {"images": list(self.images)}
        return {"image": self.images[0] if self.images else None}


def query_input(settings: Settings) -> Query | None:
    """Render the query widgets; the query once the user presses Diagnose, else None."""
    mode = st.radio("Query", (UPLOAD, SAMPLE, TEXT), horizontal=True, key="mode")
    case = _pick_sample(settings) if mode == SAMPLE else None
    if mode == SAMPLE and case is None:
        return None
    prefill = history_note(case.text()) if case is not None and case.has_text else ""
    if prefill:
        st.caption("The note is the history part of this case's notes; edit or clear it.")
    upload = text = note = None
    more, force = [], False
    with st.form("query", border=False):
        if mode == UPLOAD:
            upload = st.file_uploader(
                f"Chest X-ray: PNG, JPEG or DICOM, up to {settings.max_image_mb} MB",
                key="upload",
            )
            more = st.file_uploader(
                "Other views of the same study (optional, e.g. the lateral)",
                key="more_views",
                accept_multiple_files=True,
                help="Searched together with the X-ray above as one study. The caption is of "
                "the X-ray above, so put the frontal view there.",
            )
        if mode == TEXT:
            text = st.text_area("Text query", key="text", placeholder=TEXT_EXAMPLES)
        else:
            note = st.text_area(
                "Clinical note (optional)",
                value=prefill,
                key=f"note:{case.case_id if case else 'upload'}",
                placeholder="e.g. fever and productive cough for three days",
                help="History and symptoms. The note weight (sidebar) sets how far it moves "
                "the search away from the X-ray alone.",
            )
            force = st.checkbox(
                "Diagnose even if the input guard refuses it",
                key="force",
                help="MedXpert refuses images that are not chest radiographs (by their DICOM "
                "header, their pixels, or their distance from every library X-ray). Forced, "
                "the report carries a warning and triage stays routine.",
            )
        submitted = st.form_submit_button("Diagnose", type="primary", key="diagnose")
    if not submitted:
        return None
    if mode == TEXT:
        return Query(f"text query “{text.strip()}”", text=text)
    note = note.strip() or None
    if mode == SAMPLE:
        image = open_image(
            case.image_path,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_image_bytes,
        )
        title = f"test X-ray {case.case_id}"
        return Query(title, images=(image,), names=(title,), note=note, force=force)
    files = ([upload] if upload is not None else []) + list(more)
    if not files:
        raise QueryError("no X-ray uploaded: choose a PNG, JPEG or DICOM file, then Diagnose.")
    images = tuple(read_upload(file, settings) for file in files)
    if len(files) == 1:
        title = f"uploaded X-ray {files[0].name}"
        return Query(title, images=images, names=(title,), note=note, force=force)
    names = tuple(file.name for file in files)
    title = "uploaded study " + " + ".join(names)
    return Query(title, images=images, names=names, note=note, force=force)


def read_upload(upload, settings: Settings) -> Image.Image:
    """Decode an uploaded file (Streamlit's `UploadedFile`); `InvalidImageError` when it is
    over the size limit (checked before decoding), corrupt, or not an X-ray format."""
    return open_image(
        upload.getvalue(),
        max_pixels=settings.max_image_pixels,
        max_bytes=settings.max_image_bytes,
        name=upload.name,
    )


def _pick_sample(settings: Settings) -> Case | None:
    cases, problems = test_samples(settings)
    for problem in problems:
        st.warning(f"Samples unavailable from {problem}")
    if not cases:
        st.info(f"No test-split X-rays found in the data packs ({', '.join(SAMPLE_SOURCES)}).")
        return None
    by_id = {case.case_id: case for case in cases}
    case_id = st.selectbox(
        "Test-split X-ray (its labels, from the source, in brackets)",
        list(by_id),
        key="sample",
        format_func=lambda i: f"{i} [{', '.join(_labels(by_id[i])) or 'no label'}]",
    )
    return by_id[case_id]


def _labels(case: Case) -> list[str]:
    """The case's positive CheXpert labels and the source's other labels."""
    return [*positive_labels(case.labels), *case.extra_labels]
