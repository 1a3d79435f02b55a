"""Building, loading and saving dual encoders, as open_clip's `factory.py` is to its models.

`create_parts` builds a backbone (offline from a config, or from the hub), `load_parts` reads a
saved model folder and `save_parts` writes one; `DualEncoder.create/load/save` call them. The
fingerprint of a model (`weights_fingerprint`) hashes its portable config, preprocessing and
every weight; `portable_config` is the one place that rewrites the text tower's location.

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from medxpert import __version__
from medxpert.atomic import atomic_directory
from medxpert.encoders.hub import require_hub
from medxpert.encoders.registry import (
    DEFAULT_BACKBONE,
    HF_HUB_PREFIX,
    OPENAI_MEAN,
    OPENAI_STD,
    Backbone,
)
from medxpert.encoders.tokenizer import TextTokenizer
from medxpert.encoders.weights import efficientnet_lite0_imagenet, text_tower_path
from medxpert.errors import HubUnavailableError, ModelFormatError, ModelNotFoundError

CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
INFO_FILE = "medxpert.json"
TEXT_TOWER_DIR = "text_tower"
FORMAT_VERSION = 1


@dataclass
class EncoderParts:
    """What a `DualEncoder` is made of (its constructor's arguments)."""

    model: torch.nn.Module
    tokenizer: TextTokenizer
    backbone: str
    model_cfg: dict
    preprocess: dict
    info: dict = field(default_factory=dict)


# --- the shared pieces ---------------------------------------------------------------------
def has_hf_text_tower(model_cfg: dict) -> bool:
    return "hf_model_name" in model_cfg.get("text_cfg", {})


def portable_config(model_cfg: dict) -> dict:
    """`model_cfg` as saved: a Hugging Face text tower is found in the model's own
    ``text_tower/`` folder, wherever it was built from."""
    portable = copy.deepcopy(model_cfg)
    if has_hf_text_tower(portable):
        portable["text_cfg"].update(hf_model_name=TEXT_TOWER_DIR, hf_tokenizer_name=TEXT_TOWER_DIR)
        portable["text_cfg"].pop("hf_model_pretrained", None)
    return portable


def make_tokenizer(text_cfg: dict, open_clip_name: str) -> TextTokenizer:
    """The tokenizer of a text tower: its Hugging Face tokenizer (a folder or a hub id) when it
    has one, else open_clip's built-in tokenizer for `open_clip_name`."""
    context_length = text_cfg.get("context_length", 77)
    if "hf_tokenizer_name" in text_cfg:
        return TextTokenizer(hf_path=text_cfg["hf_tokenizer_name"], context_length=context_length)
    return TextTokenizer(open_clip_name=open_clip_name, context_length=context_length)


def weights_fingerprint(model: torch.nn.Module, model_cfg: dict, preprocess: dict) -> str:
    """Hash of the portable config, the preprocessing and every weight: indexes record it, so
    an index built with other weights is refused."""
    digest = hashlib.sha256()
    identity = {"model_cfg": portable_config(model_cfg), "preprocess": preprocess}
    digest.update(json.dumps(identity, sort_keys=True).encode())
    state = _cpu_state(model)
    for key in sorted(state):
        tensor = state[key]
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:32]


def weights_version(model: torch.nn.Module) -> tuple:
    """Changes whenever a weight is replaced or changed in place (torch bumps a tensor's
    version on every in-place write), so a fingerprint is hashed again only then."""
    return tuple((t.data_ptr(), t._version) for t in model.state_dict().values())


# --- create --------------------------------------------------------------------------------
def create_parts(
    spec: Backbone,
    device: torch.device,
    *,
    pretrained: bool,
    text_tower: str | Path | None,
    overrides: dict[str, object],
) -> EncoderParts:
    """A backbone: from the hub when it needs the hub and `pretrained`, else built offline from
    its open_clip config (with `overrides`) and our offline weights where it has them."""
    import open_clip

    if spec.hub and pretrained:
        return _from_hub(spec, device)
    model_cfg = copy.deepcopy(open_clip.get_model_config(spec.model_config))
    if model_cfg is None:
        raise ModelNotFoundError(f"no open_clip model config {spec.model_config!r}.")
    model_cfg.update(copy.deepcopy(overrides))
    text_cfg = model_cfg["text_cfg"]
    if has_hf_text_tower(model_cfg):
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
    return EncoderParts(
        model,
        make_tokenizer(text_cfg, spec.model_config),
        spec.name,
        model_cfg,
        _preprocess(spec.preprocess, model),
    )


