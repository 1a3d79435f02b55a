"""Render a heatmap on its X-ray: an RGB picture, and PNG bytes of it."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from medxpert.data.images import ImageSource, open_image

ALPHA = 0.5  # the colour's opacity where the map is 1
COLORMAP = "jet"  # Grad-CAM's customary colour scale


def overlay(
    image: ImageSource, heatmap: np.ndarray, *, alpha: float = ALPHA, colormap: str = COLORMAP
) -> Image.Image:
    """The X-ray in grey with `heatmap` (values in [0, 1], resized to the image if it is not
    at its size) coloured on top, each pixel's opacity `alpha` × its map value, so that the
    X-ray stays readable where the map is 0. An RGB image of the X-ray's size."""
    from matplotlib import colormaps

    picture = open_image(image)
    values = np.clip(np.asarray(heatmap, dtype=np.float32), 0, 1)
    if values.shape != (picture.height, picture.width):
        resized = Image.fromarray(values, mode="F").resize(picture.size, Image.Resampling.BILINEAR)
        values = np.clip(np.asarray(resized), 0, 1)
    grey = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255
    colour = colormaps[colormap](values)[..., :3]
    weight = alpha * values[..., None]
    blended = (1 - weight) * grey + weight * colour
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    """`image` encoded as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
