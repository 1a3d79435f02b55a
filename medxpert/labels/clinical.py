"""Clinical read-outs of pathology probabilities: ICD-10 suggestions and a triage level.

Both tables are data (`data/icd10.json`, `data/triage.json`), so a site can review and change
them without touching code. Probabilities are a mapping from CheXpert-14 names to [0, 1].
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medxpert.errors import ConfigError
from medxpert.labels.vocabulary import CHEXPERT_LABELS

DATA_DIR = Path(__file__).resolve().parent / "data"
ICD10_PATH = DATA_DIR / "icd10.json"
TRIAGE_PATH = DATA_DIR / "triage.json"
ICD10_THRESHOLD = 0.5


@dataclass(frozen=True)
class ICD10Suggestion:
    """A code suggested for a finding, with the probability and the cases behind it."""

    code: str
    description: str
    finding: str
    probability: float
    evidence: tuple[str, ...] = ()  # ids of the retrieved cases positive for the finding


@dataclass(frozen=True)
class Triage:
    """How soon the study should be read, and the rule that decided it."""

    level: str  # "urgent", "priority" or "routine"
    reason: str
    rule: dict = field(default_factory=dict)  # the rule that fired ({} for the default)


@functools.cache
def icd10_table(path: Path = ICD10_PATH) -> dict[str, dict[str, str]]:
    codes = json.loads(Path(path).read_text(encoding="utf-8"))["codes"]
    unknown = set(codes) - set(CHEXPERT_LABELS)
    if unknown:
        raise ConfigError(f"{path}: findings outside the CheXpert-14 vocabulary: {sorted(unknown)}")
    return codes


def icd10_suggestions(
    probabilities: Mapping[str, float],
    evidence: Mapping[str, Sequence[str]] | None = None,
    threshold: float = ICD10_THRESHOLD,
) -> list[ICD10Suggestion]:
    """A code for every finding at or above `threshold`, most probable first. A code shared by
    several findings (R91, J18.9) is suggested once, for its most probable finding."""
    table, evidence = icd10_table(), evidence or {}
    suggestions: dict[str, ICD10Suggestion] = {}
    for finding, probability in sorted(probabilities.items(), key=lambda item: -item[1]):
        entry = table.get(finding)
        if entry is None or probability < threshold or entry["code"] in suggestions:
            continue
        suggestions[entry["code"]] = ICD10Suggestion(
            entry["code"],
            entry["description"],
            finding,
            round(float(probability), 3),
            tuple(evidence.get(finding, ())),
        )
    return list(suggestions.values())


@functools.cache
def triage_rules(path: Path = TRIAGE_PATH) -> dict:
    rules = json.loads(Path(path).read_text(encoding="utf-8"))
    for rule in rules["rules"]:
        if rule["label"] not in CHEXPERT_LABELS or rule["level"] not in rules["levels"]:
            raise ConfigError(f"{path}: rule {rule} names an unknown label or level.")
    return rules


def triage(probabilities: Mapping[str, float]) -> Triage:
    """The level of the first rule whose finding reaches its threshold, else routine."""
    rules = triage_rules()
    for rule in rules["rules"]:
        probability = float(probabilities.get(rule["label"], 0.0))
        if probability >= rule["min_probability"]:
            reason = (
                f"{rule['label']} probability {probability:.2f} ≥ {rule['min_probability']:.2f}: "
                f"{rule['why']}"
            )
            return Triage(rule["level"], reason, dict(rule))
    return Triage(rules["default"]["level"], rules["default"]["why"])
