"""A diagnosis on the page: the query (with its finding heatmaps), caption, triage,
probabilities, report with citations, ICD-10 suggestions, the gallery of the top-K studies (each
with its similarity heatmaps), timings and downloads."""

from __future__ import annotations

import json
import re

import pandas as pd
import streamlit as st

from medxpert.app.artifacts import study_thumbnail
from medxpert.app.query_input import Query
from medxpert.data import open_image
from medxpert.errors import MedXpertError
from medxpert.explain import Explainer, overlay
from medxpert.labels import positive_labels
from medxpert.pipeline import Diagnosis
from medxpert.retrieval import Hit
from medxpert.retrieval.export import snippet

TRIAGE_STYLE = {  # level → badge colour and icon
    "urgent": ("red", ":material/e911_emergency:"),
    "priority": ("orange", ":material/schedule:"),
    "routine": ("green", ":material/check_circle:"),
}
GALLERY_COLUMNS = 5
EXCERPT_CHARS = 180
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-!|$~:])")


def show_diagnosis(query: Query, diagnosis: Diagnosis, explainer: Explainer) -> None:
    """Render everything about one diagnosis; `explainer` makes the heatmaps asked for."""
    report = diagnosis.report
    st.subheader(f"Result for the {_plain(query.title)}")
    left, right = st.columns([2, 3], gap="large")
    with left:
        _show_query(query, diagnosis)
        _show_finding_heatmap(query, diagnosis, explainer)
    with right:
        colour, icon = TRIAGE_STYLE.get(report.triage.level, ("gray", ""))
        st.markdown(f"#### Triage :{colour}-badge[{icon} {report.triage.level.upper()}]")
        st.markdown(_plain(report.triage.reason))
        _show_probabilities(diagnosis)
    left, right = st.columns([3, 2], gap="large")
    with left:
        _show_report(diagnosis)
    with right:
        _show_codes(diagnosis)
    _show_gallery(diagnosis.hits, query, explainer)
    _show_timings(diagnosis.timings_ms)
    _show_downloads(query, diagnosis)


def _show_query(query: Query, diagnosis: Diagnosis) -> None:
    if query.images:
        st.image(list(query.images), caption=list(query.names), width="stretch")
    else:
        st.markdown(f"**Text query:** {_plain(query.text or '')}")
    if query.note:
        st.markdown(f"**Clinical note:** {_plain(query.note)}")
    if diagnosis.caption is not None:
        st.markdown(
            f"**Caption** ({diagnosis.caption.captioner}): {_plain(diagnosis.caption.text)}"
        )


def _show_finding_heatmap(query: Query, diagnosis: Diagnosis, explainer: Explainer) -> None:
    """On request, which regions of the (first) query X-ray raise a finding's score."""
    if not query.images or not explainer.findings:
        return
    if not st.toggle("Heatmap of a finding", key="heatmap_query"):
        return
    scores = diagnosis.caption.probabilities if diagnosis.caption is not None else {}
    findings = sorted(explainer.findings, key=lambda label: -scores.get(label, 0.0))
    finding = st.selectbox("Finding", findings, key="heatmap_finding")
    heatmap = explainer.finding_maps(query.images[0], [finding])[finding]
    st.image(
        overlay(query.images[0], heatmap),
        caption=f"What raises the {finding} score (caption p = {scores.get(finding, 0):.2f})",
        width="stretch",
    )


def _show_probabilities(diagnosis: Diagnosis) -> None:
    frame = pd.DataFrame(
        {"finding": list(diagnosis.probabilities), "probability": diagnosis.probabilities.values()}
    )
    st.markdown("**Pathology probabilities**")
    st.bar_chart(
        frame,
        x="finding",
        y="probability",
        horizontal=True,
        sort="-probability",
        x_label="",
        y_label="probability",
        height=28 * len(frame) + 60,
    )
    how = f"Similarity-weighted vote of the {len(diagnosis.hits)} retrieved cases"
    if diagnosis.zero_shot_weight:
        how += (
            f", blended with the caption's zero-shot scores (weight {diagnosis.zero_shot_weight:g})"
        )
    st.caption(how + ".")


def _show_report(diagnosis: Diagnosis) -> None:
    report = diagnosis.report
    for title, statements in (("Findings", report.findings), ("Impression", report.impression)):
        st.markdown(f"#### {title}")
        for statement in statements:
            cited = " ".join(f"`{case_id}`" for case_id in statement.cited_case_ids)
            st.markdown(f"- {_plain(statement.text)}" + (f"  \n  Cited: {cited}" if cited else ""))
    for warning in report.warnings:
        st.warning(warning)
    writer = report.writer + (f" ({report.model})" if report.model else "")
    st.caption(f"Written by the {writer} writer. {report.disclaimer}")


