"""The offline writer (the default): a deterministic report grounded only in the evidence.

A finding is stated only when the similarity-weighted vote of the retrieved cases reaches
`REPORT_THRESHOLD` and at least one retrieved case is positive for it. Each statement cites
those cases and, where one of them has a report, quotes the sentence that mentions the
finding. Nothing is said that no retrieved case supports.
"""

from __future__ import annotations

import re

from medxpert.labels import CHEXPERT_LABELS, default_labeler
from medxpert.report.context import ReportContext
from medxpert.report.schema import (
    CitedCase,
    DifferentialItem,
    ICD10Item,
    Statement,
    StructuredReport,
    TriageItem,
)
from medxpert.retrieval import Hit
from medxpert.retrieval.export import snippet

REPORT_THRESHOLD = 0.5
DIFFERENTIAL_MIN = 0.1
DIFFERENTIAL_SIZE = 5
NOT_FINDINGS = ("No Finding", "Support Devices")
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class OfflineWriter:
    """`OfflineWriter().write(context)` → `StructuredReport`."""

    name = "offline"

    def write(self, context: ReportContext) -> StructuredReport:
        p, evidence = context.vote.probabilities, context.vote.evidence
        k = len(context.hits)
        found = sorted(
            (
                label
                for label in CHEXPERT_LABELS
                if label not in NOT_FINDINGS and p[label] >= REPORT_THRESHOLD and evidence[label]
            ),
            key=lambda label: -p[label],
        )
        findings = [self._finding(label, context) for label in found]
        if context.vote.probabilities["Support Devices"] >= REPORT_THRESHOLD:
            findings.append(self._finding("Support Devices", context))
        if not found:
            findings.append(self._no_finding(context, k))
        return StructuredReport(
            findings=findings,
            impression=self._impression(found, context),
            differential=[
                DifferentialItem(
                    condition=label,
                    probability=p[label],
                    supporting_case_ids=list(evidence[label]),
                )
                for label in sorted(CHEXPERT_LABELS, key=lambda label: -p[label])
                if label not in NOT_FINDINGS and p[label] >= DIFFERENTIAL_MIN
            ][:DIFFERENTIAL_SIZE],
            icd10=[
                ICD10Item(
                    code=s.code,
                    description=s.description,
                    finding=s.finding,
                    probability=s.probability,
                    evidence=list(s.evidence),
                )
                for s in context.icd10
            ],
            triage=TriageItem(level=context.triage.level, reason=context.triage.reason),
            caption=context.caption.text if context.caption else None,
            cited_cases=cited_cases(
                context.hits, {c for statement in findings for c in statement.cited_case_ids}
            ),
            writer=self.name,
        )

    def _finding(self, label: str, context: ReportContext) -> Statement:
        supporting = [h for h in context.hits if h.case.case_id in context.vote.evidence[label]]
        share = f"{len(supporting)} of {len(context.hits)} similar cases"
        text = f"{_display(label)}: probability {context.vote.probabilities[label]:.2f} ({share})."
        quote = _quote(label, supporting)
        if quote:
            text += f' A similar case reads: "{quote}"'
        return Statement(text=text, cited_case_ids=[h.case.case_id for h in supporting])

    def _no_finding(self, context: ReportContext, k: int) -> Statement:
        normal = context.vote.evidence["No Finding"]
        if context.vote.probabilities["No Finding"] >= REPORT_THRESHOLD and normal:
            return Statement(
                text=f"No acute cardiopulmonary abnormality: {len(normal)} of {k} similar cases "
                f"were reported normal (probability "
                f"{context.vote.probabilities['No Finding']:.2f}).",
                cited_case_ids=list(normal),
            )
        return Statement(
            text=f"No finding reaches a probability of {REPORT_THRESHOLD:.2f} among the {k} "
            "similar cases; they do not agree on a finding.",
        )

    def _impression(self, found: list[str], context: ReportContext) -> str:
        p = context.vote.probabilities
        if found:
            named = [f"{_display(label).lower()} ({p[label]:.2f})" for label in found]
            text = (
                "Most consistent with "
                + (named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1])
                + "."
            )
        elif p["No Finding"] >= REPORT_THRESHOLD and context.vote.evidence["No Finding"]:
            text = "No acute cardiopulmonary abnormality among the most similar prior cases."
        else:
            text = "Indeterminate: the most similar prior cases do not agree on a finding."
        if context.triage.level != "routine":
            text += f" {context.triage.level.capitalize()} review: {context.triage.reason}."
        return text


def _quote(label: str, hits: list[Hit]) -> str | None:
    """The sentence of the best-ranked supporting report that mentions `label` positively."""
    labeler = default_labeler()
    for hit in hits:
        text = hit.case.text(("findings", "impression")) or hit.case.report
        if not text:
            continue
        for mention in labeler.mentions(text):
            if mention.label == label and mention.status == "positive":
                return _sentence_at(text, mention.start_char)
    return None


def _sentence_at(text: str, position: int) -> str:
    """The sentence of `text` that contains character `position`."""
    breaks = list(SENTENCE_END.finditer(text))
    start = max([0] + [b.end() for b in breaks if b.end() <= position])
    end = min([len(text)] + [b.start() for b in breaks if b.start() >= position])
    return " ".join(text[start:end].split())


def cited_cases(hits, case_ids: set[str]) -> list[CitedCase]:
    """The hits (studies) among `case_ids`, in rank order, with score, index, an excerpt, the
    study's images and what of it matched."""
    return [
        CitedCase(
            case_id=hit.case.case_id,
            score=round(hit.score, 4),
            modality=hit.modality,
            excerpt=snippet(hit),
            study_id=hit.study_id,
            image_case_ids=[image.case_id for image in hit.images],
            matched=[evidence.describe() for evidence in hit.evidence],
        )
        for hit in hits
        if hit.case.case_id in case_ids
    ]


def _display(label: str) -> str:
    return {"Edema": "Pulmonary oedema", "Lung Lesion": "Nodule or mass"}.get(label, label)
