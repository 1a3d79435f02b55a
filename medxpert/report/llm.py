"""What the LLM writers (Gemini, any OpenAI-compatible server) share.

Both start from the offline writer's report: the model gets its findings and impression with
their citations, and the evidence behind them (the retrieved studies with de-identified
excerpts of their reports, the pathology probabilities, each finding's reporting threshold and
the findings the evidence supports), and is asked to rewrite the draft, citing only the given
case ids. Those are pseudonyms ("S1", "S2", ... in rank order, `Pseudonyms`): the real case and
study ids embed source patient numbers and never leave the machine; the answer's citations are
mapped back, and one the map does not know is dropped with a warning. The answer (JSON,
`Draft`) replaces the draft's findings and impression; the differential, ICD-10 suggestions and
triage stay computed. The faithfulness check (`report.faithfulness.enforce`) then reads the
result again: each statement it removes is a warning, and when it leaves the findings or the
impression empty, or the model could not be used at all (no server, timeout, HTTP errors after
the retries, malformed JSON, a schema violation), the report is the offline writer's, with a
warning that says why.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, Field, ValidationError

from medxpert.report.context import ReportContext
from medxpert.report.deid import deidentify
from medxpert.report.faithfulness import enforce
from medxpert.report.offline import OfflineWriter
from medxpert.report.schema import Statement, StructuredReport

logger = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
EXCERPT_CHARS = 400
SECTIONS = ("findings", "impression")
INSTRUCTIONS = (
    "You are a radiology reporting assistant. You are given a draft chest X-ray report, written "
    "from the reports of the most similar prior studies, and the evidence behind it: the "
    "retrieved studies (case ids, similarity, de-identified excerpts of their reports), the "
    "pathology probabilities voted by those studies, each finding's reporting threshold, the "
    "findings the evidence supports (as a fact, or only as a possibility) and the studies "
    "positive for each. Rewrite the draft into a clear, concise report: findings, then "
    "impression. State as a fact only a finding the evidence supports as a fact; word a "
    "finding supported only as a possibility as a possibility; never deny a supported finding; "
    "add no finding the evidence does not support. Every sentence cites, in cited_case_ids, the "
    "case ids of the retrieved studies that support it, exactly as given, and no others. Never "
    "write XXXX, names, dates or other identifiers. Answer with JSON only, of the form "
    '{"findings": [{"text": "...", "cited_case_ids": ["..."]}], "impression": [{"text": "...", '
    '"cited_case_ids": ["..."]}]}. The report is decision support for a radiologist, not a '
    "diagnosis."
)
_THINKING = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCED = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


class Draft(BaseModel):
    """What the model is asked to write: the findings and the impression, each sentence with
    its citations."""

    findings: list[Statement] = Field(min_length=1)
    impression: list[Statement] = Field(min_length=1)


class LLMError(Exception):
    """Why the model's report could not be used (shown to the user as a warning)."""


@dataclass(frozen=True)
class Pseudonyms:
    """The names the model knows the retrieved studies by: "S1", "S2", ... in rank order."""

    real: dict[str, str]  # pseudonym → case id
    hidden: tuple[tuple[str, str], ...]  # (source identifier, pseudonym), longest first

    @classmethod
    def of(cls, context: ReportContext) -> Pseudonyms:
        real = {f"S{i}": hit.case.case_id for i, hit in enumerate(context.hits, start=1)}
        names = {}
        for name, hit in zip(real, context.hits, strict=True):
            for identifier in (hit.case.case_id, hit.study_id, hit.case.patient_id):
                if identifier and len(identifier) >= 4:  # an id that cannot be a word
                    names.setdefault(identifier, name)
                    names.setdefault(identifier.split(":", 1)[-1], name)
        hidden = tuple(sorted(names.items(), key=lambda item: -len(item[0])))
        return cls(real, hidden)

    @property
    def names(self) -> list[str]:
        return list(self.real)

    def of_ids(self, case_ids: Iterable[str]) -> list[str]:
        """The pseudonyms of `case_ids` (ids that were not retrieved left out)."""
        names = {case_id: name for name, case_id in self.real.items()}
        return [names[c] for c in case_ids if c in names]

    def hide(self, text: str | None) -> str | None:
        """`text` with any source identifier of a retrieved study replaced by its pseudonym."""
        for identifier, name in self.hidden:
            if text and identifier in text:
                text = text.replace(identifier, name)
        return text

    def restore(self, draft: Draft) -> tuple[Draft, list[str]]:
        """`draft` citing the real case ids, and a warning for the citations the map does
        not know (the model invented them)."""
        unknown = sorted(
            {c for s in draft.findings + draft.impression for c in s.cited_case_ids}
            - set(self.real)
        )
        sections = {
            name: [
                Statement(
                    text=s.text,
                    cited_case_ids=[self.real[c] for c in s.cited_case_ids if c in self.real],
                )
                for s in getattr(draft, name)
            ]
            for name in SECTIONS
        }
        warnings = (
            [f"Dropped citations of studies that were not retrieved: {unknown}."] if unknown else []
        )
        return Draft(**sections), warnings


