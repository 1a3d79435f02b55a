"""Backbones by name: the offline default, hub models, and any other open_clip name.

The registry is data (`backbones.json`); architectures are open_clip model configs
(`model_configs/*.json`, registered with open_clip so that `open_clip.create_model` builds them).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

from medxpert.errors import ModelNotFoundError

PACKAGE_DIR = Path(__file__).resolve().parent
BACKBONES_PATH = PACKAGE_DIR / "backbones.json"
MODEL_CONFIGS_DIR = PACKAGE_DIR / "model_configs"
DEFAULT_BACKBONE = "medxpert-default"
HF_HUB_PREFIX = "hf-hub:"

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Backbone:
    """How to build one dual encoder."""

    name: str
    model_config: str  # open_clip model config name (built-in or ours)
    description: str = ""
    open_clip_name: str | None = None  # an "hf-hub:..." id that carries config + weights
    pretrained: str | None = None  # open_clip pretrained tag (e.g. "openai")
    hub: bool = False  # needs the Hugging Face hub for its weights
    image_weights: str | None = None  # offline image-tower weights (see weights.py)
    text_tower: str | None = None  # offline HF text tower (see weights.py)
    preprocess: dict = field(default_factory=dict)
    freeze: tuple[str, ...] = ()  # parameter-name prefixes frozen by default when training


@functools.cache
def _registered() -> dict[str, Backbone]:
    import open_clip

    open_clip.add_model_config(MODEL_CONFIGS_DIR)
    entries = json.loads(BACKBONES_PATH.read_text(encoding="utf-8"))
    return {
        name: Backbone(name=name, **{**entry, "freeze": tuple(entry.get("freeze", ()))})
        for name, entry in entries.items()
    }


def backbones() -> list[Backbone]:
    """The named backbones (offline default first)."""
    return list(_registered().values())


def get_backbone(name: str) -> Backbone:
    """A registered backbone, an ``hf-hub:org/repo`` id, or any open_clip model name with an
    optional pretrained tag (``RN50:openai``)."""
    registered = _registered()
    if name in registered:
        return registered[name]
    if name.startswith(HF_HUB_PREFIX):
        return Backbone(name=name, model_config=name, open_clip_name=name, hub=True)
    import open_clip

    model, _, tag = name.partition(":")
    if model in open_clip.list_models():
        return Backbone(name=name, model_config=model, pretrained=tag or None, hub=bool(tag))
    raise ModelNotFoundError(
        f"unknown backbone {name!r}. Named backbones: {', '.join(registered)}; or any open_clip "
        "model name (optionally NAME:pretrained_tag) or an hf-hub:org/repo id."
    )
