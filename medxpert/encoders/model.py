"""`DualEncoder`: an open_clip model that embeds chest X-rays and reports in one space.

    encoder = DualEncoder.load("medxpert-default")             # a saved model, by name or folder
    encoder = DualEncoder.create("medxpert-default")           # a backbone, untuned (explicit)
    images = encoder.encode_images(["a.png", "b.dcm"])         # (2, d) float32, L2-normalised
    text = encoder.encode_texts("Small left effusion.")        # one item: a (d,) vector

A saved model directory is an open_clip ``local-dir:`` model (``open_clip_config.json`` +
``open_clip_model.safetensors``) plus ``text_tower/`` (Hugging Face config and tokenizer, so it
reloads offline) and ``medxpert.json`` (backbone, fingerprint, training record).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from medxpert import __version__
from medxpert.atomic import atomic_directory
from medxpert.config import Settings
from medxpert.data.images import ImageSource, open_image
from medxpert.encoders.device import describe, pick_device
from medxpert.encoders.hub import require_hub
from medxpert.encoders.registry import (
    DEFAULT_BACKBONE,
    HF_HUB_PREFIX,
    OPENAI_MEAN,
    OPENAI_STD,
    Backbone,
    get_backbone,
)
from medxpert.encoders.staged import FeatureCache, ImageStages, TextStages, image_key, text_key
from medxpert.encoders.tokenizer import TextTokenizer
from medxpert.encoders.transforms import Augmentation, image_transform
from medxpert.encoders.weights import efficientnet_lite0_imagenet, text_tower_path
from medxpert.errors import HubUnavailableError, ModelFormatError, ModelNotFoundError

logger = logging.getLogger(__name__)

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
INFO_FILE = "medxpert.json"
TEXT_TOWER_DIR = "text_tower"
FORMAT_VERSION = 1


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
        self._cache_root: Path | None = None
        self._caches: dict[str, FeatureCache] = {}
        self._image_split: ImageStages | None = None
        self._text_split: TextStages | None = None

    # --- construction ------------------------------------------------------------------
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
        spec = get_backbone(backbone)
        torch_device = pick_device(device)
        if spec.hub and pretrained:
            encoder = _create_from_hub(spec, torch_device)
        else:
            encoder = _create_from_config(
                spec, torch_device, pretrained, text_tower, config_overrides
            )
        logger.info(
            "encoder %s on %s (%s)",
            backbone,
            describe(torch_device),
            "pretrained towers" if pretrained else "random weights",
        )
        return encoder

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
        MEDXPERT_MODELS_DIR). Never an untuned backbone: that is `create(name)`."""
        path = Path(name_or_dir).expanduser()
        if not path.exists() and len(path.parts) == 1:
            path = Path(models_dir or Settings.from_env().models_dir) / path
        if path.is_dir():
            return _load_directory(path, pick_device(device), expect_backbone)
        if path.exists():
            raise ModelFormatError(f"{path} is a file; a model is a directory made by save().")
        raise ModelNotFoundError(
            f"no saved model at {path}. Train one with `medxpert train` (or ./dev.sh train); "
            f"for an untuned backbone, use DualEncoder.create({str(name_or_dir)!r})."
        )

    # --- saving ------------------------------------------------------------------------
    def save(self, directory: str | Path, *, training: dict | None = None) -> Path:
        """Write the model directory atomically; returns its path."""
        from safetensors.torch import save_file

        directory = Path(directory)
        model_cfg = copy.deepcopy(self.model_cfg)
        text_cfg = model_cfg.get("text_cfg", {})
        with atomic_directory(directory) as tmp:
            if "hf_model_name" in text_cfg:
                text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = TEXT_TOWER_DIR
                text_cfg.pop("hf_model_pretrained", None)
                self.model.text.transformer.config.save_pretrained(str(tmp / TEXT_TOWER_DIR))
                self.tokenizer.save(tmp / TEXT_TOWER_DIR)
            state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_FILE))
            _write_json(
                tmp / CONFIG_FILE, {"model_cfg": model_cfg, "preprocess_cfg": self.preprocess}
            )
            info = {
                "format_version": FORMAT_VERSION,
                "backbone": self.backbone,
                "embed_dim": self.embed_dim,
                "fingerprint": _fingerprint(model_cfg, self.preprocess, state),
                "tokenizer": {
                    "kind": "hf" if self.tokenizer.is_hf else "open_clip",
                    "open_clip_name": self.tokenizer.open_clip_name,
                    "context_length": self.tokenizer.context_length,
                },
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "medxpert_version": __version__,
                "training": training if training is not None else self.info.get("training"),
            }
            _write_json(tmp / INFO_FILE, info)
        self.info = {**info, "path": str(directory)}
        logger.info("saved encoder %s to %s", self.backbone, directory)
        return directory

    # --- identity ----------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return int(self.model_cfg["embed_dim"])

    def fingerprint(self) -> str:
        """Hash of the config, preprocessing and every weight: indexes record it, so an index
        built with other weights is refused."""
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        model_cfg = copy.deepcopy(self.model_cfg)
        if "hf_model_name" in model_cfg.get("text_cfg", {}):
            model_cfg["text_cfg"].update(
                hf_model_name=TEXT_TOWER_DIR, hf_tokenizer_name=TEXT_TOWER_DIR
            )
            model_cfg["text_cfg"].pop("hf_model_pretrained", None)
        return _fingerprint(model_cfg, self.preprocess, state)

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


