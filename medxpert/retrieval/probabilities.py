"""Pathology probabilities from the retrieved cases: a similarity-weighted vote of their labels.

Each hit votes with its CheXpert-14 vector: positive counts 1, uncertain 0.5, negative or not
mentioned 0. Weights are a softmax of the scores at `temperature`, taken within each modality,
because image–image scores run far higher than image–report ones; the report and image votes
are then averaged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medxpert.labels import CHEXPERT_LABELS
from medxpert.retrieval.engine import Hit

TEMPERATURE = 0.05
VOTE = {1.0: 1.0, -1.0: 0.5}  # positive, uncertain; anything else (0, NaN) votes 0


@dataclass(frozen=True)
class LabelVote:
    """Per CheXpert-14 label: the probability and the ids of the hits positive for it."""

    probabilities: dict[str, float]
    evidence: dict[str, tuple[str, ...]]


def label_probabilities(hits: Sequence[Hit], temperature: float = TEMPERATURE) -> LabelVote:
    """The similarity-weighted vote of the hits' labels (all zeros when there are no hits)."""
    per_modality = []
    for modality in sorted({hit.modality for hit in hits}):
        group = [hit for hit in hits if hit.modality == modality]
        scores = np.array([hit.score for hit in group], dtype=np.float64) / temperature
        weights = np.exp(scores - scores.max())
        weights /= weights.sum()
        votes = np.array(
            [[VOTE.get(float(v), 0.0) for v in hit.case.labels] for hit in group], dtype=np.float64
        )
        per_modality.append(weights @ votes)
    mean = np.mean(per_modality, axis=0) if per_modality else np.zeros(len(CHEXPERT_LABELS))
    probabilities = {
        label: round(float(p), 4) for label, p in zip(CHEXPERT_LABELS, mean, strict=True)
    }
    evidence = {
        label: tuple(hit.case.case_id for hit in hits if hit.case.labels[i] == 1)
        for i, label in enumerate(CHEXPERT_LABELS)
    }
    return LabelVote(probabilities, evidence)
