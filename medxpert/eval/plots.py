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


def training_curves(log_path: str | Path, path: str | Path) -> Path:
    """Loss per step (per loss term: the logged window means, smoothed) and validation scores
    per epoch, from a training log (JSON lines)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    records = [json.loads(line) for line in Path(log_path).read_text().splitlines() if line]
    steps = [r for r in records if r.get("event") == "step"]
    epochs = [r for r in records if r.get("event") == "epoch"]
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("paired_loss", "unpaired_loss", "image_image_loss"):
        points = [(r["step"], r[key]) for r in steps if key in r]
        if points:
            x, y = np.array(points).T
            window = max(1, len(y) // 10)
            smooth = np.convolve(y, np.ones(window) / window, mode="valid")
            losses.plot(
                x[window - 1 :],
                smooth,
                marker="." if len(smooth) < 20 else None,
                label=key.replace("_", " "),
            )
    losses.set_xlabel("step")
    losses.set_ylabel("loss (mean per log window, smoothed)")
    losses.legend(fontsize="small")
    losses.grid(alpha=0.3)
    metric_keys = [
        k
        for k in (epochs[0] if epochs else {})
        if k not in ("event", "epoch", "improved", "seconds")
    ]
    for key in metric_keys:
        scores.plot(
            [r["epoch"] for r in epochs],
            [r[key] for r in epochs],
            marker="o",
            label=key.replace("_", " "),
        )
    scores.set_xlabel("epoch")
    scores.set_ylabel("validation")
    scores.legend(fontsize="small")
    scores.grid(alpha=0.3)
    figure.suptitle("Fine-tuning")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
    return Path(path)


def weight_curve(
    table: Mapping[float, float], chosen: float, path: str | Path, *, title: str, ylabel: str
) -> Path:
    """A metric against a weight, with the chosen weight marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = sorted(table)
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(weights, [table[w] for w in weights], marker="o")
    axis.axvline(chosen, color="tab:red", linestyle="--", label=f"chosen w = {chosen:g}")
    axis.set_xlabel("zero-shot weight w")
    axis.set_ylabel(ylabel)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return Path(path)
