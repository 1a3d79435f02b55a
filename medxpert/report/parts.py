"""The computed parts of every report, whatever writes its prose: the differential, ICD-10
suggestions, triage and the cited studies."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from medxpert.labels import PATHOLOGIES
from medxpert.report.context import ReportContext
from medxpert.report.schema import CitedCase, DifferentialItem, ICD10Item, Statement, TriageItem
from medxpert.report.sentences import readable
from medxpert.retrieval import Hit
from medxpert.retrieval.export import SNIPPET_CHARS

DIFFERENTIAL_MIN = 0.1
DIFFERENTIAL_SIZE = 5
DISPLAY_NAMES = {"Edema": "Pulmonary oedema", "Lung Lesion": "Nodule or mass"}


def display(label: str) -> str:
    """How a report names a CheXpert observation."""
    return DISPLAY_NAMES.get(label, label)


def computed_parts(context: ReportContext, statements: Iterable[Statement]) -> dict:
    """The `StructuredReport` fields that are computed, not written: the differential (up to
    `DIFFERENTIAL_SIZE` findings with p ≥ `DIFFERENTIAL_MIN`), ICD-10, triage, caption and
    the studies that `statements` cite."""
    p, evidence = context.vote.probabilities, context.vote.evidence
    return {
        "differential": [
            DifferentialItem(
                condition=label, probability=p[label], supporting_case_ids=list(evidence[label])
            )
            for label in sorted(PATHOLOGIES, key=lambda label: -p[label])
            if p[label] >= DIFFERENTIAL_MIN
        ][:DIFFERENTIAL_SIZE],
        "icd10": [
            ICD10Item(
                code=s.code,
                description=s.description,
                finding=s.finding,
                probability=s.probability,
                evidence=list(s.evidence),
            )
            for s in context.icd10
        ],
        "triage": TriageItem(level=context.triage.level, reason=context.triage.reason),
        "caption": context.caption.text if context.caption else None,
        "cited_cases": cited_cases(
            context.hits, {c for statement in statements for c in statement.cited_case_ids}
        ),
    }


def cited_cases(hits: Sequence[Hit], case_ids: set[str]) -> list[CitedCase]:
    """The hits (studies) among `case_ids`, in rank order, with score, index, an excerpt, the
    study's images and what of it matched."""
    return [
        CitedCase(
            case_id=hit.case.case_id,
            score=round(hit.score, 4),
            modality=hit.modality,
            excerpt=_excerpt(hit),
            study_id=hit.study_id,
            image_case_ids=[image.case_id for image in hit.images],
            matched=[evidence.describe() for evidence in hit.evidence],
        )
        for hit in hits
        if hit.case.case_id in case_ids
    ]


def _excerpt(hit: Hit, chars: int = SNIPPET_CHARS) -> str:
    """The start of the study's report (impression first), de-identification tokens
    rephrased or shown as "[…]"."""
    text = readable(hit.case.text(("impression", "findings"))) or "(no report: image only)"
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"
