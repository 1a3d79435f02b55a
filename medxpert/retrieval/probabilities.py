"""Pathology probabilities from the retrieved cases: a similarity-weighted vote of their labels.

Each hit (a study) votes with its CheXpert-14 vector: positive counts 1, uncertain 0.5,
negative or not mentioned 0. Weights are a softmax of the cosine of each hit's best evidence at
`temperature`, taken within that evidence's modality, because image–image cosines run far
higher than image–report ones; the report and image votes are then averaged.

For an image query the vote can be blended with the zero-shot probabilities of the label
captioner: p = (1 − w) · vote + w · zero-shot, for the observations the captioner scores. The
weight w is chosen on the validation split (`medxpert eval blend`) and saved next to the index
as `blend.json`, with the fingerprint of the encoder it was chosen for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from medxpert.atomic import atomic_write_json
from medxpert.errors import ConfigError
from medxpert.labels import CHEXPERT_LABELS
from medxpert.retrieval.hits import Hit

logger = logging.getLogger(__name__)

TEMPERATURE = 0.05
BLEND_FILE = "blend.json"
VOTE = {1.0: 1.0, -1.0: 0.5}  # positive, uncertain; anything else (0, NaN) votes 0


@dataclass(frozen=True)
class LabelVote:
    """Per CheXpert-14 label: the probability and the ids of the hits positive for it."""

    probabilities: dict[str, float]
    evidence: dict[str, tuple[str, ...]]
    zero_shot_weight: float = 0.0  # w of the zero-shot blend (0: the vote alone)


def hit_weights(hits: Sequence[Hit], temperature: float = TEMPERATURE) -> np.ndarray:
    """Each hit's share of the vote: a softmax of its cosine at `temperature` within its
    modality, the modalities weighted equally (the weights sum to 1; empty for no hits)."""
    weights = np.zeros(len(hits), dtype=np.float64)
    modalities = sorted({hit.modality for hit in hits})
    for modality in modalities:
        rows = [i for i, hit in enumerate(hits) if hit.modality == modality]
        scores = np.array([hits[i].cosine for i in rows], dtype=np.float64) / temperature
        share = np.exp(scores - scores.max())
        weights[rows] = share / share.sum() / len(modalities)
    return weights


def label_probabilities(hits: Sequence[Hit], temperature: float = TEMPERATURE) -> LabelVote:
    """The similarity-weighted vote of the hits' labels (all zeros when there are no hits)."""
    votes = np.array(
        [[VOTE.get(float(v), 0.0) for v in hit.case.labels] for hit in hits], dtype=np.float64
    ).reshape(len(hits), len(CHEXPERT_LABELS))
    mean = hit_weights(hits, temperature) @ votes
    probabilities = {
        label: round(float(p), 4) for label, p in zip(CHEXPERT_LABELS, mean, strict=True)
    }
    evidence = {
        label: tuple(hit.case.case_id for hit in hits if hit.case.labels[i] == 1)
        for i, label in enumerate(CHEXPERT_LABELS)
    }
    return LabelVote(probabilities, evidence)


def blend(vote: LabelVote, zero_shot: Mapping[str, float], weight: float) -> LabelVote:
    """(1 − `weight`) · vote + `weight` · zero-shot for the labels in `zero_shot`; the others,
    and the evidence (the retrieved cases), stay the vote's."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"the zero-shot blend weight must lie in [0, 1], got {weight}.")
    if weight == 0.0 or not zero_shot:
        return vote
    probabilities = {
        label: round((1 - weight) * p + weight * float(zero_shot[label]), 4)
        if label in zero_shot
        else p
        for label, p in vote.probabilities.items()
    }
    return replace(vote, probabilities=probabilities, zero_shot_weight=weight)


def write_blend_weight(index_dir: str | Path, weight: float, fingerprint: str, **meta) -> Path:
    """Save the chosen weight next to the index, for the encoder with `fingerprint`."""
    record = {"zero_shot_weight": float(weight), "encoder_fingerprint": fingerprint, **meta}
    return atomic_write_json(Path(index_dir) / BLEND_FILE, record)


def read_blend_weight(index_dir: str | Path, fingerprint: str) -> float:
    """The saved weight, or 0 (the vote alone) when none was chosen for this encoder."""
    path = Path(index_dir) / BLEND_FILE
    if not path.is_file():
        return 0.0
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        weight = float(record["zero_shot_weight"])
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"{path} is unreadable ({error}); delete it or run `medxpert eval blend`."
        ) from error
    if record.get("encoder_fingerprint") != fingerprint:
        logger.warning("%s was chosen for another encoder; using the vote alone", path)
        return 0.0
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"{path}: zero_shot_weight {weight} is outside [0, 1].")
    return weight
