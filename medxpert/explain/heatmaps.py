"""Heatmaps of what drives a finding's score or a retrieved image's similarity.

    explainer = Explainer(pipeline.engine.encoder, pipeline.captioner)
    maps = explainer.finding_maps("cxr.png")                  # {finding: (H, W) in [0, 1]}
    query_map, retrieved_map = explainer.similarity_maps("cxr.png", hit.case.image_path)

Method: Integrated Gradients (Sundararajan et al., ICML 2017, Captum's `IntegratedGradients`)
at the image tower's last spatial feature map, from a blurred baseline: the image under a
Gaussian blur of radius 1/32 of its longer side (Fong & Vedaldi, ICCV 2017; Sturmfels et al.,
Distill 2020), preprocessed exactly like the image. Behind a timm CNN's last feature map come
only global pooling and the projection, so each channel's gradient is the same at every
position and the map, summed over channels, is Grad-CAM's weighted sum of activations
(Selvaraju et al., ICCV 2017) with two changes: the activations are taken relative to the
baseline's and the channel weights are averaged along the path from it. The map's cells then
add up to the target's change from the blurred image (IG's completeness), and a blank image,
which its blur leaves unchanged, gives exactly zero everywhere. Plain Grad-CAM does not: zero
padding makes a constant input's feature maps vary towards the borders. (A blank baseline
gives flat maps too, but from it most of a similarity's rise is the image looking like a chest
X-ray at all, which a randomly initialised tower follows as well: docs/heatmaps.md.) Towers
without a spatial feature map (ViTs, open_clip's own towers) fall back to Integrated Gradients
on the input pixels: a full tower forward per step, finer and noisier.

Targets: a finding's zero-shot margin s · cos(image, positive − negative prompt) (the
captioner's `margins`, linear in the normalised embedding), and for a retrieved image the
cosine of the two image embeddings, over either image with the other's embedding fixed. A map
shows the positive part of the attributions, upsampled through the preprocessing's resize and
pad (or crop) to the image's size and divided by its maximum: 1 where the image's detail most
raises the target above its blurred copy's, 0 where it does not raise it at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import ImageFilter

from medxpert.data.images import ImageSource, open_image
from medxpert.encoders import DualEncoder
from medxpert.errors import QueryError

BLUR = 1 / 32  # the baseline's blur radius, of the image's longer side
STEPS = 16  # Gauss-Legendre points (completeness error < 1e-6 on the default model)


@dataclass(frozen=True)
class Features:
    """An image at the layer its maps are of, with its baseline and its embedding."""

    size: tuple[int, int]  # the image's (width, height)
    activations: torch.Tensor  # (1, C, h, w)
    baseline: torch.Tensor  # (1, C, h, w): the blurred image at the same layer
    embedding: torch.Tensor  # (1, d), L2-normalised


@dataclass(frozen=True)
class TowerSplit:
    """The image tower as `head(body(pixels))`; the maps are of `body`'s output."""

    body: Callable[[torch.Tensor], torch.Tensor]
    head: Callable[[torch.Tensor], torch.Tensor]
    layer: str


