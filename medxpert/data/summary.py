"""Counts of a source's cases per split, view and label (`medxpert data summary`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from medxpert.data.case import SPLITS, VIEWS, Case
from medxpert.labels import CHEXPERT_LABELS

TOP_EXTRA_LABELS = 15


def summarize(cases: Sequence[Case]) -> dict:
    """A JSON-ready summary: totals, per-split counts, views, label counts, extra labels."""
    splits = [name for name in SPLITS if any(case.split == name for case in cases)]
    by_split = {name: [case for case in cases if case.split == name] for name in splits}
    labels = np.stack([case.labels for case in cases]) if cases else np.empty((0, 14))
    split_of = np.array([case.split for case in cases])
    label_counts = {}
    for i, label in enumerate(CHEXPERT_LABELS):
        label_counts[label] = {
            name: {
                "positive": int(np.sum(labels[split_of == name, i] == 1)),
                "uncertain": int(np.sum(labels[split_of == name, i] == -1)),
                "negative": int(np.sum(labels[split_of == name, i] == 0)),
            }
            for name in splits
        }
    extra = Counter(label.split("/")[0] for case in cases for label in set(case.extra_labels))
    return {
        "sources": sorted({case.source for case in cases}),
        "totals": _counts(cases),
        "by_split": {name: _counts(group) for name, group in by_split.items()},
        "by_view": {
            name: {view: sum(case.view == view for case in group) for view in VIEWS}
            for name, group in by_split.items()
        },
        "labels": label_counts,
        "label_sources": dict(Counter(case.label_source or "none" for case in cases)),
        "extra_labels": dict(extra.most_common(TOP_EXTRA_LABELS)),
    }


def _counts(cases: Sequence[Case]) -> dict[str, int]:
    return {
        "cases": len(cases),
        "patients": len({case.patient_id for case in cases if case.patient_id}),
        "studies": len({case.study_id for case in cases if case.study_id}),
        "with_image": sum(case.has_image for case in cases),
        "with_text": sum(case.has_text for case in cases),
    }


def format_summary(name: str, summary: dict) -> str:
    """The summary as plain-text tables."""
    totals = summary["totals"]
    splits = list(summary["by_split"])
    lines = [
        f"{name}: {totals['cases']} cases, {totals['patients']} patients, "
        f"{totals['studies']} studies ({totals['with_image']} with an image, "
        f"{totals['with_text']} with report text)",
        "",
        _table(
            ["split", "cases", "patients", "studies", "images", "texts", *VIEWS],
            [
                [
                    split,
                    *(
                        summary["by_split"][split][key]
                        for key in ("cases", "patients", "studies", "with_image", "with_text")
                    ),
                    *(summary["by_view"][split][view] for view in VIEWS),
                ]
                for split in splits
            ],
        ),
        "",
        "positive labels per split (uncertain in brackets):",
        _table(
            ["label", *splits],
            [
                [label, *(_label_cell(summary["labels"][label][split]) for split in splits)]
                for label in CHEXPERT_LABELS
            ],
        ),
    ]
    sources = ", ".join(f"{key} {value}" for key, value in summary["label_sources"].items())
    lines += ["", f"label sources: {sources}"]
    if summary["extra_labels"]:
        extras = ", ".join(f"{key} {value}" for key, value in summary["extra_labels"].items())
        lines.append(f"extra labels (top {TOP_EXTRA_LABELS}): {extras}")
    return "\n".join(lines)


def _label_cell(counts: dict[str, int]) -> str:
    return (
        f"{counts['positive']} ({counts['uncertain']})"
        if counts["uncertain"]
        else str(counts["positive"])
    )


def _table(header: list[str], rows: list[list[object]]) -> str:
    cells = [header, *[[str(value) for value in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            value.ljust(width) if i == 0 else value.rjust(width)
            for i, (value, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in cells
    )