def draft_schema(context: ReportContext) -> dict:
    """`Draft` as a strict JSON schema (every property required, no others), the citations
    limited to the retrieved studies' pseudonyms."""
    case_ids = Pseudonyms.of(context).names
    case_id: dict = {"type": "string"} | ({"enum": case_ids} if case_ids else {})
    statement = {
        "type": "object",
        "properties": {
            "text": {"type": "string"},
            "cited_case_ids": {"type": "array", "items": case_id},
        },
        "required": ["text", "cited_case_ids"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {name: {"type": "array", "items": statement} for name in SECTIONS},
        "required": list(SECTIONS),
        "additionalProperties": False,
    }


def evidence_prompt(context: ReportContext, draft: StructuredReport) -> str:
    """The draft and its evidence as a JSON document; every free text in it is de-identified,
    and the studies go by their pseudonyms."""
    pseudonyms = Pseudonyms.of(context)

    def clean(text: str | None) -> str | None:
        return pseudonyms.hide(deidentify(text)) or None

    p, evidence = context.vote.probabilities, context.vote.evidence
    findings = sorted(context.thresholds, key=lambda label: -p[label])
    document = {
        "query": "chest X-ray" + (" with a clinical note" if context.note else "")
        if context.has_image
        else "text query",
        "text_query": clean(context.query_text),
        "clinical_note": clean(context.note),
        "caption": context.caption.text if context.caption else None,
        "pathology_probabilities": {label: round(p[label], 3) for label in p},
        "reporting_thresholds": {label: context.thresholds[label] for label in findings},
        "supported_findings": {
            "as a fact": [label for label in findings if context.stated(label)],
            "as a possibility": [label for label in findings if context.possible(label)],
        },
        "positive_case_ids": {
            label: pseudonyms.of_ids(evidence[label]) for label in p if evidence[label]
        },
        "retrieved_cases": [
            {
                "case_id": name,
                "rank": hit.rank,
                "similarity": round(hit.cosine, 3),
                "index": hit.modality,
                "matched": [match.describe() for match in hit.evidence],
                "report_excerpt": clean(" ".join(hit.case.text(SECTIONS).split())[:EXCERPT_CHARS]),
            }
            for name, hit in zip(pseudonyms.names, context.hits, strict=True)
        ],
        "draft": {
            name: [
                {"text": clean(s.text) or "", "cited_case_ids": pseudonyms.of_ids(s.cited_case_ids)}
                for s in getattr(draft, name)
            ]
            for name in SECTIONS
        },
    }
    return json.dumps(document, ensure_ascii=False)


def parse_draft(text: str | None) -> Draft:
    """The model's answer as a `Draft`: JSON, possibly in a ```json fenced block or after some
    prose (or a <think> block)."""
    text = _THINKING.sub("", text or "").strip()
    fenced = _FENCED.search(text)
    if fenced:
        text = fenced.group(1).strip()
    elif not text.startswith("{") and "{" in text:
        text = text[text.index("{") : text.rindex("}") + 1]
    try:
        return Draft.model_validate_json(text)
    except ValidationError as error:
        kind = "malformed JSON" if "json_invalid" in str(error) else "schema violation"
        raise LLMError(f"{kind} in the answer ({error.error_count()} errors)") from None


def with_retries(
    call: Callable[[], T],
    failure: Callable[[Exception], tuple[str, bool] | None],
    *,
    retries: int,
    backoff_s: float,
    label: str,
) -> T:
    """`call()`, tried again after `backoff_s`·2^attempt, at most `retries` times, while
    `failure(error)` calls the error transient. `failure` gives (why, transient); an error it
    describes becomes an `LLMError`, one it does not (None) propagates."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as error:
            described = failure(error)
            if described is None:
                raise
            why, transient = described
            if not transient or attempt >= retries:
                raise LLMError(why) from None
            delay = backoff_s * 2**attempt
            logger.info("%s: %s; retrying in %.2f s", label, why, delay)
            time.sleep(delay)
            attempt += 1


class LLMWriter:
    """A writer that has a model rewrite the offline writer's report (see the module's doc).
    A subclass sets `name`, `label` (e.g. "Gemini"), `model`, `send_image` and implements
    `_answer`."""

    name: str
    label: str
    model: str | None
    send_image: bool = False

    def _answer(self, context: ReportContext, prompt: str, image: bytes | None) -> str:
        """The model's answer to `prompt` (and `image`, when it may be sent); `LLMError` on
        any failure."""
        raise NotImplementedError

    def write(self, context: ReportContext) -> StructuredReport:
        offline = OfflineWriter().write(context)
        image = context.image_png if self.send_image else None
        try:
            draft = parse_draft(self._answer(context, evidence_prompt(context, offline), image))
        except LLMError as failure:
            logger.warning("%s failed (%s); using the offline report", self.label, failure)
            return fallback(offline, f"{self.label} failed: {failure}.")
        return apply_draft(draft, offline, context, self)


def apply_draft(
    draft: Draft, offline: StructuredReport, context: ReportContext, writer: LLMWriter
) -> StructuredReport:
    """`offline` with the draft's findings and impression (its pseudonyms mapped back to the
    case ids), read by the faithfulness check; `offline` itself (with the removals as
    warnings) when the check leaves a section empty."""
    draft, dropped = Pseudonyms.of(context).restore(draft)
    written = offline.model_copy(
        update={
            "findings": draft.findings,
            "impression": draft.impression,
            "writer": writer.name,
            "model": writer.model,
            "warnings": [*offline.warnings, *dropped],
        }
    )
    report = enforce(written, context)
    empty = [name for name in SECTIONS if not getattr(report, name)]
    if not empty:
        return report
    removed = report.warnings[len(offline.warnings) :]
    why = (
        f"{writer.label} wrote nothing in its {' and '.join(empty)} that the evidence supports "
        "(the faithfulness check removed it all)."
    )
    logger.warning("%s", why)
    return fallback(offline, why, removed)


def fallback(
    offline: StructuredReport, why: str, removed: list[str] | None = None
) -> StructuredReport:
    """The offline report, with `removed` and `why` as warnings."""
    warnings = [*offline.warnings, *(removed or ()), f"{why} This is the offline writer's report."]
    return offline.model_copy(update={"warnings": warnings})
