"""Per-finding reporting thresholds: when the vote of the retrieved studies states a finding.

One threshold of 0.5 for every finding states common findings too often and rare ones never.
`choose_thresholds` picks, per finding, the vote threshold that maximises the F1 of "stated"
against the labelled reference reports of the validation split (findings with fewer than
`MIN_POSITIVES` reference positives keep `DEFAULT_THRESHOLD`). `medxpert eval thresholds` saves
them next to the index as `thresholds.json`, with the fingerprint of the encoder they were
chosen for; the pipeline reads them back (the default for an encoder they were not chosen for).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medxpert.atomic import atomic_write_json
from medxpert.errors import ConfigError
from medxpert.labels import CHEXPERT_LABELS

logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
MIN_POSITIVES = 10
# A finding is never stated on less than a fifth of the vote: below that, a handful of
# validation positives chooses thresholds that state rare findings in most reports.
GRID = tuple(round(t, 2) for t in np.arange(0.2, 0.951, 0.05))
REPORTED = tuple(label for label in CHEXPERT_LABELS if label != "No Finding")


def default_thresholds() -> dict[str, float]:
    return dict.fromkeys(REPORTED, DEFAULT_THRESHOLD)


@dataclass(frozen=True)
class ThresholdChoice:
    """The threshold chosen for one finding and the validation figures behind it."""

    label: str
    threshold: float
    f1: float  # at the chosen threshold (at the default when too few positives)
    default_f1: float  # at DEFAULT_THRESHOLD
    positives: int


def choose_thresholds(
    probabilities: np.ndarray, reference: np.ndarray, min_positives: int = MIN_POSITIVES
) -> list[ThresholdChoice]:
    """Per finding, the grid threshold with the best F1 of ``probabilities >= t`` against the
    positive reference labels (n, 14); ties go to the threshold nearest the default."""
    choices = []
    for i, label in enumerate(CHEXPERT_LABELS):
        if label == "No Finding":
            continue
        truth = reference[:, i] == 1
        f1 = {t: _f1(probabilities[:, i] >= t, truth) for t in GRID}
        if truth.sum() < min_positives:
            best = DEFAULT_THRESHOLD
        else:
            best = max(GRID, key=lambda t: (round(f1[t], 6), -abs(t - DEFAULT_THRESHOLD)))
        choices.append(
            ThresholdChoice(label, best, f1[best], f1[DEFAULT_THRESHOLD], int(truth.sum()))
        )
    return choices


def _f1(predicted: np.ndarray, truth: np.ndarray) -> float:
    tp = float((predicted & truth).sum())
    denominator = float(predicted.sum() + truth.sum())
    return 2 * tp / denominator if denominator else 0.0


def write_thresholds(
    index_dir: str | Path, choices: list[ThresholdChoice], fingerprint: str, **meta
) -> Path:
    """Save the chosen thresholds next to the index, for the encoder with `fingerprint`."""
    record = {
        "thresholds": {c.label: c.threshold for c in choices},
        "validation": {
            c.label: {"f1": round(c.f1, 4), "default_f1": round(c.default_f1, 4), "n": c.positives}
            for c in choices
        },
        "encoder_fingerprint": fingerprint,
        **meta,
    }
    return atomic_write_json(Path(index_dir) / THRESHOLDS_FILE, record)


def read_thresholds(index_dir: str | Path, fingerprint: str) -> dict[str, float]:
    """The saved thresholds, or the default for every finding when none were chosen for this
    encoder."""
    path = Path(index_dir) / THRESHOLDS_FILE
    thresholds = default_thresholds()
    if not path.is_file():
        return thresholds
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        saved = {str(k): float(v) for k, v in record["thresholds"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ConfigError(
            f"{path} is unreadable ({error}); delete it or run `medxpert eval thresholds`."
        ) from error
    if record.get("encoder_fingerprint") != fingerprint:
        logger.warning("%s was chosen for another encoder; using %.2f", path, DEFAULT_THRESHOLD)
        return thresholds
    return validated(saved, str(path))


def validated(thresholds: Mapping[str, float], where: str) -> dict[str, float]:
    """`thresholds` over the default, checked: known findings, values in (0, 1]."""
    unknown = sorted(set(thresholds) - set(REPORTED))
    if unknown:
        raise ConfigError(f"{where}: unknown finding(s) {unknown}; known: {', '.join(REPORTED)}.")
    bad = {k: v for k, v in thresholds.items() if not 0.0 < v <= 1.0}
    if bad:
        raise ConfigError(f"{where}: thresholds must lie in (0, 1], got {bad}.")
    return {**default_thresholds(), **thresholds}
