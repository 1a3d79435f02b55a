"""The read-out writer (`--writer readout`): each finding the evidence supports as a probability
with its share of the retrieved studies, and a quote of a supporting report.

A finding is read out when the context states it (its vote reaches its threshold and a
retrieved study is positive for it); nothing is said that no retrieved study supports.
"""

from __future__ import annotations

import re

from medxpert.labels import PATHOLOGIES, default_labeler
from medxpert.report.context import ReportContext
from medxpert.report.parts import computed_parts, display
from medxpert.report.schema import Statement, StructuredReport
from medxpert.retrieval import Hit

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class ReadoutWriter:
    """`ReadoutWriter().write(context)` → `StructuredReport`."""

    name = "readout"
    model = None
    send_image = False

    def write(self, context: ReportContext) -> StructuredReport:
        p = context.vote.probabilities
        found = sorted(
            (label for label in PATHOLOGIES if context.stated(label)), key=lambda x: -p[x]
        )
        findings = [self._finding(label, context) for label in found]
        if context.stated("Support Devices"):
            findings.append(self._finding("Support Devices", context))
        if not found:
            findings.append(self._no_finding(context))
        impression = [self._impression(found, context)]
        return StructuredReport(
            findings=findings,
            impression=impression,
            **computed_parts(context, findings + impression),
            writer=self.name,
        )

    def _finding(self, label: str, context: ReportContext) -> Statement:
        supporting = [h for h in context.hits if h.case.case_id in context.vote.evidence[label]]
        share = f"{len(supporting)} of {len(context.hits)} similar cases"
        text = f"{display(label)}: probability {context.vote.probabilities[label]:.2f} ({share})."
        quote = _quote(label, supporting)
        if quote:
            text += f' A similar case reads: "{quote}"'
        return Statement(text=text, cited_case_ids=[h.case.case_id for h in supporting])

    def _no_finding(self, context: ReportContext) -> Statement:
        normal, k = context.vote.evidence["No Finding"], len(context.hits)
        p = context.vote.probabilities["No Finding"]
        if p >= 0.5 and normal:
            return Statement(
                text=f"No acute cardiopulmonary abnormality: {len(normal)} of {k} similar cases "
                f"were reported normal (probability {p:.2f}).",
                cited_case_ids=list(normal),
            )
        return Statement(
            text=f"No finding reaches its reporting threshold among the {k} similar cases; "
            "they do not agree on a finding.",
        )

    def _impression(self, found: list[str], context: ReportContext) -> Statement:
        p, evidence = context.vote.probabilities, context.vote.evidence
        if found:
            named = [f"{display(label).lower()} ({p[label]:.2f})" for label in found]
            text = (
                "Most consistent with "
                + (named[0] if len(named) == 1 else ", ".join(named[:-1]) + " and " + named[-1])
                + "."
            )
            cited = list(dict.fromkeys(c for label in found for c in evidence[label]))
        elif p["No Finding"] >= 0.5 and evidence["No Finding"]:
            text = "No acute cardiopulmonary abnormality among the most similar prior cases."
            cited = list(evidence["No Finding"])
        else:
            text, cited = (
                "Indeterminate: the most similar prior cases do not agree on a finding.",
                [],
            )
        if context.triage.level != "routine":
            text += f" {context.triage.level.capitalize()} review: {context.triage.reason}."
        return Statement(text=text, cited_case_ids=cited)


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
