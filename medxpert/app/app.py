"""MedXpert's Streamlit UI: `medxpert app` (or `./dev.sh app`).

Pick a case library and model in the sidebar; give an X-ray (an upload, several uploads of one
study, or a test-split sample, with an optional clinical note) or a text query; read the
structured report built from the most similar prior studies. The page holds no diagnosis
logic: it calls `DiagnosisPipeline`. Settings come from `MEDXPERT_*` variables
(`Settings.from_env`).
"""

import json

import streamlit as st

from medxpert.app.artifacts import find_artifacts, how_to_build, load_explainer, load_pipeline
from medxpert.app.query_input import query_input
from medxpert.app.result_view import show_diagnosis
from medxpert.app.sidebar import sidebar
from medxpert.config import Settings
from medxpert.errors import MedXpertError

RESULT = "result"  # session-state key of the last (query, diagnosis) shown


def main() -> None:
    st.set_page_config(page_title="MedXpert", page_icon="🩻", layout="wide")
    st.title("MedXpert")
    st.caption(
        "Chest X-ray reports from the most similar prior studies. Decision support, not a "
        "diagnosis: a clinician must review every statement."
    )
    try:
        settings = Settings.from_env()
    except MedXpertError as error:
        st.error(str(error))
        return
    artifacts = find_artifacts(settings)
    if not artifacts.libraries:
        st.info(how_to_build(settings))
        for problem in artifacts.problems:
            st.caption(f"Skipped: {problem}")
        return
    choices = sidebar(settings, artifacts)
    try:
        pipeline = load_pipeline(
            str(choices.library.model),
            str(choices.library.path),
            captioner=choices.captioner,
            writer=choices.writer,
            writer_options=choices.writer_options,
            device=settings.device,
            blip_dir=choices.blip_dir,
        )
        query = query_input(settings)
        if query is not None:
            with st.spinner("Retrieving similar cases and writing the report…"):
                diagnosis = pipeline.diagnose(
                    **query.image_arguments,
                    text=query.text,
                    note=query.note,
                    k=choices.k,
                    target=choices.target,
                    note_weight=choices.note_weight,
                    force=query.force,
                )
            st.session_state[RESULT] = (query, diagnosis)
    except MedXpertError as error:
        st.session_state.pop(RESULT, None)
        st.error(str(error))
    if RESULT in st.session_state:
        explainer = load_explainer(pipeline, json.dumps(pipeline.provenance, sort_keys=True))
        show_diagnosis(*st.session_state[RESULT], explainer)


main()
