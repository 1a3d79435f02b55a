"""De-identification of free text before it leaves the machine (the Gemini writer).

Strips what the HIPAA Safe Harbor list names and reports carry: dates, names after a title or
a name field, medical record and other long numbers, phone numbers, e-mail addresses and URLs.
Rule-based and conservative: it may remove a number that was harmless (a measurement is kept
when it has a unit). It is a safeguard, not a guarantee; the default writer sends nothing.
"""

from __future__ import annotations

import re

PLACEHOLDERS = {
    "email": "[EMAIL]",
    "url": "[URL]",
    "date": "[DATE]",
    "phone": "[PHONE]",
    "id": "[ID]",
    "name": "[NAME]",
}
_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|Jun(?:e)?|Jul(?:y)?|Aug(?:ust)?|"
    r"Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("email", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("url", re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)),
    (
        "date",
        re.compile(
            r"\b(?:\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}|"
            rf"\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTHS}\.?,?\s+\d{{2,4}}|"
            rf"{_MONTHS}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{2,4}}|"
            rf"{_MONTHS}\.?\s+\d{{4}})\b",
            re.IGNORECASE,
        ),
    ),
    (
        "phone",
        re.compile(
            r"(?<!\w)(?:\+?\d{1,3}[\s.-]?)?(?:\(\d{2,4}\)|\d{2,4})[\s.-]\d{3}[\s.-]?\d{3,4}\b"
        ),
    ),
    (
        "id",
        re.compile(
            r"\b(?:MRN|MR#|medical record(?: number)?|record|accession|patient id|id|ssn)\b"
            r"\s*(?:no\.?|number|#)?\s*[:#]?\s*(?=[A-Z-]*\d)[A-Z0-9-]{4,}\b",
            re.IGNORECASE,
        ),
    ),
    ("id", re.compile(r"\b\d{6,}\b")),
    (
        "name",
        re.compile(r"\b(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+[A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?"),
    ),
    (
        "name",
        re.compile(
            r"\b(?:patient|name|pt|physician|doctor|referring|signed by)\s*(?:name)?\s*:\s*"
            r"[A-Z][a-z'-]+(?:\s+[A-Z][a-z'-]+)?",
            re.IGNORECASE,
        ),
    ),
]


def deidentify(text: str | None) -> str:
    """`text` with identifiers replaced by placeholders such as [DATE] and [NAME]."""
    if not text:
        return ""
    for kind, pattern in _RULES:
        text = pattern.sub(PLACEHOLDERS[kind], text)
    return text