# --- helpers -------------------------------------------------------------------------------
def _preprocess(spec_preprocess: dict, image_size: int) -> dict:
    return {
        "size": int(image_size),
        "mean": list(spec_preprocess.get("mean", OPENAI_MEAN)),
        "std": list(spec_preprocess.get("std", OPENAI_STD)),
        "resize_mode": spec_preprocess.get("resize_mode", "shortest"),
    }


def _image_size(model: torch.nn.Module) -> int:
    size = getattr(model.visual, "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)


def _create_from_config(
    spec: Backbone,
    device: torch.device,
    pretrained: bool,
    text_tower: str | Path | None,
    overrides: dict[str, object],
) -> DualEncoder:
    import open_clip

    model_cfg = copy.deepcopy(open_clip.get_model_config(spec.model_config))
    if model_cfg is None:
        raise ModelNotFoundError(f"no open_clip model config {spec.model_config!r}.")
    model_cfg.update(copy.deepcopy(overrides))
    text_cfg = model_cfg["text_cfg"]
    tokenizer: TextTokenizer
    if "hf_model_name" in text_cfg:
        if text_tower is not None:
            tower_path = Path(text_tower)
        elif spec.text_tower is not None:
            tower_path = text_tower_path(spec.text_tower)
        else:
            raise HubUnavailableError(
                f"{spec.name}'s text tower ({text_cfg['hf_model_name']}) comes from the Hugging "
                "Face hub; offline, pass text_tower=<local folder with its config and tokenizer>."
            )
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(tower_path)
        text_cfg["hf_model_pretrained"] = pretrained and spec.text_tower is not None
        tokenizer = TextTokenizer(hf_path=tower_path, context_length=text_cfg["context_length"])
    else:
        tokenizer = TextTokenizer(
            open_clip_name=spec.model_config, context_length=text_cfg.get("context_length", 77)
        )
    with _quiet_transformers():
        model = open_clip.create_model(
            spec.model_config,
            pretrained=None,
            load_weights=False,
            pretrained_image=False,
            pretrained_text=False,
            device=device,
            **{k: v for k, v in model_cfg.items() if k in ("embed_dim", "vision_cfg", "text_cfg")},
        )
    if pretrained and spec.image_weights == "efficientnet-lite0-imagenet":
        result = model.visual.trunk.load_state_dict(efficientnet_lite0_imagenet(), strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ModelFormatError(f"ImageNet weights do not fit the image tower: {result}")
    return DualEncoder(
        model,
        tokenizer,
        backbone=spec.name,
        model_cfg=model_cfg,
        preprocess=_preprocess(spec.preprocess, _image_size(model)),
        device=device,
    )


def _create_from_hub(spec: Backbone, device: torch.device) -> DualEncoder:
    import open_clip

    _require_hub(spec)
    source = spec.open_clip_name or spec.model_config
    try:
        if spec.open_clip_name:
            model = open_clip.create_model(spec.open_clip_name, device=device)
            model_cfg = _hub_model_config(spec.open_clip_name)
        else:
            model = open_clip.create_model(
                spec.model_config,
                pretrained=spec.pretrained,
                device=device,
                require_pretrained=True,
            )
            model_cfg = copy.deepcopy(open_clip.get_model_config(spec.model_config))
        oc_tokenizer = open_clip.get_tokenizer(source)
    except (OSError, RuntimeError, ValueError) as error:
        raise HubUnavailableError(
            f"backbone {spec.name!r} needs its weights from the Hugging Face hub, which could not "
            f"be reached ({type(error).__name__}: {str(error)[:200]}). Offline, use the offline "
            f"default {DEFAULT_BACKBONE!r}, or a model directory saved earlier."
        ) from None
    context_length = model_cfg["text_cfg"].get("context_length", 77)
    hf = getattr(oc_tokenizer, "tokenizer", None)
    tokenizer = (
        TextTokenizer(hf_tokenizer=hf, context_length=context_length)
        if hf is not None
        else TextTokenizer(open_clip_name=spec.model_config, context_length=context_length)
    )
    preprocess = _preprocess({**spec.preprocess, **_model_preprocess(model)}, _image_size(model))
    return DualEncoder(
        model,
        tokenizer,
        backbone=spec.name,
        model_cfg=model_cfg,
        preprocess=preprocess,
        device=device,
    )


def _require_hub(spec: Backbone) -> None:
    require_hub(
        f"backbone {spec.name!r}",
        f"Offline, use the offline default {DEFAULT_BACKBONE!r} or a model directory saved "
        "earlier.",
    )


def _hub_model_config(model_id: str) -> dict:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(model_id[len(HF_HUB_PREFIX) :], filename=CONFIG_FILE)
    return json.loads(Path(path).read_text(encoding="utf-8"))["model_cfg"]


def _model_preprocess(model: torch.nn.Module) -> dict:
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    return {key: cfg[key] for key in ("mean", "std") if key in cfg}


def _load_directory(path: Path, device: torch.device, expect_backbone: str | None) -> DualEncoder:
    import open_clip

    missing = [
        name for name in (CONFIG_FILE, WEIGHTS_FILE, INFO_FILE) if not (path / name).is_file()
    ]
    if missing:
        raise ModelFormatError(
            f"{path} is not a complete MedXpert model: {', '.join(missing)} missing. Save it "
            "again, or retrain with `medxpert train`."
        )
    info = _read_json(path / INFO_FILE)
    config = _read_json(path / CONFIG_FILE)
    if info.get("format_version") != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} has model format {info.get('format_version')}; this "
            f"MedXpert reads format {FORMAT_VERSION}."
        )
    backbone = info.get("backbone", "?")
    if expect_backbone is not None and backbone != expect_backbone:
        raise ModelFormatError(
            f"{path} holds a {backbone!r} model, not the {expect_backbone!r} that was asked for."
        )
    model_cfg = config["model_cfg"]
    text_cfg = copy.deepcopy(model_cfg["text_cfg"])
    tokenizer_info = info.get("tokenizer", {})
    if "hf_model_name" in text_cfg:
        tower = path / TEXT_TOWER_DIR
        if not (tower / "config.json").is_file():
            raise ModelFormatError(f"{path} lacks {TEXT_TOWER_DIR}/config.json (its text tower).")
        text_cfg.update(
            hf_model_name=str(tower), hf_tokenizer_name=str(tower), hf_model_pretrained=False
        )
        tokenizer = TextTokenizer(hf_path=tower, context_length=text_cfg["context_length"])
    else:
        tokenizer = TextTokenizer(
            open_clip_name=tokenizer_info.get("open_clip_name") or backbone,
            context_length=text_cfg.get("context_length", 77),
        )
    from safetensors import SafetensorError

    try:
        model = open_clip.create_model(f"local-dir:{path}", text_cfg=text_cfg, device=device)
    except SafetensorError as error:
        raise ModelFormatError(
            f"{path / WEIGHTS_FILE} is not a readable safetensors file (truncated or corrupt: "
            f"{str(error)[:200]}). Re-save the model, or retrain it."
        ) from None
    except (RuntimeError, ValueError, KeyError) as error:
        raise ModelFormatError(
            f"the weights in {path} do not fit its config (backbone {backbone!r}): "
            f"{str(error)[:300]}"
        ) from None
    encoder = DualEncoder(
        model,
        tokenizer,
        backbone=backbone,
        model_cfg=model_cfg,
        preprocess=config["preprocess_cfg"],
        device=device,
        info={**info, "path": str(path)},
    )
    if encoder.fingerprint() != info.get("fingerprint"):
        raise ModelFormatError(
            f"{path}: the weights or config changed since the model was saved (fingerprint "
            "mismatch). Re-save the model from its source, or retrain it."
        )
    logger.info("loaded encoder %s from %s on %s", backbone, path, describe(device))
    return encoder


