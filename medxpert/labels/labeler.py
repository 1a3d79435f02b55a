"""Report labeler: CheXpert-14 labels from free-text radiology reports.

Mentions are found with MedXpert's phrase vocabulary (`data/observations.json`); whether each
mention is negated, uncertain, hypothetical or historical is decided by medspaCy's ConText
algorithm (its default rules plus the radiology modifiers in the same data file).
Per report, an observation is positive if any mention is affirmed, else uncertain if any is
uncertain, else negative if any is negated, else not mentioned (NaN) — CheXpert's
aggregation. "No Finding" follows CheXpert's rule: positive when no pathology is positive
or uncertain.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medxpert.labels.mappings import no_finding_from_pathologies
from medxpert.labels.vocabulary import (
    LABEL_INDEX,
    NEGATIVE,
    POSITIVE,
    UNCERTAIN,
    empty_labels,
)

logger = logging.getLogger(__name__)

VOCABULARY_PATH = Path(__file__).with_name("data") / "observations.json"
_IGNORE = "IGNORE"
_SEPARATOR = "|"


@dataclass(frozen=True)
class Mention:
    """One mention of an observation in a report, with its ConText status."""

    label: str
    text: str
    start_char: int
    status: str  # "positive", "negative", "uncertain" or "ignored" (hypothetical/historical)


class ReportLabeler:
    """Labels report texts into CheXpert-14 vectors: `labeler.label_many(texts)` → (n, 14)."""

    def __init__(self, vocabulary_path: str | Path = VOCABULARY_PATH) -> None:
        self.vocabulary_path = Path(vocabulary_path)
        self._nlp = _build_pipeline(self.vocabulary_path)

    def label(self, text: str) -> np.ndarray:
        """The CheXpert-14 vector of one report."""
        return self.label_many([text])[0]

    def label_many(
        self, texts: Iterable[str], batch_size: int = 64, progress: bool = False
    ) -> np.ndarray:
        """Label many reports; returns float32 (n, 14) with 1 / 0 / -1 / NaN."""
        texts = [text or "" for text in texts]
        docs = self._nlp.pipe(texts, batch_size=batch_size)
        if progress:
            docs = tqdm(docs, total=len(texts), desc="labelling reports", unit="report")
        rows = [_aggregate(_mentions(doc)) for doc in docs]
        return np.stack(rows) if rows else np.empty((0, len(LABEL_INDEX)), dtype=np.float32)

    def mentions(self, text: str) -> list[Mention]:
        """Every mention found in `text`, for showing why a label was given."""
        return _mentions(self._nlp(text or ""))


@functools.cache
def default_labeler() -> ReportLabeler:
    """A process-wide labeler with the packaged vocabulary (built once: ~1 s)."""
    return ReportLabeler()


def label_report(text: str) -> np.ndarray:
    """CheXpert-14 labels of one report with the default labeler."""
    return default_labeler().label(text)


def _mentions(doc) -> list[Mention]:
    found: list[Mention] = []
    for ent in doc.ents:
        if ent.label_ == _IGNORE:
            continue
        if ent._.is_negated:
            status = "negative"
        elif ent._.is_uncertain:
            status = "uncertain"
        elif ent._.is_hypothetical or ent._.is_historical or ent._.is_family:
            status = "ignored"
        else:
            status = "positive"
        for label in ent.label_.split(_SEPARATOR):
            found.append(Mention(label, ent.text, ent.start_char, status))
    return found


def _aggregate(mentions: Sequence[Mention]) -> np.ndarray:
    vector = empty_labels()
    rank = {"positive": 3, "uncertain": 2, "negative": 1}
    value = {"positive": POSITIVE, "uncertain": UNCERTAIN, "negative": NEGATIVE}
    best: dict[str, str] = {}
    for mention in mentions:
        if mention.status not in rank:
            continue
        current = best.get(mention.label)
        if current is None or rank[mention.status] > rank[current]:
            best[mention.label] = mention.status
    for label, status in best.items():
        vector[LABEL_INDEX[label]] = value[status]
    vector[LABEL_INDEX["No Finding"]] = no_finding_from_pathologies(vector)
    return vector


def _build_pipeline(vocabulary_path: Path):
    """A medspaCy pipeline (sentence splitter, target matcher, ConText) with our vocabulary."""
    import medspacy
    from loguru import logger as loguru_logger
    from medspacy.context import ConTextRule
    from medspacy.target_matcher import TargetRule

    loguru_logger.disable("PyRuSH")  # its sentence splitter logs every token at DEBUG
    vocabulary = json.loads(vocabulary_path.read_text(encoding="utf-8"))
    nlp = medspacy.load()

    rules: list[TargetRule] = []
    for label, entries in vocabulary["observations"].items():
        if label not in LABEL_INDEX or label == "No Finding":
            raise ValueError(f"{vocabulary_path}: {label!r} is not a CheXpert-14 observation")
        rules.extend(_target_rule(TargetRule, entry, label) for entry in entries)
    for phrase, labels in vocabulary.get("compound", {}).items():
        unknown = [label for label in labels if label not in LABEL_INDEX]
        if unknown:
            raise ValueError(f"{vocabulary_path}: compound {phrase!r} names unknown {unknown}")
        rules.append(TargetRule(phrase, _SEPARATOR.join(labels)))
    rules.extend(TargetRule(phrase, _IGNORE) for phrase in vocabulary.get("ignore", []))
    nlp.get_pipe("medspacy_target_matcher").add(rules)

    nlp.get_pipe("medspacy_context").add(
        [
            ConTextRule(
                rule["literal"],
                rule["category"],
                pattern=rule.get("pattern"),
                direction=rule.get("direction", "BIDIRECTIONAL"),
            )
            for rule in vocabulary.get("context", [])
        ]
    )
    logger.debug("report labeler: %d target rules from %s", len(rules), vocabulary_path)
    return nlp


def _target_rule(rule_class, entry: str | list, label: str):
    if isinstance(entry, str):
        return rule_class(entry, label)
    literal = " ".join(str(next(iter(token.values()))) for token in entry)
    return rule_class(literal, label, pattern=entry)
