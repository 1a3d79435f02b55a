"""What a captioner is (`Captioner`) and what it returns (`Caption`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import numpy as np

    from medxpert.data.images import ImageSource


@dataclass(frozen=True)
class Caption:
    """A caption of the query image, the captioner that wrote it, and (for the label
    captioner) its probability per observation."""

    text: str
    captioner: str
    probabilities: dict[str, float] = field(default_factory=dict)


class Captioner(Protocol):
    """Captions the query image; the pipeline calibrates it on the library's images."""

    name: str

    def caption(
        self, image: ImageSource | None = None, *, vector: np.ndarray | None = None
    ) -> Caption:
        """A caption of `image`, or of its embedding `vector` (a captioner may use either)."""
        ...

    def calibrate(self, vectors: np.ndarray, labels: np.ndarray) -> dict[str, int] | None:
        """Fit to the library's image `vectors` and their `labels`; what it used (None: a
        captioner with nothing to fit)."""
        ...
