"""Training data: paired (image, report), unpaired images and unpaired reports, from cases."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from medxpert.data import Case, open_image
from medxpert.train.losses import has_semantic_label

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingSets:
    """Cases sorted by what they can teach: pairs, labelled images, labelled reports."""

    paired: list[Case]
    images: list[Case]
    texts: list[Case]

    def describe(self) -> str:
        return (
            f"{len(self.paired)} image-report pairs, {len(self.images)} labelled images, "
            f"{len(self.texts)} labelled reports"
        )


def training_sets(cases: Iterable[Case], sections: Sequence[str]) -> TrainingSets:
    """Image + text → paired; image only → unpaired image; text only → unpaired report (one
    per study, since a study's images share the report). Unpaired items need a positive
    label to take part in the label-aware loss; the others are dropped (and counted)."""
    paired, images, texts, seen_studies, dropped = [], [], [], set(), 0
    for case in cases:
        text = case.text(sections)
        if case.has_image and text:
            paired.append(case)
        elif case.has_image:
            if has_semantic_label(case.labels)[0]:
                images.append(case)
            else:
                dropped += 1
        elif text and case.study_id not in seen_studies:
            seen_studies.add(case.study_id)
            if has_semantic_label(case.labels)[0]:
                texts.append(case)
            else:
                dropped += 1
    if dropped:
        logger.info("training data: %d unpaired cases without a positive label left out", dropped)
    return TrainingSets(paired, images, texts)


class CaseImages(Dataset):
    """(image tensor, index) for the cases' images, through `transform`."""

    def __init__(self, cases: Sequence[Case], transform: Callable) -> None:
        self.cases, self.transform = list(cases), transform

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(open_image(self.cases[index].image_path)), index


def label_matrix(cases: Sequence[Case]) -> np.ndarray:
    return np.stack([case.labels for case in cases]) if cases else np.empty((0, 14), np.float32)
