"""Captioners by name."""

from __future__ import annotations

from medxpert.caption.labels import LabelCaptioner
from medxpert.encoders import DualEncoder
from medxpert.errors import ConfigError

CAPTIONERS = ("labels",)


def make_captioner(name: str, encoder: DualEncoder) -> LabelCaptioner:
    """The captioner called `name`, built on `encoder` where it needs one."""
    if name == "labels":
        return LabelCaptioner(encoder)
    raise ConfigError(f"unknown captioner {name!r}; available: {', '.join(CAPTIONERS)}.")
