"""Per-finding reporting thresholds: when the vote of the retrieved studies states a finding.

One threshold of 0.5 for every finding states common findings too often and rare ones never.
`choose_thresholds` picks them on the validation split, against the labelled reference
reports: first, per finding, the threshold with the best F1 of "stated" (findings with fewer
than `MIN_POSITIVES` reference positives keep `DEFAULT_THRESHOLD`); then, finding by finding
(`PASSES` rounds), the threshold that maximises the mean of the micro and macro CheXpert-label
F1 of the whole label vector, "No Finding" included (positive when nothing is stated), which
is what `medxpert eval reports` measures. The second step sees what one finding's threshold
costs the others: stating a rare finding in a normal study also loses its "No Finding".
`medxpert eval thresholds` saves them next to the index as `thresholds.json`, with the
fingerprint of the encoder they were chosen for; the pipeline reads them back (the default for
an encoder they were not chosen for).
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
from medxpert.labels import CHEXPERT_LABELS, LABEL_INDEX, PATHOLOGIES
from medxpert.metrics.text import MIN_MACRO_POSITIVES, micro_macro_f1

logger = logging.getLogger(__name__)

THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
MIN_POSITIVES = 10
PASSES = 2
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
    f1: float  # the finding's own validation F1 at the chosen threshold
    default_f1: float  # at DEFAULT_THRESHOLD
    positives: int


def choose_thresholds(
    probabilities: np.ndarray, reference: np.ndarray, min_positives: int = MIN_POSITIVES
) -> list[ThresholdChoice]:
    """The thresholds for the votes `probabilities` against the reference labels, both (n, 14);
    ties go to the threshold nearest the default."""
    truth = reference == 1
    start: dict[str, float] = {}
    for label in REPORTED:
        i = LABEL_INDEX[label]
        f1 = {t: _f1(probabilities[:, i] >= t, truth[:, i]) for t in GRID}
        enough = truth[:, i].sum() >= min_positives
        start[label] = _best(f1) if enough else DEFAULT_THRESHOLD
    macro_labels = np.flatnonzero(truth.sum(axis=0) >= MIN_MACRO_POSITIVES)

    def score(thresholds: dict[str, float]) -> float:
        return float(
            np.mean(micro_macro_f1(stated(probabilities, thresholds), truth, macro_labels))
        )

    chosen = dict(start)
    for _ in range(PASSES):
        for label in REPORTED:
            options = {t: score({**chosen, label: t}) for t in (*GRID, DEFAULT_THRESHOLD)}
            chosen[label] = _best(options)
    choices = []
    for label in REPORTED:
        vote, positive = probabilities[:, LABEL_INDEX[label]], truth[:, LABEL_INDEX[label]]
        choices.append(
            ThresholdChoice(
                label,
                chosen[label],
                _f1(vote >= chosen[label], positive),
                _f1(vote >= DEFAULT_THRESHOLD, positive),
                int(positive.sum()),
            )
        )
    return choices


def stated(probabilities: np.ndarray, thresholds: Mapping[str, float]) -> np.ndarray:
    """Boolean (n, 14): each finding whose vote reaches its threshold, and "No Finding" where
    no pathology does."""
    found = np.zeros(probabilities.shape, dtype=bool)
    for label, threshold in thresholds.items():
        found[:, LABEL_INDEX[label]] = probabilities[:, LABEL_INDEX[label]] >= threshold
    found[:, LABEL_INDEX["No Finding"]] = ~found[:, [LABEL_INDEX[x] for x in PATHOLOGIES]].any(1)
    return found


def _best(scores: Mapping[float, float]) -> float:
    """The threshold with the best score; ties go to the one nearest the default."""
    return max(scores, key=lambda t: (round(scores[t], 6), -abs(t - DEFAULT_THRESHOLD)))


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
