"""Write a diagnosis's heatmaps as PNG overlays (`medxpert diagnose --heatmaps DIR`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from medxpert.atomic import atomic_write_bytes
from medxpert.data import Case
from medxpert.data.images import open_image
from medxpert.errors import InvalidImageError
from medxpert.explain.heatmaps import Explainer
from medxpert.explain.overlay import overlay, png_bytes
from medxpert.retrieval import Hit

logger = logging.getLogger(__name__)

MAX_HITS = 5  # similarity pairs written: the best hits with an image
TOP_FINDINGS = 3  # findings mapped when the caption names none as likely


def write_heatmaps(
    pipeline, diagnosis, images: Sequence[Image.Image], directory: str | Path
) -> list[Path]:
    """Write into `directory` the heatmaps of `diagnosis` (made by `pipeline` from the query
    `images`; the maps are of the first, the one the caption describes):

    - ``finding-<label>.png``: each finding the caption names as likely (probability at or
      above the captioner's threshold), or its `TOP_FINDINGS` most probable when it names none;
    - ``similar-<rank>-query.png`` / ``similar-<rank>-retrieved.png``: for the `MAX_HITS`
      best hits with an image, what drives their similarity, on either image.

    Each file is written atomically; returns their paths in that order."""
    directory = Path(directory)
    explainer = Explainer(pipeline.engine.encoder, pipeline.captioner)
    picture = open_image(images[0])
    query = explainer.features(picture)
    findings = _findings(diagnosis.caption, explainer)
    paths = [
        _write(directory / f"finding-{_slug(label)}.png", overlay(picture, heatmap))
        for label, heatmap in explainer.finding_maps(query, findings).items()
    ]
    for hit, case in _hits_with_images(diagnosis.hits)[:MAX_HITS]:
        try:
            retrieved = open_image(case.image_path)
        except InvalidImageError as error:
            logger.warning("no similarity heatmap for hit %d: %s", hit.rank, error)
            continue
        on_query, on_retrieved = explainer.similarity_maps(query, retrieved)
        stem = directory / f"similar-{hit.rank}"
        paths.append(_write(Path(f"{stem}-query.png"), overlay(picture, on_query)))
        paths.append(_write(Path(f"{stem}-retrieved.png"), overlay(retrieved, on_retrieved)))
    return paths


def _findings(caption, explainer: Explainer) -> list[str]:
    """The caption's likely findings, else its most probable ones (none without a caption
    or a captioner that scores findings)."""
    scored = set(explainer.findings)
    threshold = getattr(explainer.captioner, "threshold", 0.5)
    if caption is None or not scored:
        return []
    ranked = sorted(
        (label for label in caption.probabilities if label in scored),
        key=lambda label: -caption.probabilities[label],
    )
    likely = [label for label in ranked if caption.probabilities[label] >= threshold]
    return likely or ranked[:TOP_FINDINGS]


def _hits_with_images(hits: Sequence[Hit]) -> list[tuple[Hit, Case]]:
    """Each hit with the image it stands for: its matched image, else its study's first."""
    pairs = []
    for hit in hits:
        case = hit.case if hit.case.has_image else next(iter(hit.images), None)
        if case is not None:
            pairs.append((hit, case))
    return pairs


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def _write(path: Path, picture: Image.Image) -> Path:
    return atomic_write_bytes(path, png_bytes(picture))
