"""`StructuredReport`: what a report writer returns, as a pydantic model (JSON in and out)."""

from __future__ import annotations

from pydantic import BaseModel, Field

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
        """The report as Markdown, each finding followed by its citations."""
        lines = [f"**Triage: {self.triage.level.upper()}** ({self.triage.reason})", ""]
        if self.caption:
            lines += [f"*Caption:* {self.caption}", ""]
        lines += ["### Findings", ""] + [_cited(s) for s in self.findings]
        lines += ["", "### Impression", ""] + [_cited(s) for s in self.impression]
        lines += ["", "### Differential", ""]
        lines += [
            f"- {d.condition}: {d.probability:.2f} ({len(d.supporting_case_ids)} supporting cases)"
            for d in self.differential
        ] or ["- none above the reporting threshold"]
        lines += ["", "### ICD-10 suggestions", ""]
        lines += [
            f"- {c.code} {c.description} (from {c.finding}, p = {c.probability:.2f})"
            for c in self.icd10
        ] or ["- none"]
        lines += ["", "### Cited studies", ""]
        lines += [
            f"- study {c.study_id or c.case_id} ({c.case_id}; matched: "
            f"{'; '.join(c.matched) or f'{c.modality} {c.score:.3f}'}): {c.excerpt}"
            for c in self.cited_cases
        ]
        if self.warnings:
            lines += ["", "### Warnings", ""] + [f"- {w}" for w in self.warnings]
        writer = self.writer + (f" ({self.model})" if self.model else "")
        lines += ["", f"*Written by the {writer} writer. {self.disclaimer}*"]
        return "\n".join(lines) + "\n"


def _cited(statement: Statement) -> str:
    cited = statement.cited_case_ids
    return f"- {statement.text}" + (f" [{', '.join(cited)}]" if cited else "")