class Explainer:
    """Finding and similarity heatmaps for one encoder and (for findings) its label
    captioner."""

    def __init__(self, encoder: DualEncoder, captioner=None) -> None:
        self.encoder, self.captioner = encoder, captioner
        self._transform = encoder.image_transform()
        with _autograd(encoder.model), torch.no_grad():
            self.split = split_tower(encoder.model.visual, int(encoder.preprocess["size"]))

    @property
    def findings(self) -> list[str]:
        """The findings the captioner scores: its calibrated ones, or all before calibration."""
        calibration = getattr(self.captioner, "calibration", None) or {}
        labels = getattr(self.captioner, "labels", [])
        return [label for label in labels if not calibration or label in calibration]

    def features(self, image: ImageSource | Features) -> Features:
        """One tower forward of the image and its blurred baseline (in one batch, so that a
        blank image and its baseline, equal, give identical activations)."""
        if isinstance(image, Features):
            return image
        picture = open_image(image)
        blurred = picture.filter(ImageFilter.GaussianBlur(BLUR * max(picture.size)))
        batch = torch.stack([self._transform(picture), self._transform(blurred)])
        with _autograd(self.encoder.model), torch.no_grad():
            activations = self.split.body(batch.to(self.encoder.device))
            embedding = _normalise(self.split.head(activations[:1]))
        return Features(picture.size, activations[:1], activations[1:], embedding)

    def finding_maps(
        self, image: ImageSource | Features, findings: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """A map per finding (default: every finding the captioner scores) of the image regions
        that raise its zero-shot margin."""
        names = self.findings if findings is None else list(findings)
        unknown = sorted(set(names) - set(self.findings))
        if unknown:
            raise QueryError(
                f"no heatmap for {', '.join(unknown)}: the captioner scores "
                f"{', '.join(self.findings) or 'no findings'}."
            )
        if not names:
            return {}
        weights = self._margin_weights([self.captioner.labels.index(name) for name in names])
        maps = self._maps(self.features(image), lambda e: _normalise(e) @ weights)
        return dict(zip(names, maps, strict=True))

    def similarity_maps(
        self, query: ImageSource | Features, retrieved: ImageSource | Features
    ) -> tuple[np.ndarray, np.ndarray]:
        """Maps of the regions of the query, and of the retrieved image, that raise the
        cosine of their embeddings (each with the other image's embedding fixed)."""
        query, retrieved = self.features(query), self.features(retrieved)
        return (
            self._maps(query, lambda e: _normalise(e) @ retrieved.embedding.T)[0],
            self._maps(retrieved, lambda e: _normalise(e) @ query.embedding.T)[0],
        )

    def _margin_weights(self, columns: list[int]) -> torch.Tensor:
        """(d, columns): the margins are linear in the normalised embedding, so the captioner's
        margins of the unit vectors are their weights."""
        if not hasattr(self.captioner, "margins"):
            raise QueryError("finding heatmaps need the label captioner (it scores findings).")
        weights = self.captioner.margins(np.eye(self.encoder.embed_dim, dtype=np.float32))
        with torch.inference_mode(False):  # a tensor the backward pass may save
            return torch.from_numpy(weights[:, columns]).to(self.encoder.device)

    def _maps(
        self, features: Features, target: Callable[[torch.Tensor], torch.Tensor]
    ) -> list[np.ndarray]:
        """The maps, in [0, 1] at the image's size, of each column of `target(embedding)`."""
        from captum.attr import IntegratedGradients

        with _autograd(self.encoder.model):
            columns = target(features.embedding).shape[1]
            inputs = features.activations.expand(columns, *features.activations.shape[1:])
            attributions = IntegratedGradients(lambda a: target(self.split.head(a))).attribute(
                inputs.clone(),
                baselines=features.baseline.expand_as(inputs).clone(),
                target=list(range(columns)),
                n_steps=STEPS,
                internal_batch_size=STEPS,  # a backward pass per target
            )
        grid = attributions.detach().float().sum(dim=1).clamp(min=0)
        maps = to_image_grid(grid, self.encoder.preprocess, features.size)
        return [_unit_max(heatmap) for heatmap in maps.cpu().numpy()]


def split_tower(visual: torch.nn.Module, size: int) -> TowerSplit:
    """Split an open_clip image tower at its last spatial feature map: a timm tower's
    `trunk.forward_features` when it gives (N, C, h, w) maps (CNNs); otherwise at the input
    (timm ViTs give tokens, open_clip's own towers have no trunk)."""
    trunk = getattr(visual, "trunk", None)
    if hasattr(trunk, "forward_features") and hasattr(trunk, "forward_head"):
        probe = trunk.forward_features(torch.zeros(1, 3, size, size, device=_device(visual)))
        if probe.ndim == 4 and getattr(trunk, "output_fmt", "NCHW") == "NCHW":
            return TowerSplit(
                trunk.forward_features,
                lambda maps: visual.head(trunk.forward_head(maps)),
                f"last feature map of the {type(trunk).__name__} trunk",
            )
    return TowerSplit(lambda pixels: pixels, visual, "input")


def to_image_grid(maps: torch.Tensor, preprocess: dict, size: tuple[int, int]) -> torch.Tensor:
    """(n, h, w) maps over the model's input square → (n, height, width) over the image,
    undoing the preprocessing's resize and its pad to a square (``longest``) or centre crop
    (``shortest``: the image outside the crop, unseen by the model, gets 0)."""
    from captum.attr import LayerAttribution

    width, height = size
    square = int(preprocess["size"])
    full = LayerAttribution.interpolate(maps.unsqueeze(1), (square, square), "bilinear")
    mode = preprocess.get("resize_mode", "longest")
    if mode == "squash":
        return _resize(full, height, width)
    if mode == "longest":
        side = max(width, height)
        scale = square / side
        left, top = round((side - width) // 2 * scale), round((side - height) // 2 * scale)
        region = full[..., top : top + round(height * scale), left : left + round(width * scale)]
        return _resize(region, height, width)
    side = min(width, height)
    top, left = round((height - side) / 2), round((width - side) / 2)
    out = full.new_zeros(maps.shape[0], 1, height, width)
    out[..., top : top + side, left : left + side] = _resize(full, side, side).unsqueeze(1)
    return out[:, 0]


def _resize(maps: torch.Tensor, height: int, width: int) -> torch.Tensor:
    from captum.attr import LayerAttribution

    return LayerAttribution.interpolate(maps, (height, width), "bilinear")[:, 0]


def _unit_max(heatmap: np.ndarray) -> np.ndarray:
    """Divide by the maximum (a map that is zero everywhere stays zero)."""
    peak = float(heatmap.max())
    return (heatmap / peak if peak > 0 else heatmap).astype(np.float32)


def _normalise(embedding: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(embedding.float(), dim=-1)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


@contextlib.contextmanager
def _autograd(model: torch.nn.Module) -> Iterator[None]:
    """Gradients on (even under a caller's inference mode) and every module in eval mode,
    for this block only: the modules' modes are put back after it. The weights stay frozen:
    the gradients taken are the inputs' only."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for module, training in modes.items():
            module.training = training
