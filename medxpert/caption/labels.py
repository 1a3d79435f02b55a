"""The zero-shot label captioner: CheXzero-style positive / negative prompts per observation,
scored with the dual encoder, written as a short caption.

For observation c, p(c) = softmax(s · [cos(image, positive prompt), cos(image, negative
prompt)])[0], where s is the model's learned logit scale (Tiu et al., Nat. Biomed. Eng. 2022).
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
NAMES = {"Edema": "pulmonary oedema", "Lung Lesion": "nodule or mass", "Lung Opacity": "opacity"}


class LabelCaptioner:
    """`captioner.caption(image)` → a `Caption` naming the likely findings and the pertinent
    negatives, with the zero-shot probability of every prompted observation."""

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
        self._prompts = np.stack([positive, negative], axis=1)  # (labels, 2, d)
        self._scale = float(encoder.model.logit_scale.detach().exp().cpu())

    def probabilities(self, image: ImageSource | None = None, *, vector=None) -> dict[str, float]:
        """Zero-shot probability per prompted observation (give an image or its vector)."""
        if vector is None:
            vector = self.encoder.encode_images([image], progress=False)[0]
        logits = self._scale * (self._prompts @ np.asarray(vector, dtype=np.float32).ravel())
        logits -= logits.max(axis=1, keepdims=True)
        odds = np.exp(logits)
        p = odds[:, 0] / odds.sum(axis=1)
        return {label: round(float(v), 4) for label, v in zip(self.labels, p, strict=True)}

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
