"""Search results as rows (CSV / printed table) and as a picture (query + top-K grid)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medxpert.atomic import atomic_path
from medxpert.data import open_image
from medxpert.data.images import ImageSource
from medxpert.labels import positive_labels
from medxpert.retrieval.engine import Hit

SNIPPET_CHARS = 160


@dataclass(frozen=True)
class Query:
    """What was searched for: an image, a text, or an image with a clinical note."""

    name: str  # how the query is shown: a file name, or the text itself
    image: ImageSource | None = None
    text: str | None = None
    note: str | None = None


def snippet(hit: Hit, chars: int = SNIPPET_CHARS) -> str:
    """The start of the hit's report (impression first), on one line."""
    case = hit.case
    text = " ".join(case.text(("impression", "findings")).split()) or "(no report: image only)"
    return text if len(text) <= chars else text[: chars - 1].rstrip() + "…"


def hits_frame(results: Sequence[tuple[Query, list[Hit]]]) -> pd.DataFrame:
    """One row per (query, hit): query, rank, case id, score, modality, source, split, labels,
    report snippet, image path."""
    rows = [
        {
            "query": query.name,
            "rank": hit.rank,
            "case_id": hit.case.case_id,
            "score": round(hit.score, 4),
            "modality": hit.modality,
            "source": hit.case.source,
            "split": hit.case.split,
            "labels": "; ".join(positive_labels(hit.case.labels)),
            "snippet": snippet(hit),
            "image_path": hit.case.image_path,
        }
        for query, hits in results
        for hit in hits
    ]
    columns = [
        "query",
        "rank",
        "case_id",
        "score",
        "modality",
        "source",
        "split",
        "labels",
        "snippet",
        "image_path",
    ]
    return pd.DataFrame(rows, columns=columns)


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write the table atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def plot_hits(query: Query, hits: Sequence[Hit], path: str | Path, columns: int = 5) -> Path:
    """A PNG: the query (image, or its text) then the top-K cases, each with rank, score,
    labels and a report snippet; written atomically."""
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
    if query.image is not None:
        query_axis.imshow(open_image(query.image), cmap="gray")
        query_axis.set_title("query", fontsize=10, fontweight="bold")
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
        if hit.case.image_path:
            axis.imshow(open_image(hit.case.image_path), cmap="gray")
        labels = ", ".join(positive_labels(hit.case.labels)) or "no labels"
        axis.set_title(
            f"#{hit.rank} {hit.score:.3f} ({hit.modality})\n{textwrap.shorten(labels, 40)}",
            fontsize=8,
        )
        axis.text(
            0.5,
            -0.02 if hit.case.image_path else 0.95,
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
