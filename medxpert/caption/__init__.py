"""Captions of the query image: a calibrated zero-shot label captioner on the dual encoder
(the offline default) and BLIP. Captioners are picked by name (`make_captioner`)."""

from medxpert.caption.base import Caption, Captioner
from medxpert.caption.labels import LabelCaptioner
from medxpert.caption.registry import CAPTIONERS, make_captioner

__all__ = ["CAPTIONERS", "Caption", "Captioner", "LabelCaptioner", "make_captioner"]
