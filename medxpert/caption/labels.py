"""The zero-shot label captioner: CheXzero-style positive / negative prompts per observation,
scored with the dual encoder, calibrated, and written as a short caption.

For observation c the margin is m(c) = s · (cos(image, positive prompt) − cos(image, negative
prompt)), with s the model's learned logit scale (Tiu et al., Nat. Biomed. Eng. 2022). Raw,
softmax(m) is poorly calibrated for a small fine-tuned model (every observation lands near 0.5),
so `calibrate` fits p(c) = σ(a·m + b) per observation (Platt scaling) on labelled images, in
practice the case library's own train + val images. Observations without enough labelled
positives and negatives there are left out rather than guessed.
"""

from __future__ import annotations

import numpy as np

from medxpert.caption.base import Caption
from medxpert.data.images import ImageSource
from medxpert.encoders import DualEncoder
from medxpert.labels import CHEXPERT_LABELS

# Observations the caption may name. "No Finding" and "Support Devices" are not findings to
# name; "Pleural Other" and "Enlarged Cardiomediastinum" are written out in plain words.
PROMPTS: dict[str, tuple[str, str]] = {
    "Cardiomegaly": ("Cardiomegaly. The heart is enlarged.", "Heart size is normal."),
    "Lung Opacity": ("There is an airspace opacity.", "The lungs are clear."),
    "Lung Lesion": ("There is a pulmonary nodule or mass.", "No pulmonary nodule or mass."),
    "Edema": ("Pulmonary edema.", "No pulmonary edema."),
    "Consolidation": ("Focal consolidation.", "No focal consolidation."),
    "Pneumonia": ("Findings consistent with pneumonia.", "No evidence of pneumonia."),
    "Atelectasis": ("Atelectasis.", "No atelectasis."),
    "Pneumothorax": ("Pneumothorax.", "No pneumothorax."),
    "Pleural Effusion": ("Pleural effusion.", "No pleural effusion."),
    "Fracture": ("Rib fracture.", "No fracture."),
}
PERTINENT_NEGATIVES = ("Pneumothorax", "Pleural Effusion", "Consolidation", "Edema")
MIN_CALIBRATION = 10  # labelled positives and negatives needed to calibrate an observation
NAMES = {"Edema": "pulmonary oedema", "Lung Lesion": "nodule or mass", "Lung Opacity": "opacity"}


class LabelCaptioner:
    """`captioner.caption(image)` → a `Caption` naming the likely findings and the pertinent
    negatives, with the calibrated probability of every calibrated observation."""

    name = "labels"

    def __init__(self, encoder: DualEncoder, threshold: float = 0.5) -> None:
        self.encoder, self.threshold = encoder, threshold
        self.labels = [label for label in CHEXPERT_LABELS if label in PROMPTS]
        positive = encoder.encode_texts(
            [PROMPTS[label][0] for label in self.labels], progress=False
        )
        negative = encoder.encode_texts(
            [PROMPTS[label][1] for label in self.labels], progress=False
        )
        self._direction = positive - negative  # (labels, d): the margin is a dot product
        self._scale = float(encoder.model.logit_scale.detach().exp().cpu())
        self.calibration: dict[str, tuple[float, float]] = {}  # label → (a, b)

    def margins(self, vectors: np.ndarray) -> np.ndarray:
        """(n, labels) zero-shot margins of image vectors (n, d)."""
        return self._scale * (np.atleast_2d(vectors).astype(np.float32) @ self._direction.T)

    def calibrate(self, vectors: np.ndarray, labels: np.ndarray) -> dict[str, int]:
        """Fit σ(a·margin + b) per observation on image `vectors` with CheXpert-14 `labels`
        (n, 14): rows labelled 1 or 0 count, uncertain and unmentioned do not. Returns the
        number of labelled rows used per calibrated observation."""
        from sklearn.linear_model import LogisticRegression

        margins, used = self.margins(vectors), {}
        for j, label in enumerate(self.labels):
            column = np.asarray(labels, dtype=np.float32)[:, CHEXPERT_LABELS.index(label)]
            known = (column == 1) | (column == 0)
            positives = int((column == 1).sum())
            if positives < MIN_CALIBRATION or int(known.sum()) - positives < MIN_CALIBRATION:
                continue
            fit = LogisticRegression().fit(margins[known, j : j + 1], column[known] == 1)
            self.calibration[label] = (float(fit.coef_[0, 0]), float(fit.intercept_[0]))
            used[label] = int(known.sum())
        return used

    def probabilities(self, image: ImageSource | None = None, *, vector=None) -> dict[str, float]:
        """Calibrated probability per calibrated observation (give an image or its vector);
        before `calibrate`, the raw softmax of the margins."""
        if vector is None:
            vector = self.encoder.encode_images([image], progress=False)[0]
        margins = self.margins(vector)[0]
        if not self.calibration:
            return {
                label: round(float(1 / (1 + np.exp(-m))), 4)
                for label, m in zip(self.labels, margins, strict=True)
            }
        return {
            label: round(float(1 / (1 + np.exp(-(a * margins[j] + b)))), 4)
            for j, label in enumerate(self.labels)
            if label in self.calibration
            for a, b in [self.calibration[label]]
        }

    def caption(self, image: ImageSource | None = None, *, vector=None) -> Caption:
        probabilities = self.probabilities(image, vector=vector)
        return Caption(describe(probabilities, self.threshold), self.name, probabilities)


def describe(probabilities: dict[str, float], threshold: float = 0.5) -> str:
    """'Likely pleural effusion (0.71) and cardiomegaly (0.64). No pneumothorax (0.12).'"""
    likely = sorted(
        ((p, label) for label, p in probabilities.items() if p >= threshold), reverse=True
    )
    unlikely = [
        (probabilities[label], label)
        for label in PERTINENT_NEGATIVES
        if label in probabilities and probabilities[label] < threshold
    ]
    parts = []
    if likely:
        named = [f"{_name(label)} ({p:.2f})" for p, label in likely]
        parts.append(f"Likely {_join(named, 'and')}.")
    else:
        parts.append(f"No finding reaches a probability of {threshold:.2f}.")
    if unlikely:
        named = [f"{_name(label)} ({p:.2f})" for p, label in unlikely]
        parts.append(f"No {_join(named, 'or')}.")
    return " ".join(parts)


def _name(label: str) -> str:
    return NAMES.get(label, label.lower())


def _join(items: list[str], conjunction: str) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"
