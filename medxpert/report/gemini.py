"""The Gemini writer, through `google-genai` (the successor of the retired
`google-generativeai`).

What leaves the machine: the offline writer's draft, the caption, the pathology probabilities
and thresholds, de-identified excerpts of the retrieved reports under pseudonyms ("S1", "S2",
...; never the case or study ids), and the de-identified clinical note
(`report.llm.evidence_prompt`). Never the image, unless the user opts in (`send_image=True`):
then only its pixels, re-encoded as a PNG. The key comes from GEMINI_API_KEY or GOOGLE_API_KEY
and is never logged.

Gemini rewrites the draft's findings and impression as JSON against a response schema; the
faithfulness check reads the result, and any failure returns the offline report with a
warning (`report.llm`).
"""

from __future__ import annotations

import os

from medxpert.report.context import ReportContext
from medxpert.report.llm import INSTRUCTIONS, RETRY_STATUS, Draft, LLMError, LLMWriter, with_retries

DEFAULT_MODEL = "gemini-2.5-flash"
KEY_VARIABLES = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


class GeminiWriter(LLMWriter):
    """`GeminiWriter().write(context)` → `StructuredReport` (offline on any failure)."""

    name = "gemini"
    label = "Gemini"

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

    def __repr__(self) -> str:  # never show the key
        return f"GeminiWriter(model={self.model!r}, send_image={self.send_image})"

    def _answer(self, context: ReportContext, prompt: str, image: bytes | None) -> str:
        if not self._api_key:
            raise LLMError(f"no API key: set {' or '.join(KEY_VARIABLES)}")
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
        contents: list = [prompt]
        if image is not None:
            contents.append(types.Part.from_bytes(data=image, mime_type="image/png"))
        config = types.GenerateContentConfig(
            system_instruction=INSTRUCTIONS,
            response_mime_type="application/json",
            response_schema=Draft,
            temperature=0.0,
        )

        def failure(error: Exception) -> tuple[str, bool]:
            if isinstance(error, errors.APIError):
                return f"HTTP {error.code} {error.status or ''}".strip(), error.code in RETRY_STATUS
            # timeouts and connection errors from the HTTP client
            return f"{type(error).__name__}: {str(error)[:200]}", False

        response = with_retries(
            lambda: client.models.generate_content(
                model=self.model, contents=contents, config=config
            ),
            failure,
            retries=self.retries,
            backoff_s=self.backoff_s,
            label=self.label,
        )
        return response.text or ""
