"""Split free-text radiology reports into sections (FINDINGS, IMPRESSION, ...)."""

from __future__ import annotations

import re

_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z &/()'-]{1,40}):", re.MULTILINE)
_IMPRESSION_NAMES = ("impression", "conclusion", "conclusions", "summary")


def split_sections(text: str) -> dict[str, str]:
    """``{"findings": ..., "impression": ...}`` from upper-case ``NAME:`` headers (lower-cased
    names, whitespace collapsed); text before the first header is dropped."""
    matches = list(_HEADER.finditer(text))
    sections: dict[str, str] = {}
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = " ".join(text[match.end() : end].split())
        name = " ".join(match.group(1).lower().split())
        if body:
            sections[name] = f"{sections[name]} {body}" if name in sections else body
    return sections


def findings_and_impression(text: str) -> tuple[str, str]:
    """(findings, impression) of a report. With neither section present, the impression is
    the last paragraph, as in the MIMIC-CXR authors' section parser."""
    sections = split_sections(text)
    findings = sections.get("findings", "")
    impression = next((sections[name] for name in _IMPRESSION_NAMES if name in sections), "")
    if not findings and not impression:
        paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]
        paragraphs = [p for p in paragraphs if not _HEADER.fullmatch(p + "\n")]
        impression = paragraphs[-1] if paragraphs else ""
        impression = _HEADER.sub("", impression).strip()
    return findings, impression
