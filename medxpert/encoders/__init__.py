"""The CLIP dual encoder (open_clip): X-ray images and reports in one vector space."""

from medxpert.encoders.model import DualEncoder
from medxpert.encoders.registry import DEFAULT_BACKBONE, Backbone, backbones, get_backbone
from medxpert.encoders.transforms import Augmentation

__all__ = [
    "DEFAULT_BACKBONE",
    "Augmentation",
    "Backbone",
    "DualEncoder",
    "backbones",
    "get_backbone",
]
