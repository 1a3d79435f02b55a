"""Contrastive losses: paired InfoNCE and label-aware soft targets for unpaired data.

Unpaired images (e.g. NIH, labels but no report) and unpaired reports (e.g. IU, labels but
no image) are trained into one space as MedCLIP does (Wang et al., EMNLP 2022): the target
for image i and report j is the similarity of their label vectors, so an image is pulled
towards every report that shares its findings, not towards one arbitrary "pair".
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medxpert.labels import CHEXPERT_LABELS

# Labels that define semantic similarity: the findings and No Finding. Support Devices is
# left out: it says nothing about disease, and NIH never labels it.
SEMANTIC_LABELS = tuple(name for name in CHEXPERT_LABELS if name != "Support Devices")
_SEMANTIC_INDEX = [CHEXPERT_LABELS.index(name) for name in SEMANTIC_LABELS]


def semantic_vectors(labels: np.ndarray) -> torch.Tensor:
    """(n, 14) CheXpert vectors → (n, 13) float tensor of positives (uncertain, NaN → 0)."""
    positives = np.asarray(labels, dtype=np.float32)[:, _SEMANTIC_INDEX] == 1
    return torch.from_numpy(positives.astype(np.float32))


def has_semantic_label(labels: np.ndarray) -> np.ndarray:
    """Which rows carry at least one positive semantic label (usable for soft targets)."""
    return semantic_vectors(np.atleast_2d(labels)).sum(dim=1).numpy() > 0


def clip_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over matched (image i, text i) pairs; inputs L2-normalised."""
    logits = logit_scale * image @ text.T
    targets = torch.arange(len(image), device=image.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def shared_clip_loss(
    image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, positives: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE where `positives` (n, n, boolean, diagonal set) marks the pairs that
    count as matches: each row's target spreads evenly over its positives, so two studies with
    the same report are not taught to be each other's negatives."""
    logits = logit_scale * image @ text.T
    targets = positives.float() / positives.float().sum(dim=1, keepdim=True)
    targets_t = positives.T.float() / positives.T.float().sum(dim=1, keepdim=True)
    loss_i = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(targets_t * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


def soft_targets(
    labels_a: torch.Tensor, labels_b: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Row-wise softmax of the cosine similarity of label vectors: (len a, len b)."""
    similarity = F.normalize(labels_a, dim=1) @ F.normalize(labels_b, dim=1).T
    return F.softmax(similarity / temperature, dim=1)


def soft_clip_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    image_labels: torch.Tensor,
    text_labels: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Cross-entropy of image→text and text→image logits against label-similarity targets."""
    logits = logit_scale * image @ text.T
    to_text = soft_targets(image_labels, text_labels, temperature)
    to_image = soft_targets(text_labels, image_labels, temperature)
    loss_i = -(to_text * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    loss_t = -(to_image * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (loss_i + loss_t) / 2


def soft_self_loss(
    features: torch.Tensor,
    logit_scale: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Within one modality: each item's neighbours (itself excluded) should be the items that
    share its labels — a soft supervised-contrastive term that serves image→image search."""
    n = len(features)
    eye = torch.eye(n, dtype=torch.bool, device=features.device)
    logits = (logit_scale * features @ features.T).masked_fill(eye, float("-inf"))
    similarity = F.normalize(labels, dim=1) @ F.normalize(labels, dim=1).T
    targets = F.softmax((similarity / temperature).masked_fill(eye, float("-inf")), dim=1)
    log_probs = F.log_softmax(logits, dim=1).masked_fill(eye, 0.0)
    return -(targets * log_probs).sum(dim=1).mean()


def uniformity_loss(features: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """Wang & Isola's uniformity, log E exp(−t‖x − y‖²) over the batch's distinct pairs: it
    falls as the vectors spread over the sphere, against a space where every X-ray sits at
    cosine 0.99 of every other."""
    squared = torch.pdist(features, p=2).pow(2)
    return torch.logsumexp(-t * squared, dim=0) - math.log(len(squared))
