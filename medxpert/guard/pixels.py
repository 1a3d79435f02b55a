"""What the pixels say: too small to read, an extreme shape, flat, or a colour picture.

Fixed sanity limits, not learned ones: every chest X-ray of the shared packs' test splits
passes them (benchmarks/guard_bench.py counts it).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from medxpert.data.images import COLOURFULNESS_KEY

MIN_SIDE = 128  # pixels on the shorter side
MAX_ASPECT = 2.5  # longer side / shorter side; chest films are about 0.8–1.25
MIN_CONTRAST = 16  # grey levels between the 1st and 99th percentile (of 255)
MAX_COLOURFULNESS = 25.0  # Hasler & Süsstrunk's metric: 15 "slightly", 33 "moderately" colourful


def pixel_problems(image: Image.Image) -> list[str]:
    """Why the decoded 8-bit grayscale `image` cannot be a readable chest X-ray."""
    width, height = image.size
    problems = []
    if min(width, height) < MIN_SIDE:
        problems.append(
            f"it is {width}×{height} pixels, under the {MIN_SIDE}-pixel minimum a chest X-ray "
            "can be read at"
        )
    aspect = max(width, height) / max(1, min(width, height))
    if aspect > MAX_ASPECT:
        problems.append(
            f"its shape is {aspect:.1f}:1 ({width}×{height}); a chest X-ray is close to square"
        )
    low, high = np.percentile(np.asarray(image, dtype=np.uint8), (1, 99))
    if high - low < MIN_CONTRAST:
        problems.append(
            f"it is flat or nearly blank (98% of its pixels within {high - low:.0f} grey levels)"
        )
    colourfulness = float(image.info.get(COLOURFULNESS_KEY, 0.0))
    if colourfulness > MAX_COLOURFULNESS:
        problems.append(
            f"it is a colour picture (colourfulness {colourfulness:.0f} > "
            f"{MAX_COLOURFULNESS:.0f}); X-rays are grayscale"
        )
    return problems
