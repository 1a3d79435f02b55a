"""`Study`: the unit of retrieval, one examination's images (views) and its one report.

Readers yield one `Case` per image; the views of one study share its report and labels.
`group_studies` gathers them. A source without study ids (NIH, COVID) makes studies of one
image; a text-only source makes studies without images.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from medxpert.data.case import TEXT_FIELDS, Case

VIEW_ORDER = {"frontal": 0, "lateral": 1, "unknown": 2}


@dataclass(frozen=True, eq=False)
class Study:
    """One study: its cases (one per image, frontal views first; or one text-only case)."""

    study_id: str
    cases: tuple[Case, ...]

    @property
    def first(self) -> Case:
        return self.cases[0]

    @property
    def images(self) -> tuple[Case, ...]:
        return tuple(case for case in self.cases if case.has_image)

    @property
    def query_image(self) -> Case | None:
        """The image that stands for the study as a query: its first frontal view, else its
        first image of unknown view. A study with lateral views only has none."""
        for case in self.images:
            if case.view != "lateral":
                return case
        return None

    @property
    def has_frontal(self) -> bool:
        return any(case.view == "frontal" for case in self.images)

    @property
    def labels(self) -> np.ndarray:
        return self.first.labels

    @property
    def source(self) -> str:
        return self.first.source

    def text(self, sections: Iterable[str] = TEXT_FIELDS) -> str:
        return self.first.text(sections)


def group_studies(cases: Iterable[Case]) -> list[Study]:
    """Studies in the order their first case appears; views sorted frontal, lateral, other
    (then by case id), so a study's query image is always the same one."""
    grouped: dict[str, list[Case]] = {}
    for case in cases:
        grouped.setdefault(case.study_key, []).append(case)
    return [Study(key, tuple(sorted(members, key=_view_order))) for key, members in grouped.items()]


def normalise_report(text: str) -> str:
    """A report's text for telling identical reports apart from different ones: lower case,
    de-identification tokens (XXXX) and punctuation dropped, spaces collapsed."""
    text = re.sub(r"x{2,}", " ", text.lower())
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text).split())


def report_groups(texts: Sequence[str]) -> np.ndarray:
    """An integer per text; texts with the same normalised report share one (n,)."""
    ids: dict[str, int] = {}
    return np.array([ids.setdefault(normalise_report(t), len(ids)) for t in texts], np.int64)


def _view_order(case: Case) -> tuple[int, int, str]:
    return (not case.has_image, VIEW_ORDER.get(case.view, 3), case.case_id)