def _from_hub(spec: Backbone, device: torch.device) -> EncoderParts:
    import open_clip

    require_hub(
        f"backbone {spec.name!r}",
        f"Offline, use the offline default {DEFAULT_BACKBONE!r} or a model directory saved "
        "earlier.",
    )
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
        tokenizer = make_tokenizer(model_cfg["text_cfg"], spec.open_clip_name or spec.model_config)
    except (OSError, RuntimeError, ValueError) as error:
        raise HubUnavailableError(
            f"backbone {spec.name!r} needs its weights from the Hugging Face hub, which could not "
            f"be reached ({type(error).__name__}: {str(error)[:200]}). Offline, use the offline "
            f"default {DEFAULT_BACKBONE!r}, or a model directory saved earlier."
        ) from None
    visual_cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    own = {key: visual_cfg[key] for key in ("mean", "std") if key in visual_cfg}
    return EncoderParts(
        model, tokenizer, spec.name, model_cfg, _preprocess({**spec.preprocess, **own}, model)
    )


def _preprocess(spec_preprocess: dict, model: torch.nn.Module) -> dict:
    size = getattr(model.visual, "image_size", 224)
    return {
        "size": int(size[0] if isinstance(size, tuple | list) else size),
        "mean": list(spec_preprocess.get("mean", OPENAI_MEAN)),
        "std": list(spec_preprocess.get("std", OPENAI_STD)),
        "resize_mode": spec_preprocess.get("resize_mode", "shortest"),
    }


def _hub_model_config(model_id: str) -> dict:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(model_id[len(HF_HUB_PREFIX) :], filename=CONFIG_FILE)
    return json.loads(Path(path).read_text(encoding="utf-8"))["model_cfg"]


# --- load ----------------------------------------------------------------------------------
def load_parts(path: Path, device: torch.device, expect_backbone: str | None) -> EncoderParts:
    """A saved model folder's parts; `info` holds the fingerprint the caller must check."""
    import open_clip
    from safetensors import SafetensorError

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
    if has_hf_text_tower(model_cfg):
        tower = path / TEXT_TOWER_DIR
        if not (tower / "config.json").is_file():
            raise ModelFormatError(f"{path} lacks {TEXT_TOWER_DIR}/config.json (its text tower).")
        text_cfg.update(
            hf_model_name=str(tower), hf_tokenizer_name=str(tower), hf_model_pretrained=False
        )
    open_clip_name = info.get("tokenizer", {}).get("open_clip_name") or backbone
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
    return EncoderParts(
        model,
        make_tokenizer(text_cfg, open_clip_name),
        backbone,
        model_cfg,
        config["preprocess_cfg"],
        {**info, "path": str(path)},
    )


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


# --- save ----------------------------------------------------------------------------------
def save_parts(
    directory: Path, parts: EncoderParts, fingerprint: str, training: dict | None
) -> dict:
    """Write the model folder atomically; returns its `medxpert.json` record."""
    from safetensors.torch import save_file

    tokenizer = parts.tokenizer
    with atomic_directory(directory) as tmp:
        if has_hf_text_tower(parts.model_cfg):
            parts.model.text.transformer.config.save_pretrained(str(tmp / TEXT_TOWER_DIR))
            tokenizer.save(tmp / TEXT_TOWER_DIR)
        save_file(_cpu_state(parts.model), str(tmp / WEIGHTS_FILE))
        config = {"model_cfg": portable_config(parts.model_cfg), "preprocess_cfg": parts.preprocess}
        _write_json(tmp / CONFIG_FILE, config)
        info = {
            "format_version": FORMAT_VERSION,
            "backbone": parts.backbone,
            "embed_dim": int(parts.model_cfg["embed_dim"]),
            "fingerprint": fingerprint,
            "tokenizer": {
                "kind": "hf" if tokenizer.is_hf else "open_clip",
                "open_clip_name": tokenizer.open_clip_name,
                "context_length": tokenizer.context_length,
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "medxpert_version": __version__,
            "training": training,
        }
        _write_json(tmp / INFO_FILE, info)
    return info


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


# --- quiet construction --------------------------------------------------------------------
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
