"""Captioners by name: `labels` (the offline default) and `blip`."""

from __future__ import annotations

from pathlib import Path

from medxpert.caption.labels import LabelCaptioner
from medxpert.config import CAPTIONERS
from medxpert.encoders import DualEncoder
from medxpert.errors import ConfigError

BLIP_DIR_NAME = "blip-captioner"  # where `medxpert train-captioner` saves by default


def make_captioner(
    name: str,
    encoder: DualEncoder,
    *,
    blip_source: str | Path | None = None,
    models_dir: str | Path | None = None,
):
    """The captioner called `name`. `blip` loads `blip_source`, else `models/blip-captioner`
    when it exists, else the hub model."""
    if name == "labels":
        return LabelCaptioner(encoder)
    if name == "blip":
        from medxpert.caption.blip import HUB_MODEL, BlipCaptioner

        local = Path(models_dir) / BLIP_DIR_NAME if models_dir else None
        source = blip_source or (local if local and local.is_dir() else HUB_MODEL)
        return BlipCaptioner(source, device=str(encoder.device.type))
    raise ConfigError(f"unknown captioner {name!r}; available: {', '.join(CAPTIONERS)}.")
