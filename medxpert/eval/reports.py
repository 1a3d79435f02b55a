"""Report quality: generated reports against reference reports.

- Language overlap: BLEU-1..4, ROUGE-L F and METEOR (`medxpert.metrics.text`).
- Clinical content: CheXpert-label F1. The report labeler labels both texts; a label counts
  as present when positive (micro and macro F1, `medxpert.metrics.text.label_f1`).

Several systems are scored side by side on the same items. ROUGE-L and the label F1s get 95%
bootstrap intervals over reports; the corpus-level BLEU and METEOR are point figures.

The protocols (`run(pipeline, protocol)`):
- Sets (`report_sets`): protocol ``iu`` (IU X-ray test studies queried by their frontal X-ray,
  findings + impression as the reference; the same reports as text queries; COVID test
  X-rays) and protocol ``r2gen`` (R2Gen's IU test split, findings only, scored also as R2Gen
  scores, `eval.r2gen`); their sources are `eval.sources.REPORT_TEST_SOURCES`.
- Systems (`report_systems`): a random train study's report, the top-1 retrieved study's
  report, the read-out writer and the offline (prose) writer, on the same evidence.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from medxpert.data import Case, load_cases
from medxpert.data.study import group_studies
from medxpert.errors import ConfigError
from medxpert.eval.r2gen import R2GenText
from medxpert.eval.results import Evaluation, Row
from medxpert.eval.sources import REPORT_EXTRA_TEST, REPORT_PROTOCOLS, REPORT_SOURCE
from medxpert.labels import default_labeler
from medxpert.metrics.bootstrap import Estimate, bootstrap_mean
from medxpert.metrics.text import bleu, label_f1, meteor, rouge_l
from medxpert.report.offline import OfflineWriter
from medxpert.report.readout import ReadoutWriter

if TYPE_CHECKING:
    from medxpert.pipeline import DiagnosisPipeline
    from medxpert.report.context import ReportContext

logger = logging.getLogger(__name__)

REPORT_SECTIONS = ("findings", "impression")  # a reference report, in a report's order


@dataclass(frozen=True)
class ReportItem:
    """One held-out study: how to query for it, and its reference report."""

    name: str
    query: Mapping[str, object]  # keyword arguments of `DiagnosisPipeline.evidence`
    reference: str


# A system: the evidence of one query (whatever `evidence` returns) → the text of its report.
System = Callable[[Any], str]


def evaluate_reports(
    task: str,
    items: Sequence[ReportItem],
    systems: Mapping[str, System],
    evidence: Callable[..., Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    extra: Callable[[Sequence[str], Sequence[str]], dict[str, float]] | None = None,
) -> list[Row]:
    """Every metric for every system on `items`; each item's evidence (`evidence(**query)`)
    is gathered once and given to every system. `extra(generated, references)` adds point
    figures (e.g. `R2GenText.scores`)."""
    labeler = default_labeler()
    references = [item.reference for item in items]
    generated: dict[str, list[str]] = {name: [] for name in systems}
    for item in tqdm(items, desc=task, unit="report", leave=False):
        context = evidence(**item.query)
        for name, system in systems.items():
            generated[name].append(system(context))
    reference_labels = labeler.label_many(references)
    per_system: dict[str, dict[str, Estimate]] = {}
    for name, texts in generated.items():
        figures = {
            metric: Estimate(value, value, value, len(items))
            for metric, value in bleu(texts, references).items()
        }
        score = meteor(texts, references)
        if score is not None:
            figures["METEOR"] = Estimate(score, score, score, len(items))
        figures["ROUGE-L"] = bootstrap_mean(rouge_l(texts, references), n_boot, seed)
        figures.update(label_f1(labeler.label_many(texts), reference_labels, n_boot, seed))
        for metric, value in (extra(texts, references) if extra else {}).items():
            figures[metric] = Estimate(value, value, value, len(items))
        per_system[name] = figures
        logger.info("%s / %s: %s", task, name, {k: round(v.value, 3) for k, v in figures.items()})
    metrics = list(next(iter(per_system.values())))
    return [
        Row(task, metric, {name: figures[metric] for name, figures in per_system.items()})
        for metric in metrics
    ]


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
    if protocol not in REPORT_PROTOCOLS:
        raise ConfigError(
            f"unknown report protocol {protocol!r}; available: {', '.join(REPORT_PROTOCOLS)}."
        )
    source, extra = REPORT_SOURCE[protocol], REPORT_EXTRA_TEST[protocol]
    test = load_cases(source, "test")
    if protocol == "r2gen":
        findings = ("findings",)
        train = _train_reports(source, findings)
        items = image_items(test, findings, limit)
        return {
            f"IU X-ray, R2Gen test split: X-ray queries, findings (n={len(items)})": ReportSet(
                items, findings, train, R2GenText(train)
            )
        }
    train = _train_reports(source, REPORT_SECTIONS)
    images = image_items(test, REPORT_SECTIONS, limit)
    texts = text_items(test, limit)
    covid = image_items(load_cases(extra, "test"), REPORT_SECTIONS, limit)
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


def run(
    pipeline: DiagnosisPipeline,
    protocol: str = "iu",
    *,
    limit: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Evaluation:
    """Every set of `protocol`, every system side by side, on the evidence of `pipeline`
    (past the input guard: every labelled X-ray of a protocol is measured; the guard is
    measured on its own, by benchmarks/guard_bench.py)."""
    evidence = functools.partial(pipeline.evidence, force=True)
    rows: list[Row] = []
    names: list[str] = []
    for task, report_set in report_sets(protocol, limit).items():
        systems = report_systems(report_set.train_reports, report_set.sections, seed)
        extra = report_set.r2gen_text.scores if report_set.r2gen_text else None
        rows += evaluate_reports(
            task, report_set.items, systems, evidence, n_boot=n_boot, seed=seed, extra=extra
        )
        names = list(systems)
    meta = {
        "model": pipeline.engine.encoder.info.get("path"),
        "library": pipeline.engine.library.manifest.get("name"),
        "protocol": protocol,
        "bootstrap": n_boot,
    }
    return Evaluation(rows, names, f"Report quality (protocol {protocol})", meta)
