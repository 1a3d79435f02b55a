"""The API's shared state, and the dependencies that hand it (and the pipeline) to routes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from PIL import Image

from medxpert.api.errors import UnavailableError
from medxpert.config import Settings
from medxpert.data import open_image
from medxpert.explain import Explainer
from medxpert.pipeline import DiagnosisPipeline


@dataclass
class ApiState:
    """What the routes share: settings, the pipeline (or why there is none) and its lock."""

    settings: Settings
    max_body_bytes: int
    api_key_required: bool
    index_dir: Path | None = None
    pipeline: DiagnosisPipeline | None = None
    error: UnavailableError = field(
        default_factory=lambda: UnavailableError(
            "the pipeline is still loading; try again shortly.", "UnavailableError"
        )
    )
    lock: threading.Lock = field(default_factory=threading.Lock)
    _explainer: Explainer | None = field(default=None, repr=False)

    def explainer(self, pipeline: DiagnosisPipeline) -> Explainer:
        """The heatmap explainer of the pipeline's encoder and captioner, made once."""
        if self._explainer is None:
            self._explainer = Explainer(pipeline.engine.encoder, pipeline.captioner)
        return self._explainer

    def decode(self, data: bytes, name: str | None) -> Image.Image:
        """An uploaded X-ray as a grayscale image (InvalidImageError when it is not one)."""
        return open_image(
            data,
            max_pixels=self.settings.max_image_pixels,
            max_bytes=self.max_body_bytes,
            name=name or "the uploaded image",
        )


def api_state(request: Request) -> ApiState:
    return request.app.state.api


def loaded_pipeline(state: Annotated[ApiState, Depends(api_state)]) -> DiagnosisPipeline:
    if state.pipeline is None:
        raise state.error
    return state.pipeline


State = Annotated[ApiState, Depends(api_state)]
Pipeline = Annotated[DiagnosisPipeline, Depends(loaded_pipeline)]
