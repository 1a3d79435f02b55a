"""`StructuredReport`: what a report writer returns, as a pydantic model (JSON in and out)."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

# inline Markdown: code, emphasis, links and images, tables, strikethrough, escapes; `_` only
# where it could open or close emphasis (not inside a word such as an id's nih_cxr14)
INLINE = re.compile(r"[\\`*\[\]|~]|(?<![^\W_])_|_(?![^\W_])")
# what opens a block at the start of a line: a heading, quote, list item or rule
BLOCK_START = re.compile(r"^(?:[#>+=-]|(\d+)(?=[.)]))")
ENTITY = re.compile(r"&(?=#?\w+;)")
DISCLAIMER = (
    "Decision support, not a diagnosis: generated from similar prior cases by MedXpert. A "
    "qualified clinician must review the images and confirm every statement."
)


class Statement(BaseModel):
    """One sentence of the findings or the impression, with the retrieved studies that support
    it (the case id standing for each study; the study it was taken from first)."""

    text: str
    cited_case_ids: list[str] = Field(default_factory=list)


class DifferentialItem(BaseModel):
    condition: str
    probability: float = Field(ge=0, le=1)
    supporting_case_ids: list[str] = Field(default_factory=list)


class ICD10Item(BaseModel):
    code: str
    description: str
    finding: str
    probability: float = Field(ge=0, le=1)
    evidence: list[str] = Field(default_factory=list)


class TriageItem(BaseModel):
    level: str
    reason: str


class CitedCase(BaseModel):
    """A cited study: the case that stands for it, its images, and what matched."""

    case_id: str
    score: float
    modality: str
    excerpt: str
    study_id: str = ""
    image_case_ids: list[str] = Field(default_factory=list)
    matched: list[str] = Field(
        default_factory=list, description='e.g. "frontal image 0.953 (#1)", "report 0.214 (#3)"'
    )


class StructuredReport(BaseModel):
    """Findings, impression, differential, ICD-10 suggestions, triage, caption and citations."""

    findings: list[Statement]
    impression: list[Statement]
    differential: list[DifferentialItem]
    icd10: list[ICD10Item]
    triage: TriageItem
    caption: str | None = None
    cited_cases: list[CitedCase]
    writer: str
    model: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    disclaimer: str = DISCLAIMER

    @property
    def statements(self) -> list[Statement]:
        """Every sentence: the findings, then the impression."""
        return [*self.findings, *self.impression]

    @property
    def findings_text(self) -> str:
        return " ".join(s.text for s in self.findings)

    @property
    def impression_text(self) -> str:
        return " ".join(s.text for s in self.impression)

    def plain_text(self) -> str:
        """The findings and the impression as prose, in a report's order (for text metrics
        such as BLEU)."""
        return " ".join(s.text for s in self.statements)

    def to_markdown(self) -> str:
        """The report as Markdown, each finding followed by its citations. Every text in it
        is escaped (`markdown_text`): it comes from reports, notes and LLMs, not from us."""
        triage = markdown_text(self.triage.level.upper())
        lines = [f"**Triage: {triage}** ({markdown_text(self.triage.reason)})", ""]
        if self.warnings:  # first: an input the guard refused, statements removed
            lines += ["### Warnings", ""] + [f"- {markdown_text(w)}" for w in self.warnings]
            lines += [""]
        if self.caption:
            lines += [f"*Caption:* {markdown_text(self.caption)}", ""]
        lines += ["### Findings", ""] + [_cited(s) for s in self.findings]
        lines += ["", "### Impression", ""] + [_cited(s) for s in self.impression]
        lines += ["", "### Differential", ""]
        lines += [
            f"- {markdown_text(d.condition)}: {d.probability:.2f} "
            f"({len(d.supporting_case_ids)} supporting cases)"
            for d in self.differential
        ] or ["- none above the reporting threshold"]
        lines += ["", "### ICD-10 suggestions", ""]
        lines += [
            f"- {markdown_text(f'{c.code} {c.description}')} (from {markdown_text(c.finding)}, "
            f"p = {c.probability:.2f})"
            for c in self.icd10
        ] or ["- none"]
        lines += ["", "### Cited studies", ""] + [_cited_study(c) for c in self.cited_cases]
        writer = self.writer + (f" ({self.model})" if self.model else "")
        lines += ["", f"*Written by the {markdown_text(writer)} writer. {self.disclaimer}*"]
        return "\n".join(lines) + "\n"


def markdown_text(text: str) -> str:
    """`text` as literal Markdown on one line: no heading, list, link, emphasis, code or HTML
    it could start. Line breaks become spaces; what Markdown would read (`*`, `_` at a word's
    edge, `[`, a leading `#` or `1.`, ...) is backslash-escaped, `<` and entities as HTML
    entities; other characters stay as they are, so that the source stays readable."""
    text = " ".join(text.split())
    text = ENTITY.sub("&amp;", text).replace("<", "&lt;")
    text = INLINE.sub(lambda match: "\\" + match.group(), text)
    return BLOCK_START.sub(_escaped_block_start, text, 1)


def _escaped_block_start(match: re.Match[str]) -> str:
    """`#` as `\\#`; the number of an ordered list item, `1.`, as `1\\.`."""
    number = match.group(1)
    return number + "\\" if number else "\\" + match.group()


def _cited(statement: Statement) -> str:
    cited = ", ".join(statement.cited_case_ids)
    return f"- {markdown_text(statement.text)}" + (f" [{markdown_text(cited)}]" if cited else "")


def _cited_study(case: CitedCase) -> str:
    matched = "; ".join(case.matched) or f"{case.modality} {case.score:.3f}"
    about = f"study {case.study_id or case.case_id} ({case.case_id}; matched: {matched})"
    return f"- {markdown_text(about)}: {markdown_text(case.excerpt)}"
