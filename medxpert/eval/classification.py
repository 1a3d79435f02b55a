"""Agreement of predicted label vectors with reference label vectors, per label."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medxpert.labels import CHEXPERT_LABELS, NUM_LABELS, UNCERTAIN_POLICIES


@dataclass(frozen=True)
class LabelAgreement:
    """Precision, recall and F1 of one label against a reference."""

    label: str
    support: int  # reference positives
    predicted: int  # predicted positives
    true_positives: int

    @property
    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.support if self.support else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def label_agreement(
    reference: np.ndarray, predicted: np.ndarray, uncertain: str = "positive"
) -> list[LabelAgreement]:
    """Per-label agreement of (n, 14) vectors. A reference positive is 1; a prediction is
    positive when 1, or also when -1 with ``uncertain="positive"`` (U-Ones)."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"uncertain must be one of {UNCERTAIN_POLICIES}")
    reference = np.asarray(reference, dtype=np.float32).reshape(-1, NUM_LABELS)
    predicted = np.asarray(predicted, dtype=np.float32).reshape(-1, NUM_LABELS)
    if reference.shape != predicted.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {predicted.shape}")
    truth = reference == 1
    guess = (predicted == 1) | ((predicted == -1) if uncertain == "positive" else False)
    return [
        LabelAgreement(
            label=name,
            support=int(truth[:, i].sum()),
            predicted=int(guess[:, i].sum()),
            true_positives=int((truth[:, i] & guess[:, i]).sum()),
        )
        for i, name in enumerate(CHEXPERT_LABELS)
    ]
