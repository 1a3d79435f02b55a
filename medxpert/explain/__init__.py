"""Heatmaps that show why: what drives a finding's score and a retrieved image's similarity
(docs/heatmaps.md)."""

from medxpert.explain.files import write_heatmaps
from medxpert.explain.heatmaps import Explainer, Features
from medxpert.explain.overlay import overlay, png_bytes

__all__ = ["Explainer", "Features", "overlay", "png_bytes", "write_heatmaps"]