def _fingerprint(model_cfg: dict, preprocess: dict, state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    digest.update(
        json.dumps({"model_cfg": model_cfg, "preprocess": preprocess}, sort_keys=True).encode()
    )
    for key in sorted(state):
        tensor = state[key]
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(
            tensor.numpy().tobytes()
            if tensor.dtype != torch.bfloat16
            else tensor.float().numpy().tobytes()
        )
    return digest.hexdigest()[:32]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' per-load report and progress bar while we build a known tower (its
    "UNEXPECTED pooler" notice is expected: open_clip drops the pooler it does not use), and
    open_clip's "No pretrained weights loaded" warning: we load the towers' weights ourselves
    right after."""
    from transformers.utils import logging as hf_logging

    verbosity, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    root = logging.getLogger()
    root.addFilter(_no_random_init_warning)
    try:
        yield
    finally:
        root.removeFilter(_no_random_init_warning)
        hf_logging.set_verbosity(verbosity)
        if bar:
            hf_logging.enable_progress_bar()


def _no_random_init_warning(record: logging.LogRecord) -> bool:
    return "No pretrained weights loaded" not in record.getMessage()


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def read_model_info(directory: str | Path) -> dict:
    """What a saved model folder says about itself (`medxpert.json`: backbone, fingerprint,
    training), without loading the weights."""
    path = Path(directory) / INFO_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path} not found: {directory} is not a saved MedXpert model.")
    return _read_json(path)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ModelFormatError(f"{path} is not valid JSON ({error}).") from None
