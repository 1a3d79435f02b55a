"""Image preprocessing for the image tower, with light chest X-ray augmentation for training.

No horizontal flips: laterality matters on a chest X-ray (the heart is on the left).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms as T

RESIZE_MODES = ("longest", "shortest", "squash")


@dataclass(frozen=True)
class Augmentation:
    """Training-time augmentation strengths."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    rotation_degrees: float = 7.0
    brightness: float = 0.2
    contrast: float = 0.2


class ToRGB:
    """Grayscale (or any mode) → RGB, repeating the channel."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB")


class PadToSquare:
    """Pad an image to a square, centred, with black (the longer side is kept)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        side = max(image.size)
        if image.width == image.height:
            return image
        canvas = Image.new(image.mode, (side, side), 0)
        canvas.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        return canvas


def image_transform(
    size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    resize_mode: str = "longest",
    augmentation: Augmentation | None = None,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image (any mode; grayscale repeated to RGB) → normalised (3, size, size) tensor."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {resize_mode!r}")
    bicubic = T.InterpolationMode.BICUBIC
    steps: list[Callable] = [ToRGB()]
    if resize_mode == "longest":
        steps += [PadToSquare(), T.Resize((size, size), interpolation=bicubic)]
    elif resize_mode == "shortest":
        steps += [T.Resize(size, interpolation=bicubic), T.CenterCrop(size)]
    else:
        steps += [T.Resize((size, size), interpolation=bicubic)]
    if augmentation is not None:
        steps += [
            T.RandomResizedCrop(
                size,
                scale=augmentation.crop_scale,
                ratio=augmentation.crop_ratio,
                interpolation=bicubic,
            ),
            T.RandomRotation(
                augmentation.rotation_degrees, interpolation=T.InterpolationMode.BILINEAR
            ),
            T.ColorJitter(brightness=augmentation.brightness, contrast=augmentation.contrast),
        ]
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)
