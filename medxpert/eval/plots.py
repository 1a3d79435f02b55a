"""Plots of evaluation results, saved as PNG (atomically) under results/."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from medxpert.atomic import atomic_path


def grouped_bar_chart(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    ylim: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """Horizontal grouped bars: one group per category, one bar per series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    height = 0.8 / max(len(series), 1)
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(categories) + 1.5))
    for i, (name, values) in enumerate(series.items()):
        positions = [row + i * height for row in range(len(categories))]
        axis.barh(positions, values, height=height, label=name)
    axis.set_yticks([row + height * (len(series) - 1) / 2 for row in range(len(categories))])
    axis.set_yticklabels(categories)
    axis.invert_yaxis()
    axis.set_xlim(*ylim)
    axis.set_xlabel(ylabel)
    axis.set_title(title)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.6 / len(categories) - 0.04),
        fontsize="small",
        ncols=min(len(series), 2),
    )
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return Path(path)
