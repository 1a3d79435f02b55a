"""`DualEncoder`: an open_clip model that embeds chest X-rays and reports in one space.

    encoder = DualEncoder.load("medxpert-default")             # a saved model, by name or folder
    encoder = DualEncoder.create("medxpert-default")           # a backbone, untuned (explicit)
    images = encoder.encode_images(["a.png", "b.dcm"])         # (2, d) float32, L2-normalised
    text = encoder.encode_texts("Small left effusion.")        # one item: a (d,) vector

This module holds the model and its encoding; building, loading, saving and fingerprinting
are in `medxpert.encoders.factory` (as open_clip splits `model.py` from `factory.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from medxpert.config import Settings
from medxpert.data.images import ImageSource, open_image
from medxpert.encoders.device import describe, pick_device
from medxpert.encoders.factory import (
    EncoderParts,
    create_parts,
    load_parts,
    save_parts,
    weights_fingerprint,
    weights_version,
)
from medxpert.encoders.registry import DEFAULT_BACKBONE, get_backbone
from medxpert.encoders.staged import FeatureCache, ImageStages, TextStages, image_key, text_key
from medxpert.encoders.tokenizer import TextTokenizer
from medxpert.encoders.transforms import Augmentation, image_transform
from medxpert.errors import ModelFormatError, ModelNotFoundError

logger = logging.getLogger(__name__)


class DualEncoder:
    """A CLIP dual encoder (open_clip) with its tokenizer, preprocessing and provenance."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: TextTokenizer,
        *,
        backbone: str,
        model_cfg: dict,
        preprocess: dict,
        device: torch.device,
        info: dict | None = None,
    ) -> None:
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.backbone = backbone
        self.model_cfg = model_cfg
        self.preprocess = preprocess
        self.device = device
        self.info = info or {}
        self.model.requires_grad_(False)  # fine-tuning unfreezes what it trains
        self._fingerprint: tuple[tuple, str] | None = None  # (weights version, hash)
        self._cache_root: Path | None = None
        self._caches: dict[str, FeatureCache] = {}
        self._image_split: ImageStages | None = None
        self._text_split: TextStages | None = None

    # --- construction (medxpert.encoders.factory) -----------------------------------------
    @classmethod
    def create(
        cls,
        backbone: str = DEFAULT_BACKBONE,
        *,
        pretrained: bool = True,
        device: str = "auto",
        text_tower: str | Path | None = None,
        **config_overrides: object,
    ) -> DualEncoder:
        """Build a backbone. With ``pretrained=False`` its architecture is built with random
        weights and no download (hub backbones with an HF text tower then need `text_tower`, a
        local folder with that tower's config and tokenizer). `config_overrides` replace keys
        of the open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``), e.g. for
        tiny test models."""
        torch_device = pick_device(device)
        parts = create_parts(
            get_backbone(backbone),
            torch_device,
            pretrained=pretrained,
            text_tower=text_tower,
            overrides=config_overrides,
        )
        logger.info(
            "encoder %s on %s (%s)",
            backbone,
            describe(torch_device),
            "pretrained towers" if pretrained else "random weights",
        )
        return cls._from_parts(parts, torch_device)

    @classmethod
    def load(
        cls,
        name_or_dir: str | Path,
        *,
        device: str = "auto",
        expect_backbone: str | None = None,
        models_dir: str | Path | None = None,
    ) -> DualEncoder:
        """A saved model: a folder, or a name under `models_dir` (default: the settings',
        MEDXPERT_MODELS_DIR). Never an untuned backbone: that is `create(name)`. Its weights
        are hashed once, here, and must match the fingerprint they were saved with."""
        path = Path(name_or_dir).expanduser()
        if not path.exists() and len(path.parts) == 1:
            path = Path(models_dir or Settings.from_env().models_dir) / path
        if path.is_file():
            raise ModelFormatError(f"{path} is a file; a model is a directory made by save().")
        if not path.is_dir():
            raise ModelNotFoundError(
                f"no saved model at {path}. Train one with `medxpert train` (or ./dev.sh train); "
                f"for an untuned backbone, use DualEncoder.create({str(name_or_dir)!r})."
            )
        torch_device = pick_device(device)
        encoder = cls._from_parts(load_parts(path, torch_device, expect_backbone), torch_device)
        if encoder.fingerprint() != encoder.info.get("fingerprint"):
            raise ModelFormatError(
                f"{path}: the weights or config changed since the model was saved (fingerprint "
                "mismatch). Re-save the model from its source, or retrain it."
            )
        logger.info(
            "loaded encoder %s from %s on %s", encoder.backbone, path, describe(torch_device)
        )
        return encoder

    @classmethod
    def _from_parts(cls, parts: EncoderParts, device: torch.device) -> DualEncoder:
        return cls(
            parts.model,
            parts.tokenizer,
            backbone=parts.backbone,
            model_cfg=parts.model_cfg,
            preprocess=parts.preprocess,
            device=device,
            info=parts.info,
        )

    def save(self, directory: str | Path, *, training: dict | None = None) -> Path:
        """Write the model directory atomically (`training`: what to record of how it was
        trained; default the record it was loaded with); returns its path."""
        directory = Path(directory)
        parts = EncoderParts(
            self.model, self.tokenizer, self.backbone, self.model_cfg, self.preprocess
        )
        record = training if training is not None else self.info.get("training")
        info = save_parts(directory, parts, self.fingerprint(), record)
        self.info = {**info, "path": str(directory)}
        logger.info("saved encoder %s to %s", self.backbone, directory)
        return directory

    # --- identity ----------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    def fingerprint(self) -> str:
        """Hash of the config, preprocessing and every weight (indexes record it, so an index
        built with other weights is refused). Hashed again only after a weight changes."""
        version = weights_version(self.model)
        if self._fingerprint is None or self._fingerprint[0] != version:
            hashed = weights_fingerprint(self.model, self.model_cfg, self.preprocess)
            self._fingerprint = (version, hashed)
        return self._fingerprint[1]

    # --- encoding ----------------------------------------------------------------------
    def image_transform(self, augmentation: Augmentation | None = None):
        """PIL image → tensor for this model (with `augmentation`, for training)."""
        return image_transform(
            int(self.preprocess["size"]),
            tuple(self.preprocess["mean"]),
            tuple(self.preprocess["std"]),
            self.preprocess.get("resize_mode", "longest"),
            augmentation,
        )

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    # --- cached frozen stages ------------------------------------------------------------
    def use_feature_cache(
        self, directory: str | Path | None, *, image_stages: int | None = None
    ) -> None:
        """Keep the output of the towers' frozen parts on disk under `directory` (None: stop).

        The image tower is split after `image_stages` trunk stages (default: the frozen
        stages this model was trained with); texts are cached while the whole text
        transformer is frozen (no parameter that requires a gradient). Caching changes no
        vector: the cache in use is the one named by a hash of the current prefix weights."""
        self._cache_root = Path(directory) if directory is not None else None
        self._caches = {}
        self._image_split = self._text_split = None
        if directory is None:
            return
        frozen = (self.info.get("training") or {}).get("config", {})
        stages = image_stages if image_stages is not None else frozen.get("frozen_image_stages")
        if stages is not None and ImageStages.supports(self.model.visual):
            self._image_split = ImageStages(self.model.visual, stages)
        if TextStages.supports(self.model):
            self._text_split = TextStages(self.model.text)

    @property
    def image_stages(self) -> ImageStages | None:
        return self._image_split

    @property
    def text_stages(self) -> TextStages | None:
        return self._text_split

    def _cache(self, fingerprint: str) -> FeatureCache:
        if fingerprint not in self._caches:
            self._caches[fingerprint] = FeatureCache(self._cache_root, fingerprint)
        return self._caches[fingerprint]

    def image_prefix_features(
        self, images: Sequence[ImageSource], batch_size: int = 8, progress: bool | None = None
    ) -> torch.Tensor:
        """The frozen image stages' output for `images`, from the cache where it has them.
        (Small batches: the early stages' large feature maps then stay in the CPU's cache;
        on 2 cores batch 8 runs 1.6× faster than batch 32, benchmarks/RESULTS.md.)"""
        split = self._image_split
        if split is None:
            raise ValueError("no image feature cache: call use_feature_cache() first")
        transform = self.image_transform()
        return self._cached_prefix(
            images,
            [image_key(image) for image in images],
            self._cache(split.fingerprint(self.preprocess)),
            lambda chunk: split.prefix(
                torch.stack([transform(open_image(image)) for image in chunk]).to(self.device)
            ),
            batch_size,
            "image features",
            progress,
        )

    def text_prefix_features(
        self, texts: Sequence[str], batch_size: int = 64, progress: bool | None = None
    ) -> torch.Tensor:
        """The frozen text transformer's pooled output for `texts`, cached."""
        split = self._text_split
        if split is None:
            raise ValueError("no text feature cache: call use_feature_cache() first")
        return self._cached_prefix(
            texts,
            [text_key(text) for text in texts],
            self._cache(split.fingerprint(str(self.tokenizer.context_length))),
            lambda chunk: split.prefix(self.tokenize(chunk).to(self.device)),
            batch_size,
            "text features",
            progress,
        )

    def text_tower_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.text.transformer.parameters())

    def _cached_prefix(self, items, keys, cache, compute, batch_size, description, progress):
        missing = [i for i, key in enumerate(keys) if key is None or key not in cache]
        steps = -(-len(missing) // batch_size)
        show = steps > 4 if progress is None else progress
        fresh: dict[int, np.ndarray] = {}
        training = self.model.training
        self.model.eval()
        with torch.inference_mode():
            for start in tqdm(
                range(0, len(missing), batch_size),
                total=steps,
                desc=description,
                unit="batch",
                disable=not show,
            ):
                chunk = missing[start : start + batch_size]
                features = compute([items[i] for i in chunk]).float().cpu().numpy()
                fresh.update(zip(chunk, features, strict=True))
                cached = [(keys[i], features[j]) for j, i in enumerate(chunk) if keys[i]]
                if cached:
                    cache.put([k for k, _ in cached], np.stack([f for _, f in cached]))
        self.model.train(training)
        if not items:
            return torch.empty(0)
        rows = [fresh[i] if i in fresh else cache.get(key) for i, key in enumerate(keys)]
        stacked = np.stack(rows)
        return torch.from_numpy(stacked.astype(np.float32))

    # --- encoding ----------------------------------------------------------------------
    def encode_images(
        self,
        images: ImageSource | Sequence[ImageSource],
        batch_size: int = 8,
        progress: bool | None = None,
    ) -> np.ndarray:
        """Embed images (paths, bytes or PIL images; PNG, JPEG or DICOM) → (n, d) float32,
        L2-normalised; one image (not in a list) → its (d,) vector. Unreadable images raise
        `InvalidImageError`. (Batch 8: on a CPU the early stages' large feature maps then stay
        in cache, 3× faster than batch 32 at 224 px; benchmarks/RESULTS.md.)"""
        if isinstance(images, str | Path | bytes | Image.Image):
            return self.encode_images([images], batch_size, progress)[0]
        if self._image_split is not None and len(images) > 1:
            features = self.image_prefix_features(images, progress=progress)
            return self._encode(
                features.split(batch_size * 4),
                len(images),
                batch_size * 4,
                self._image_split.suffix,
                "embedding images",
                False,
            )
        transform = self.image_transform()

        def batches() -> Iterator[torch.Tensor]:
            for start in range(0, len(images), batch_size):
                chunk = images[start : start + batch_size]
                yield torch.stack([transform(open_image(image)) for image in chunk])

        return self._encode(
            batches(),
            len(images),
            batch_size,
            self.model.encode_image,
            "embedding images",
            progress,
        )

    def encode_pixels(self, pixels: torch.Tensor | np.ndarray, batch_size: int = 8) -> np.ndarray:
        """Embed images already read and transformed by `image_transform` ((n, 3, H, W)) →
        (n, d) float32, L2-normalised: the model half of `encode_images`, for engines that
        read images in other processes (`medxpert.index.ray_engine`)."""
        pixels = torch.as_tensor(pixels, dtype=torch.float32)
        return self._encode(
            pixels.split(batch_size),
            len(pixels),
            batch_size,
            self.model.encode_image,
            "embedding images",
            False,
        )

    def encode_texts(
        self, texts: str | Sequence[str], batch_size: int = 64, progress: bool | None = None
    ) -> np.ndarray:
        """Embed texts → (n, d) float32, L2-normalised; one text (a str) → its (d,) vector."""
        if isinstance(texts, str):
            return self.encode_texts([texts], batch_size, progress)[0]
        if self._text_split is not None and len(texts) > 1 and self.text_tower_frozen():
            features = self.text_prefix_features(texts, batch_size, progress)
            return self._encode(
                features.split(batch_size * 4),
                len(texts),
                batch_size * 4,
                self._text_split.suffix,
                "embedding texts",
                False,
            )

        def batches() -> Iterator[torch.Tensor]:
            for start in range(0, len(texts), batch_size):
                yield self.tokenize(texts[start : start + batch_size])

        return self._encode(
            batches(), len(texts), batch_size, self.model.encode_text, "embedding texts", progress
        )

    def _encode(self, batches, count, batch_size, encode, description, progress) -> np.ndarray:
        if count == 0:
            return np.empty((0, self.embed_dim), dtype=np.float32)
        steps = -(-count // batch_size)
        show = steps > 4 if progress is None else progress
        outputs = []
        self.model.eval()
        with torch.inference_mode():
            for batch in tqdm(
                batches, total=steps, desc=description, unit="batch", disable=not show
            ):
                features = encode(batch.to(self.device))
                outputs.append(features.float().cpu().numpy())
        vectors = np.concatenate(outputs).astype(np.float32)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.maximum(norms, 1e-12)
