"""Training data: paired studies, unpaired labelled images, and labelled reports.

Inputs reach the model through feeds. With the feature cache, a feed holds the output of the
towers' frozen stages for every training item, computed once, and runs only the trainable
stages each step (augmenting the image features by a random resized crop); without it, a feed
decodes and augments the images and tokenizes the texts every step.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medxpert.data import Case, Study, group_studies, open_image, report_groups
from medxpert.encoders import Augmentation, DualEncoder
from medxpert.train.losses import has_semantic_label

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSets:
    """Cases sorted by what they can teach.

    `studies`: studies with images and a report (their views share it); `images`: labelled
    images without a report; `texts`: labelled reports, one per study (paired studies'
    included), which unpaired images are matched with by their labels."""

    studies: list[Study]
    images: list[Case]
    texts: list[Study]

    def describe(self) -> str:
        views = sum(len(study.images) for study in self.studies)
        return (
            f"{len(self.studies)} paired studies ({views} images), {len(self.images)} labelled "
            f"images, {len(self.texts)} labelled reports"
        )


def training_sets(cases: Iterable[Case], sections: Sequence[str]) -> TrainingSets:
    """Studies with images and text → paired; image-only cases with a positive label →
    unpaired images; every study with text and a positive label → the report pool. Unpaired
    items without a positive label cannot take part in the label-aware loss (counted)."""
    studies, images, texts, dropped = [], [], [], 0
    for study in group_studies(cases):
        text, labelled = study.text(sections), bool(has_semantic_label(study.labels)[0])
        if text and labelled:
            texts.append(study)
        if study.images and text:
            studies.append(study)
        elif study.images:
            images += [case for case in study.images if has_semantic_label(case.labels)[0]]
            dropped += sum(not has_semantic_label(case.labels)[0] for case in study.images)
        elif not labelled:
            dropped += 1
    if dropped:
        logger.info("training data: %d unpaired items without a positive label left out", dropped)
    return TrainingSets(studies, images, texts)


def shared_positive_matrix(texts: Sequence[str], labels: np.ndarray, mode: str) -> torch.Tensor:
    """(n, n) boolean: which items of a paired batch count as each other's positives.

    "none": only the item itself; "text": also items whose reports are identical once
    normalised (many IU studies share "No acute cardiopulmonary abnormality."); "labels":
    also items with identical positive-label vectors."""
    n = len(texts)
    same = np.eye(n, dtype=bool)
    if mode in ("text", "labels"):
        groups = report_groups(texts)
        same |= groups[:, None] == groups[None, :]
    if mode == "labels":
        positives = np.asarray(labels) == 1
        labelled = positives.any(axis=1)
        identical = (positives[:, None, :] == positives[None, :, :]).all(axis=2)
        same |= identical & labelled[:, None] & labelled[None, :]
    return torch.from_numpy(same)


class ImageFeed:
    """Image embeddings of training items by index, with gradients through the trainable
    stages only."""

    def __init__(
        self,
        encoder: DualEncoder,
        paths: Sequence[str],
        *,
        cached: bool,
        augment: Augmentation | None,
        seed: int,
    ) -> None:
        self.encoder, self.paths, self.augment = encoder, list(paths), augment
        self.rng = np.random.default_rng(seed)
        self.features: torch.Tensor | None = None
        if cached:
            self.features = encoder.image_prefix_features(self.paths, progress=True)
        self.transform = encoder.image_transform(augment)

    def embed(self, index: Sequence[int]) -> torch.Tensor:
        device = self.encoder.device
        if self.features is None:
            batch = torch.stack([self.transform(open_image(self.paths[i])) for i in index])
            return self.encoder.model.encode_image(batch.to(device), normalize=True)
        batch = self.features[list(index)]
        if self.augment is not None:
            batch = _crop_features(batch, self.augment, self.rng)
        stages = self.encoder.image_stages
        return F.normalize(stages.suffix(batch.to(device)), dim=-1)


class TextFeed:
    """Text embeddings of training reports by index (pooled frozen transformer output cached
    when the whole text transformer is frozen)."""

    def __init__(self, encoder: DualEncoder, texts: Sequence[str], *, cached: bool) -> None:
        self.encoder, self.texts = encoder, list(texts)
        self.features: torch.Tensor | None = None
        if cached and encoder.text_tower_frozen():
            self.features = encoder.text_prefix_features(self.texts, progress=True)

    def embed(self, index: Sequence[int]) -> torch.Tensor:
        device = self.encoder.device
        if self.features is None:
            tokens = self.encoder.tokenize([self.texts[i] for i in index]).to(device)
            return self.encoder.model.encode_text(tokens, normalize=True)
        projected = self.encoder.text_stages.suffix(self.features[list(index)].to(device))
        return F.normalize(projected, dim=-1)


def _crop_features(
    features: torch.Tensor, augment: Augmentation, rng: np.random.Generator
) -> torch.Tensor:
    """A random resized crop of each feature map (scale and aspect as `augment` gives for
    images), resized back: the crop augmentation, applied after the frozen stages."""
    _, _, height, width = features.shape
    crops = []
    for item in features:
        scale = rng.uniform(*augment.crop_scale)
        ratio = np.exp(rng.uniform(*np.log(augment.crop_ratio)))
        h = int(np.clip(np.rint(np.sqrt(scale / ratio) * height), 1, height))
        w = int(np.clip(np.rint(np.sqrt(scale * ratio) * width), 1, width))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = item[None, :, top : top + h, left : left + w]
        crops.append(F.interpolate(crop, size=(height, width), mode="bilinear"))
    return torch.cat(crops)


def label_matrix(cases: Sequence[Case | Study]) -> np.ndarray:
    return np.stack([case.labels for case in cases]) if cases else np.empty((0, 14), np.float32)