def _show_codes(diagnosis: Diagnosis) -> None:
    report = diagnosis.report
    st.markdown("#### ICD-10 suggestions")
    if report.icd10:
        st.table(
            pd.DataFrame(
                [
                    {"code": c.code, "description": c.description, "p": f"{c.probability:.2f}"}
                    for c in report.icd10
                ]
            ).set_index("code")
        )
    else:
        st.markdown("None: no finding reached a coding threshold.")
    st.markdown("#### Differential")
    if report.differential:
        st.table(
            pd.DataFrame(
                [
                    {
                        "condition": d.condition,
                        "p": f"{d.probability:.2f}",
                        "supporting cases": len(d.supporting_case_ids),
                    }
                    for d in report.differential
                ]
            ).set_index("condition")
        )
    else:
        st.markdown("None above the reporting threshold.")


def _show_gallery(hits: list[Hit], query: Query, explainer: Explainer) -> None:
    st.markdown(f"#### The {len(hits)} most similar studies")
    for start in range(0, len(hits), GALLERY_COLUMNS):
        columns = st.columns(GALLERY_COLUMNS)
        for column, hit in zip(columns, hits[start : start + GALLERY_COLUMNS], strict=False):
            with column.container(border=True):
                _show_hit(hit)
                _show_similarity_heatmaps(hit, query, explainer)


def _show_similarity_heatmaps(hit: Hit, query: Query, explainer: Explainer) -> None:
    """On request, which regions of the query and of the study's first X-ray make them
    similar."""
    if not query.images or not hit.images:
        return
    if not st.toggle("Why similar", key=f"why_similar_{hit.rank}"):
        return
    try:
        retrieved = open_image(hit.images[0].image_path)
    except MedXpertError as error:
        st.caption(f"No heatmap: {_plain(str(error))}")
        return
    on_query, on_retrieved = explainer.similarity_maps(query.images[0], retrieved)
    st.image(
        [overlay(query.images[0], on_query), overlay(retrieved, on_retrieved)],
        caption=["query", f"#{hit.rank}"],
        width="stretch",
    )


def _show_hit(hit: Hit) -> None:
    """A study's card: its images side by side, rank and score, study id, what matched (index,
    view, cosine, rank in that index), labels, report excerpt."""
    case = hit.case
    paths = tuple(image.image_path for image in hit.images)
    picture = study_thumbnail(paths) if paths else None
    if picture is not None:
        st.image(picture, width="stretch")
    else:
        st.caption("report only" if not paths else "image unavailable")
    st.markdown(f"**#{hit.rank}** · score {hit.score:.3f}")
    views = ", ".join(image.view for image in hit.images) or "no image"
    st.caption(f"{_plain(hit.study_id)} · {hit.modality} match · {views}")
    st.caption("Matched: " + _plain(hit.describe_evidence()))
    labels = positive_labels(case.labels)
    st.markdown(" ".join(f":{_label_colour(n)}-badge[{n}]" for n in labels) or ":gray-badge[none]")
    st.caption(_plain(snippet(hit, EXCERPT_CHARS)))
    if case.text():
        with st.expander("Full report"):
            st.text(case.report or case.text())


def _show_timings(timings_ms: dict[str, float]) -> None:
    st.markdown("#### Timings")
    columns = st.columns(len(timings_ms))
    for column, (stage, ms) in zip(columns, timings_ms.items(), strict=True):
        column.metric(stage, f"{ms:,.1f} ms" if ms < 10 else f"{ms:,.0f} ms")


def _show_downloads(query: Query, diagnosis: Diagnosis) -> None:
    """The report as JSON, Markdown, a FHIR R4 Bundle and a DICOM SR (for PACS and the EHR)."""
    from medxpert.interop.fhir import fhir_json
    from medxpert.interop.sr import sr_bytes

    heading = f"# MedXpert report: {query.title}\n\n"
    downloads = (
        (
            "JSON",
            json.dumps({"query": query.title, **diagnosis.to_dict()}, indent=2, ensure_ascii=False),
            "medxpert-report.json",
            "application/json",
        ),
        (
            "Markdown",
            heading + diagnosis.report.to_markdown(),
            "medxpert-report.md",
            "text/markdown",
        ),
        (
            "FHIR",
            fhir_json(diagnosis, query_name=query.title),
            "medxpert-report.fhir.json",
            "application/fhir+json",
        ),
        (
            "DICOM SR",
            sr_bytes(diagnosis, query_name=query.title),
            "medxpert-report.dcm",
            "application/dicom",
        ),
    )
    for column, (label, data, file_name, mime) in zip(
        st.columns(len(downloads)), downloads, strict=True
    ):
        column.download_button(
            f"Report as {label}",
            data,
            file_name=file_name,
            mime=mime,
            on_click="ignore",
            key=f"download_{label.lower().replace(' ', '_')}",
            icon=":material/download:",
        )


def _label_colour(label: str) -> str:
    return "green" if label == "No Finding" else "blue"


def _plain(text: str) -> str:
    """`text` shown literally by st.markdown (no emphasis, links, LaTeX or HTML)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)
