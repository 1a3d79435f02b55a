"""Search results as records (JSON), rows (CSV / printed table) and a picture (query + top-K
grid); each hit is a study, shown with its images and the evidence that matched."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medxpert.atomic import atomic_path
from medxpert.data import open_image
from medxpert.data.images import ImageSource
from medxpert.labels import positive_labels
from medxpert.retrieval.hits import Hit

SNIPPET_CHARS = 160


@dataclass(frozen=True)
class Query:
    """What was searched for: an image, a study's images, a text, or either kind of image query
    with a clinical note."""

    name: str  # how the query is shown: a file name, or the text itself
    image: ImageSource | None = None
    text: str | None = None
    note: str | None = None
    images: tuple[ImageSource, ...] | None = None  # several images of one study

    @property
    def pictures(self) -> tuple[ImageSource, ...]:
        return self.images or ((self.image,) if self.image is not None else ())


def snippet(hit: Hit, chars: int = SNIPPET_CHARS) -> str:
    """The start of the hit's report (impression first), on one line."""
    case = hit.case
    text = " ".join(case.text(("impression", "findings")).split()) or "(no report: image only)"
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


def hit_record(hit: Hit) -> dict:
    """A hit as JSON-ready data: the study, its representative case, its images and evidence."""
    case = hit.case
    return {
        "rank": hit.rank,
        "study_id": hit.study_id,
        "case_id": case.case_id,
        "score": round(hit.score, 4),
        "modality": hit.modality,
        "source": case.source,
        "split": case.split,
        "labels": positive_labels(case.labels),
        "snippet": snippet(hit),
        "images": [
            {"case_id": image.case_id, "view": image.view, "image_path": image.image_path}
            for image in hit.images
        ],
        "evidence": [
            {
                "modality": e.modality,
                "case_id": e.case_id,
                "view": e.view,
                "score": round(e.score, 4),
                "rank": e.rank,
            }
            for e in hit.evidence
        ],
    }


HIT_COLUMNS = [
    "query",
    "rank",
    "study_id",
    "case_id",
    "score",
    "modality",
    "evidence",
    "images",
    "source",
    "split",
    "labels",
    "snippet",
    "image_path",
]


def hits_frame(results: Sequence[tuple[Query, list[Hit]]]) -> pd.DataFrame:
    """One row per (query, hit): query, rank, study id, its representative case id, score,
    modality of the best evidence, the evidence ("frontal image 0.953 (#1); report ..."), the
    study's image case ids, source, split, labels, report snippet, the case's image path."""
    rows = [
        {
            "query": query.name,
            "rank": hit.rank,
            "study_id": hit.study_id,
            "case_id": hit.case.case_id,
            "score": round(hit.score, 4),
            "modality": hit.modality,
            "evidence": hit.describe_evidence(),
            "images": "; ".join(image.case_id for image in hit.images),
            "source": hit.case.source,
            "split": hit.case.split,
            "labels": "; ".join(positive_labels(hit.case.labels)),
            "snippet": snippet(hit),
            "image_path": hit.case.image_path,
        }
        for query, hits in results
        for hit in hits
    ]
    return pd.DataFrame(rows, columns=HIT_COLUMNS)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the table atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def plot_hits(query: Query, hits: Sequence[Hit], path: str | Path, columns: int = 5) -> Path:
    """A PNG: the query (its images side by side, or its text) then the top-K studies, each
    with its images, rank, study id, what matched (index, view, cosine), labels and a report
    snippet; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = len(hits) + 1
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 4.1 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    query_axis = axes.flat[0]
    caption = textwrap.fill(query.note or "", 34) if query.note else ""
    if query.pictures:
        query_axis.imshow(side_by_side(query.pictures), cmap="gray")
        query_axis.set_title(
            "study query" if len(query.pictures) > 1 else "query", fontsize=10, fontweight="bold"
        )
    else:
        caption = textwrap.fill(query.text or "", 30)
        query_axis.set_title("text query", fontsize=10, fontweight="bold")
    query_axis.text(
        0.5,
        -0.02,
        caption,
        transform=query_axis.transAxes,
        ha="center",
        va="top",
        fontsize=8,
        wrap=True,
    )
    for axis, hit in zip(axes.flat[1:], hits, strict=False):
        if hit.images:
            axis.imshow(side_by_side([image.image_path for image in hit.images]), cmap="gray")
        labels = ", ".join(positive_labels(hit.case.labels)) or "no labels"
        matched = "; ".join(e.describe(rank=False) for e in hit.evidence)
        axis.set_title(
            f"#{hit.rank} {hit.study_id}\n{textwrap.shorten(matched, 44)}"
            f"\n{textwrap.shorten(labels, 40)}",
            fontsize=8,
        )
        axis.text(
            0.5,
            -0.02 if hit.images else 0.95,
            textwrap.fill(snippet(hit, 120), 34),
            transform=axis.transAxes,
            ha="center",
            va="top",
            fontsize=7,
        )
    figure.suptitle(
        f"MedXpert: top {len(hits)} for {textwrap.shorten(query.name, 80)}", fontsize=11
    )
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
    return Path(path)


def side_by_side(images: Sequence[ImageSource], height: int = 256) -> np.ndarray:
    """The images as one 8-bit grayscale array, each scaled to `height` and set side by side."""
    scaled = []
    for source in images:
        image = open_image(source)
        width = max(1, round(image.width * height / image.height))
        scaled.append(np.asarray(image.resize((width, height))))
    return np.concatenate(scaled, axis=1)
