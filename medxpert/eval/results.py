"""Write evaluation rows side by side: JSON, CSV, Markdown and a bar chart with 95% intervals."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medxpert.atomic import atomic_path, atomic_write_text
from medxpert.metrics.bootstrap import Estimate


@dataclass(frozen=True)
class Row:
    """One metric of one task, for every system side by side."""

    task: str
    metric: str
    estimates: dict[str, Estimate]  # model name (and "chance") → estimate


@dataclass(frozen=True)
class Evaluation:
    """What a protocol measured: its rows, the systems side by side (weakest first, the one
    measured last), a title and what to record beside the figures."""

    rows: list[Row]
    systems: list[str]
    title: str
    meta: dict

    def write(self, prefix: str | Path) -> dict[str, Path]:
        """`prefix`.json / .csv / .md / .png (`write_results`)."""
        return write_results(self.rows, prefix, self.systems, title=self.title, meta=self.meta)


def beats(row: Row, model: str, others: Sequence[str]) -> bool | None:
    """`model`'s interval lies wholly above every other's (non-overlapping 95% intervals); None
    for a point figure without an interval (corpus BLEU, METEOR), where it cannot be said."""
    mine = row.estimates[model]
    if not mine.low < mine.high:
        return None
    return all(mine.low > row.estimates[other].high for other in others if other in row.estimates)


def write_results(
    rows: Sequence[Row], prefix: str | Path, models: Sequence[str], *, title: str, meta: dict
) -> dict[str, Path]:
    """`prefix`.json / .csv / .md / .png; `models` gives the column order (chance first)."""
    prefix = Path(prefix)
    best, others = models[-1], models[:-1]
    records = [
        {
            "task": row.task,
            "metric": row.metric,
            **{name: row.estimates[name].to_dict() for name in models},
            f"{best} beats the rest": beats(row, best, others),
        }
        for row in rows
    ]
    paths = {
        "json": prefix.with_suffix(".json"),
        "csv": prefix.with_suffix(".csv"),
        "md": prefix.with_suffix(".md"),
        "png": prefix.with_suffix(".png"),
    }
    atomic_write_text(paths["json"], json.dumps({**meta, "rows": records}, indent=2) + "\n")
    atomic_write_text(paths["csv"], _csv(rows, models))
    atomic_write_text(paths["md"], markdown_table(rows, models, title=title, meta=meta))
    _plot(rows, models, paths["png"], title)
    return paths


def markdown_table(rows: Sequence[Row], models: Sequence[str], *, title: str, meta: dict) -> str:
    best, others = models[-1], models[:-1]
    lines = [f"### {title}", ""]
    lines += [f"- {key}: {value}" for key, value in meta.items()]
    lines += [
        "",
        "| task | metric | n | " + " | ".join(models) + f" | {best} > all |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in models) + " | :---: |",
    ]
    for row in rows:
        n = max(estimate.n for estimate in row.estimates.values())
        cells = [
            f"{row.estimates[m].value:.3f} [{row.estimates[m].low:.3f}, "
            f"{row.estimates[m].high:.3f}]"
            for m in models
        ]
        lines.append(
            f"| {row.task} | {row.metric} | {n} | "
            + " | ".join(cells)
            + f" | {_verdict(beats(row, best, others))} |"
        )
    lines.append("")
    lines.append(
        "Each cell: value [95% bootstrap interval over queries]. The last column says "
        f"whether {best}'s interval lies wholly above every other column's."
    )
    return "\n".join(lines) + "\n"


def _csv(rows: Sequence[Row], models: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(
        ["task", "metric", "n"]
        + [f"{m}_{part}" for m in models for part in ("value", "low", "high")]
    )
    for row in rows:
        n = max(estimate.n for estimate in row.estimates.values())
        writer.writerow(
            [row.task, row.metric, n]
            + [
                round(getattr(row.estimates[m], part), 4)
                for m in models
                for part in ("value", "low", "high")
            ]
        )
    return buffer.getvalue()


def _plot(rows: Sequence[Row], models: Sequence[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [f"{row.task}: {row.metric}" for row in rows]
    height = 0.8 / len(models)
    figure, axis = plt.subplots(figsize=(10, 0.32 * len(rows) * len(models) / 2 + 2))
    for i, model in enumerate(models):
        values = np.array([row.estimates[model].value for row in rows])
        errors = np.array(
            [
                [
                    row.estimates[model].value - row.estimates[model].low,
                    row.estimates[model].high - row.estimates[model].value,
                ]
                for row in rows
            ]
        ).T
        axis.barh(  # an undefined figure (NaN: e.g. an AUC without negatives) draws no bar
            np.arange(len(rows)) + i * height,
            np.nan_to_num(values),
            height=height,
            xerr=np.nan_to_num(errors).tolist(),  # an array trips matplotlib with one bar
            label=model,
            capsize=1.5,
            error_kw={"elinewidth": 0.6},
        )
    axis.set_yticks(np.arange(len(rows)) + height * (len(models) - 1) / 2)
    axis.set_yticklabels(labels, fontsize=7)
    axis.invert_yaxis()
    axis.set_xlim(0, 1)
    axis.set_title(title)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)


def _verdict(beat: bool | None) -> str:
    return "n/a" if beat is None else ("yes" if beat else "no")
