"""Choosing the per-finding reporting thresholds on the validation split.

Each validation study of a report protocol's source (`eval.sources.REPORT_SOURCE`) is queried
by its frontal X-ray against the library's train split (so that it cannot find itself); the
vote of what it retrieves is compared, finding by finding, with the labels the report labeler
reads in the study's own report (`report.thresholds.choose_thresholds`). `save` writes them next
to the index (``thresholds.json``, read by diagnose) with a Markdown table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from medxpert.atomic import atomic_write_text
from medxpert.data import Case, load_cases
from medxpert.data.study import group_studies
from medxpert.eval.reports import REPORT_SECTIONS
from medxpert.eval.sources import REPORT_SOURCE
from medxpert.labels import CHEXPERT_LABELS, default_labeler
from medxpert.report.thresholds import ThresholdChoice, choose_thresholds, write_thresholds
from medxpert.retrieval import Filters

if TYPE_CHECKING:
    from medxpert.pipeline import DiagnosisPipeline
    from medxpert.report.context import ReportContext


@dataclass(frozen=True)
class ThresholdRun:
    """The thresholds chosen, where, and for which encoder."""

    choices: list[ThresholdChoice]
    source: str
    fingerprint: str

    def table(self) -> str:
        lines = [
            "| finding | val positives | threshold | val F1 | F1 at 0.50 |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {c.label} | {c.positives} | {c.threshold:.2f} | {c.f1:.3f} | {c.default_f1:.3f} |"
            for c in self.choices
        ]
        return "\n".join(lines) + "\n"


def validation_votes(
    evidence: Callable[..., ReportContext], cases: Sequence[Case]
) -> tuple[np.ndarray, np.ndarray]:
    """(votes, reference labels), each (n studies, 14), for the studies of `cases` with a
    query image and a report."""
    studies = [
        s for s in group_studies(cases) if s.query_image is not None and s.text(REPORT_SECTIONS)
    ]
    train_only = Filters.of(splits=["train"])
    votes = []
    for study in tqdm(studies, desc="validation votes", unit="study", leave=False):
        context = evidence(image=study.query_image.image_path, filters=train_only)
        votes.append([context.vote.probabilities[label] for label in CHEXPERT_LABELS])
    reference = default_labeler().label_many([s.text(REPORT_SECTIONS) for s in studies])
    return np.asarray(votes, dtype=np.float64).reshape(-1, len(CHEXPERT_LABELS)), reference


def run(pipeline: DiagnosisPipeline, protocol: str = "iu") -> ThresholdRun:
    """Each finding's threshold, chosen on the val studies of `protocol`'s source (past the
    input guard: every labelled X-ray counts)."""
    source = REPORT_SOURCE[protocol]

    def evidence(**query):
        return pipeline.evidence(**query, force=True)

    votes, reference = validation_votes(evidence, load_cases(source, "val"))
    return ThresholdRun(
        choose_thresholds(votes, reference), source, pipeline.engine.encoder.fingerprint()
    )


def save(result: ThresholdRun, index_dir: str | Path, prefix: str | Path) -> dict[str, Path]:
    """``thresholds.json`` next to the index (key "thresholds") and `prefix`.md."""
    saved = write_thresholds(
        index_dir,
        result.choices,
        result.fingerprint,
        chosen_on=f"{result.source} val, frontal X-ray queries against the library's train split",
    )
    title = f"### Reporting thresholds ({result.source} val)\n\n"
    markdown = atomic_write_text(Path(prefix).with_suffix(".md"), title + result.table())
    return {"thresholds": saved, "md": markdown}
