"""Report evaluation protocols: the held-out sets, the systems a report is compared with, and
the choice of the per-finding thresholds on the validation split.

- Sets (`report_sets`): protocol ``iu`` (IU X-ray test studies queried by their frontal X-ray,
  findings + impression as the reference; the same reports as text queries; COVID test
  X-rays) and protocol ``r2gen`` (R2Gen's IU test split, findings only, scored also as R2Gen
  scores, `eval.r2gen`).
- Systems (`report_systems`): a random train study's report, the top-1 retrieved study's
  report, the read-out writer and the offline (prose) writer, on the same evidence.
- Thresholds (`choose_on_validation`): each validation study is queried by its frontal X-ray
  against the library's train split (so that it cannot find itself); the vote of what it
  retrieves is compared, finding by finding, with the labels the report labeler reads in the
  study's own report (`report.thresholds.choose_thresholds`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from medxpert.data import Case, load_cases
from medxpert.data.study import group_studies
from medxpert.errors import ConfigError
from medxpert.eval.r2gen import R2GenText
from medxpert.eval.reports import REPORT_SECTIONS, ReportItem, System, evaluate_reports
from medxpert.eval.retrieval import Row
from medxpert.labels import CHEXPERT_LABELS, default_labeler
from medxpert.report.context import ReportContext
from medxpert.report.offline import OfflineWriter
from medxpert.report.readout import ReadoutWriter
from medxpert.report.thresholds import ThresholdChoice, choose_thresholds
from medxpert.retrieval import Filters

PROTOCOLS = ("iu", "r2gen")
VALIDATION_SOURCE = {"iu": "iu_xray", "r2gen": "iu_xray_r2gen"}


def report_systems(
    train_reports: Sequence[str], sections: tuple[str, ...] = REPORT_SECTIONS, seed: int = 0
) -> dict[str, System]:
    """The systems compared, weakest first: the report of a random train study, the top-1
    retrieved study's report, the read-out writer and the offline (prose) writer; each gives
    `sections` of its report (findings, or findings + impression)."""
    rng = np.random.default_rng(seed)
    offline, readout = OfflineWriter(), ReadoutWriter()

    def written(report) -> str:
        return " ".join(getattr(report, f"{name}_text") for name in sections)

    def top1(context: ReportContext) -> str:
        return next((t for h in context.hits if (t := h.case.text(sections))), "")

    return {
        "random train report": lambda context: str(rng.choice(train_reports)),
        "top-1 retrieved report": top1,
        "read-out writer": lambda context: written(readout.write(context)),
        "MedXpert (prose writer)": lambda context: written(offline.write(context)),
    }


def image_items(
    cases: Sequence[Case], sections: tuple[str, ...], limit: int | None
) -> list[ReportItem]:
    """One item per study with a query image (its first frontal view) and a reference."""
    studies = [
        s for s in group_studies(cases) if s.query_image is not None and s.first.text(sections)
    ]
    return [
        ReportItem(s.study_id, {"image": s.query_image.image_path}, s.first.text(sections))
        for s in studies[:limit]
    ]


def text_items(cases: Sequence[Case], limit: int | None) -> list[ReportItem]:
    """IU test reports used as text queries (one per study): each finds reports like itself."""
    studies = [s for s in group_studies(cases) if s.first.text(REPORT_SECTIONS)]
    return [
        ReportItem(s.study_id, {"text": s.first.text()}, s.first.text(REPORT_SECTIONS))
        for s in studies[:limit]
    ]


@dataclass(frozen=True)
class ReportSet:
    """Held-out items and the report sections compared (the references' and the systems')."""

    items: list[ReportItem]
    sections: tuple[str, ...]
    train_reports: list[str]  # the pool of the random-report baseline
    r2gen_text: R2GenText | None = None  # to add R2Gen's own scoring


def report_sets(protocol: str = "iu", limit: int | None = None) -> dict[str, ReportSet]:
    """The held-out sets of `protocol`, by task name; at most `limit` items each.

    - ``iu``: IU X-ray test studies queried by their frontal X-ray, findings + impression as
      the reference; the same studies' reports as text queries; the COVID pack's test X-rays.
    - ``r2gen``: the studies of R2Gen's IU X-ray test split (``iu_xray_r2gen``) queried by
      their frontal X-ray, the findings as the reference (R2Gen's), for an encoder and a
      library built from R2Gen's train split only.
    """
    if protocol == "r2gen":
        findings = ("findings",)
        train = _train_reports("iu_xray_r2gen", findings)
        items = image_items(load_cases("iu_xray_r2gen", "test"), findings, limit)
        return {
            f"IU X-ray, R2Gen test split: X-ray queries, findings (n={len(items)})": ReportSet(
                items, findings, train, R2GenText(train)
            )
        }
    if protocol != "iu":
        raise ConfigError(
            f"unknown report protocol {protocol!r}; available: {', '.join(PROTOCOLS)}."
        )
    iu_test, covid_test = load_cases("iu_xray", "test"), load_cases("covid_cxr", "test")
    train = _train_reports("iu_xray", REPORT_SECTIONS)
    images = image_items(iu_test, REPORT_SECTIONS, limit)
    texts = text_items(iu_test, limit)
    covid = image_items(covid_test, REPORT_SECTIONS, limit)
    return {
        f"IU test X-ray queries, findings + impression (n={len(images)})": ReportSet(
            images, REPORT_SECTIONS, train
        ),
        f"IU test reports as TEXT queries (n={len(texts)})": ReportSet(
            texts, REPORT_SECTIONS, train
        ),
        f"COVID test X-ray queries (n={len(covid)})": ReportSet(covid, REPORT_SECTIONS, train),
    }


def _train_reports(source: str, sections: tuple[str, ...]) -> list[str]:
    return [t for s in group_studies(load_cases(source, "train")) if (t := s.first.text(sections))]


def run_reports(
    evidence: Callable[..., ReportContext],
    protocol: str = "iu",
    *,
    limit: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[list[Row], list[str]]:
    """Every set of `protocol`, every system side by side: the rows and the system names
    (weakest first)."""
    rows: list[Row] = []
    names: list[str] = []
    for task, report_set in report_sets(protocol, limit).items():
        systems = report_systems(report_set.train_reports, report_set.sections, seed)
        extra = report_set.r2gen_text.scores if report_set.r2gen_text else None
        rows += evaluate_reports(
            task, report_set.items, systems, evidence, n_boot=n_boot, seed=seed, extra=extra
        )
        names = list(systems)
    return rows, names


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


def choose_on_validation(
    evidence: Callable[..., ReportContext], cases: Sequence[Case]
) -> list[ThresholdChoice]:
    votes, reference = validation_votes(evidence, cases)
    return choose_thresholds(votes, reference)
