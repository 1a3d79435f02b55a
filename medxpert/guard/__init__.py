"""The input guard: refuse, before any report, what is not a chest radiograph.

Three checks, cheapest first: the DICOM header (`header`), the decoded pixels (`pixels`), and
the image embedding's distance from the library's X-rays (`embedding`). A refused input raises
`InputRefusedError`; `force` diagnoses it anyway, with the reasons as warnings in the report and
triage no higher than routine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medxpert.data.images import dicom_header
from medxpert.errors import ConfigError
from medxpert.guard.embedding import (
    GUARD_FILE,
    EmbeddingGuard,
    fit_embedding_guard,
    library_embedding_guard,
    read_embedding_guard,
    write_embedding_guard,
)
from medxpert.guard.header import header_problems
from medxpert.guard.pixels import pixel_problems
from medxpert.index import CaseLibrary

logger = logging.getLogger(__name__)

OVERRIDE = (
    "pass --force (API: force=true; UI: tick “Diagnose even if the input guard refuses it”) to "
    "diagnose it anyway, with a warning in the report"
)


@dataclass(frozen=True)
class InputGuard:
    """The three checks; without an `embedding` guard only the header and pixels are checked."""

    embedding: EmbeddingGuard | None = None

    @classmethod
    def for_library(
        cls, library: CaseLibrary, index_dir: str | Path, fingerprint: str
    ) -> InputGuard:
        """The guard saved next to the index, else one fitted now on the library's images,
        else (too few train or val images) the header and pixel checks alone."""
        embedding = read_embedding_guard(index_dir, fingerprint)
        if embedding is None and "images" in library.indexes:
            try:
                embedding = library_embedding_guard(library, fingerprint)
                logger.info("input guard fitted on the library's images (no %s)", GUARD_FILE)
            except ConfigError as error:
                logger.warning("the input guard checks header and pixels only: %s", error)
        return cls(embedding)

    def image_problems(self, image: Image.Image) -> list[str]:
        """Why the header or the pixels of a decoded image say it is no chest radiograph."""
        return header_problems(dicom_header(image)) + pixel_problems(image)

    def vector_problems(self, vectors: np.ndarray) -> list[list[str]]:
        """For each image embedding, why it is too far from the library's X-rays."""
        if self.embedding is None:
            return [[] for _ in range(len(vectors))]
        return self.embedding.problems(vectors)


def describe_problems(problems: Sequence[Sequence[str]], names: Sequence[str]) -> list[str]:
    """One line per flagged image: its name and every reason."""
    return [
        f"{name}: {'; '.join(reasons)}"
        for name, reasons in zip(names, problems, strict=True)
        if reasons
    ]


__all__ = [
    "GUARD_FILE",
    "OVERRIDE",
    "EmbeddingGuard",
    "InputGuard",
    "describe_problems",
    "fit_embedding_guard",
    "library_embedding_guard",
    "read_embedding_guard",
    "write_embedding_guard",
]
