"""The Gemini writer, through `google-genai` (the successor of the retired
`google-generativeai`).

What leaves the machine: the caption, the pathology probabilities, de-identified excerpts of the
retrieved reports with their case ids, and the de-identified clinical note. Never the image,
unless the user opts in (`send_image=True`). The key comes from GEMINI_API_KEY or
GOOGLE_API_KEY and is never logged.

Gemini writes the findings, impression and differential as JSON against a response schema.
ICD-10 suggestions, triage and the cited cases stay those of the offline writer: they are
computed, not generated. Citations to cases that were not retrieved are dropped, with a warning.
Any failure (no key, network, timeout, 429 / 5xx after the retries, malformed JSON, a schema
violation) returns the offline report, with a warning that says why.
"""

from __future__ import annotations

import json
import logging
import os
import time

from pydantic import BaseModel, Field, ValidationError

from medxpert.report.context import ReportContext
from medxpert.report.deid import deidentify
from medxpert.report.offline import OfflineWriter, cited_cases
from medxpert.report.schema import DifferentialItem, Statement, StructuredReport

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "gemini-2.5-flash"
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
EXCERPT_CHARS = 400
INSTRUCTIONS = (
    "You are a radiology reporting assistant. Write a chest X-ray report for the query from "
    "the evidence given: a caption of the image, pathology probabilities voted by similar "
    "prior cases, and excerpts of those cases' reports. Use only this evidence. Every finding "
    "must cite the ids of the cases that support it, exactly as given. Do not state a finding "
    "that no case supports. Probabilities in the differential are between 0 and 1. The report "
    "is decision support for a radiologist, not a diagnosis."
)


class Draft(BaseModel):
    """What Gemini is asked to write (the response schema)."""

    findings: list[Statement] = Field(min_length=1)
    impression: str = Field(min_length=1)
    differential: list[DifferentialItem] = Field(default_factory=list)


class GeminiWriter:
    """`GeminiWriter().write(context)` → `StructuredReport` (offline on any failure)."""

    name = "gemini"

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 1.0,
        send_image: bool = False,
    ) -> None:
        self.model, self.base_url = model, base_url
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.send_image = send_image
        self._api_key = api_key or next(
            (os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None
        )
        self._offline = OfflineWriter()

    def __repr__(self) -> str:  # never show the key
        return f"GeminiWriter(model={self.model!r}, send_image={self.send_image})"

    def write(self, context: ReportContext) -> StructuredReport:
        offline = self._offline.write(context)
        try:
            draft = self._draft(context, context.image_png if self.send_image else None)
        except _GeminiError as failure:
            logger.warning("Gemini writer failed (%s); using the offline report", failure)
            return offline.model_copy(
                update={
                    "warnings": [
                        *offline.warnings,
                        f"Gemini failed: {failure}. This is the offline writer's report.",
                    ]
                }
            )
        retrieved = {hit.case.case_id for hit in context.hits}
        warnings = list(offline.warnings)
        findings = []
        for statement in draft.findings:
            kept = [case_id for case_id in statement.cited_case_ids if case_id in retrieved]
            if len(kept) < len(statement.cited_case_ids):
                warnings.append(
                    f"Dropped citations to cases that were not retrieved: "
                    f"{sorted(set(statement.cited_case_ids) - retrieved)}."
                )
            findings.append(Statement(text=statement.text, cited_case_ids=kept))
        cited = {case_id for s in findings for case_id in s.cited_case_ids}
        return offline.model_copy(
            update={
                "findings": findings,
                "impression": draft.impression,
                "differential": [
                    DifferentialItem(
                        condition=d.condition,
                        probability=d.probability,
                        supporting_case_ids=[c for c in d.supporting_case_ids if c in retrieved],
                    )
                    for d in draft.differential
                ],
                "cited_cases": cited_cases(context.hits, cited),
                "writer": self.name,
                "model": self.model,
                "warnings": warnings,
            }
        )

    # --- the call ------------------------------------------------------------------------------
    def _draft(self, context: ReportContext, image: bytes | None) -> Draft:
        if not self._api_key:
            raise _GeminiError(f"no API key: set {' or '.join(KEY_VARIABLES)}")
        from google import genai
        from google.genai import errors, types

        client = genai.Client(
            api_key=self._api_key,
            http_options=types.HttpOptions(
                base_url=self.base_url,
                timeout=int(self.timeout_s * 1000),
                retry_options=types.HttpRetryOptions(attempts=1),  # we retry ourselves
            ),
        )
        contents: list = [prompt(context)]
        if image is not None:
            contents.append(types.Part.from_bytes(data=image, mime_type="image/png"))
        config = types.GenerateContentConfig(
            system_instruction=INSTRUCTIONS,
            response_mime_type="application/json",
            response_schema=Draft,
            temperature=0.0,
        )
        for attempt in range(self.retries + 1):
            try:
                response = client.models.generate_content(
                    model=self.model, contents=contents, config=config
                )
                break
            except errors.APIError as error:
                if error.code not in RETRY_STATUS or attempt == self.retries:
                    raise _GeminiError(f"HTTP {error.code} {error.status or ''}".strip()) from None
                delay = self.backoff_s * 2**attempt
                logger.info("Gemini answered %s; retrying in %.1f s", error.code, delay)
                time.sleep(delay)
            except Exception as error:  # timeouts and connection errors from the HTTP client
                raise _GeminiError(f"{type(error).__name__}: {str(error)[:200]}") from None
        try:
            return Draft.model_validate_json(response.text or "")
        except ValidationError as error:
            kind = "malformed JSON" if "json_invalid" in str(error) else "schema violation"
            raise _GeminiError(f"{kind} in the answer ({error.error_count()} errors)") from None


class _GeminiError(Exception):
    """Why the Gemini report could not be used (shown to the user as a warning)."""


def prompt(context: ReportContext) -> str:
    """The evidence as a JSON document; every free text in it is de-identified."""
    p = context.vote.probabilities
    evidence = {
        "query": "chest X-ray" + (" with a clinical note" if context.note else "")
        if context.has_image
        else "text query",
        "text_query": deidentify(context.query_text) or None,
        "clinical_note": deidentify(context.note) or None,
        "caption": context.caption.text if context.caption else None,
        "pathology_probabilities": {label: p[label] for label in sorted(p, key=lambda x: -p[x])},
        "retrieved_cases": [
            {
                "case_id": hit.case.case_id,
                "study_id": hit.study_id,
                "rank": hit.rank,
                "similarity": round(hit.cosine, 3),
                "index": hit.modality,
                "matched": [evidence.describe() for evidence in hit.evidence],
                "report_excerpt": deidentify(
                    " ".join(hit.case.text(("findings", "impression")).split())[:EXCERPT_CHARS]
                )
                or None,
            }
            for hit in context.hits
        ],
    }
    return json.dumps(evidence, ensure_ascii=False)
