"""The faithfulness check: every sentence of a report must be supported by the evidence.

Each statement of the findings and the impression is read again by the report labeler. It is
removed, with a warning that says why, when it

- cites no retrieved study (citations to studies that were not retrieved are dropped first);
- affirms a finding the context does not state (vote below the finding's threshold, or no
  retrieved study positive for it), or whose cited studies include none positive for it;
- hedges a finding that is neither stated nor possible;
- denies a finding the context states or holds possible;
- still holds a de-identification token (`XXXX`) that cannot be rephrased.

Writers run it on what they write: the offline writer as a guarantee, the LLM writers because
a model may say anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from medxpert.labels import CHEXPERT_LABELS, default_labeler
from medxpert.report.context import ReportContext
from medxpert.report.parts import cited_cases, display
from medxpert.report.schema import Statement, StructuredReport
from medxpert.report.sentences import repair_deidentified


def problems(statements: Sequence[Statement], context: ReportContext) -> list[str | None]:
    """Per statement, why the evidence does not support it (None when it does)."""
    labels = default_labeler().label_many([s.text for s in statements])
    retrieved = {hit.case.case_id for hit in context.hits}
    evidence = context.vote.evidence
    found: list[str | None] = []
    for statement, vector in zip(statements, labels, strict=True):
        cited = set(statement.cited_case_ids) & retrieved
        read = {
            label: value
            for label, value in zip(CHEXPERT_LABELS, vector, strict=True)
            if label != "No Finding" and value == value  # NaN: not mentioned
        }
        why = None if cited else "it cites no retrieved study"
        for label, value in read.items():
            name, p = display(label).lower(), context.vote.probabilities[label]
            limit = context.thresholds[label]
            if why:
                break
            if value == 1 and not context.stated(label):
                why = f"it states {name}, which the evidence does not support (vote {p:.2f}, "
                why += f"threshold {limit:.2f}, {len(evidence[label])} positive studies)"
            elif value == 1 and not cited & set(evidence[label]):
                why = f"it states {name}, but none of the studies it cites is positive for it"
            elif value == -1 and not (context.stated(label) or context.possible(label)):
                why = f"it suggests {name}, which the evidence does not support (vote {p:.2f})"
            elif value == 0 and (context.stated(label) or context.possible(label)):
                why = f"it denies {name}, which the evidence supports (vote {p:.2f})"
        if why is None and repair_deidentified(statement.text) is None:
            why = "it holds a de-identification token (XXXX)"
        found.append(why)
    return found


def enforce(report: StructuredReport, context: ReportContext) -> StructuredReport:
    """`report` without the statements the evidence does not support, `XXXX` rephrased, and
    citations of studies that were not retrieved dropped; each removal is a warning."""
    retrieved = {hit.case.case_id for hit in context.hits}
    warnings = list(report.warnings)
    sections: dict[str, list[Statement]] = {}
    for name in ("findings", "impression"):
        statements = [
            Statement(
                text=repair_deidentified(s.text) or s.text,
                cited_case_ids=[c for c in s.cited_case_ids if c in retrieved],
            )
            for s in getattr(report, name)
        ]
        dropped = {c for s in getattr(report, name) for c in s.cited_case_ids} - retrieved
        if dropped:
            warnings.append(
                f"Dropped citations of studies that were not retrieved: {sorted(dropped)}."
            )
        kept = []
        for statement, why in zip(statements, problems(statements, context), strict=True):
            if why is None:
                kept.append(statement)
            else:
                warnings.append(f'Removed "{statement.text}" from the {name}: {why}.')
        sections[name] = kept
    cited = {c for s in sections["findings"] + sections["impression"] for c in s.cited_case_ids}
    return report.model_copy(
        update={**sections, "cited_cases": cited_cases(context.hits, cited), "warnings": warnings}
    )
