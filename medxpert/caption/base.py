"""What every captioner returns."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Caption:
    """A caption of the query image, the captioner that wrote it, and (for the label
    captioner) its probability per observation."""

    text: str
    captioner: str
    probabilities: dict[str, float] = field(default_factory=dict)
