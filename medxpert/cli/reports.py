"""`medxpert eval thresholds` (choose the per-finding reporting thresholds on val, save them)
and `medxpert eval reports` (report quality against the baselines, by protocol)."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from medxpert.atomic import atomic_write_text
from medxpert.cli.common import add_artifact_arguments
from medxpert.config import Settings

PROTOCOLS = ("iu", "r2gen")  # medxpert.report.evaluation.PROTOCOLS (not imported: slow)


def add_eval_commands(kinds: argparse._SubParsersAction) -> None:
    """`medxpert eval thresholds` and `medxpert eval reports` (the `eval` parser calls this)."""
    thresholds = kinds.add_parser(
        "thresholds",
        help="choose each finding's reporting threshold on val and save it next to the index",
        description="Query each IU X-ray validation study by its frontal X-ray against the "
        "library's train split, and choose per finding the vote threshold with the best F1 "
        "against the labels of the study's own report (findings with fewer than 5 positives "
        "keep 0.5). Saved as thresholds.json next to the index, read by diagnose.",
    )
    add_artifact_arguments(thresholds)
    _add_protocol(thresholds)
    thresholds.add_argument(
        "--out", type=Path, default=None, help="output prefix (default: results/thresholds)"
    )
    thresholds.set_defaults(run=_run_thresholds)

    reports = kinds.add_parser(
        "reports",
        help="report quality (BLEU, METEOR, ROUGE-L, CheXpert F1) against three baselines",
        description="Diagnose held-out studies and score each report against the study's own, "
        "side by side with the report of a random train study, the top-1 retrieved study's "
        "report and the read-out writer. Protocol iu: IU test X-rays (findings + impression), "
        "IU test reports as text queries, COVID test X-rays. Protocol r2gen: R2Gen's IU test "
        "split (findings), for a model and library built on R2Gen's train split (./dev.sh r2gen).",
    )
    add_artifact_arguments(reports)
    _add_protocol(reports)
    reports.add_argument("--limit", type=int, default=None, help="at most N items per set")
    reports.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    reports.add_argument(
        "--out", type=Path, default=None, help="output prefix (default: results/report_metrics)"
    )
    reports.set_defaults(run=_run_reports)


def _add_protocol(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="iu",
        help="iu: the pack's own splits (default); r2gen: R2Gen's split of IU X-ray",
    )


def _pipeline(args: argparse.Namespace, settings: Settings):
    from medxpert.index.library import library_artifacts
    from medxpert.pipeline import DiagnosisPipeline

    model_dir, index_dir = library_artifacts(args.index, args.model, settings)
    return DiagnosisPipeline.from_artifacts(model_dir, index_dir, device=settings.device), index_dir


def _evidence(pipeline):
    """`pipeline.evidence` past the input guard: every labelled X-ray of a protocol is
    measured (the guard is measured on its own, by benchmarks/guard_bench.py)."""
    return functools.partial(pipeline.evidence, force=True)


def _run_thresholds(args: argparse.Namespace) -> None:
    from medxpert.data import load_cases
    from medxpert.report.evaluation import VALIDATION_SOURCE, choose_on_validation
    from medxpert.report.thresholds import write_thresholds

    settings = Settings.from_env()
    pipeline, index_dir = _pipeline(args, settings)
    source = VALIDATION_SOURCE[args.protocol]
    choices = choose_on_validation(_evidence(pipeline), load_cases(source, "val"))
    path = write_thresholds(
        index_dir,
        choices,
        pipeline.engine.encoder.fingerprint(),
        chosen_on=f"{source} val, frontal X-ray queries against the library's train split",
    )
    lines = [
        "| finding | val positives | threshold | val F1 | F1 at 0.50 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {c.label} | {c.positives} | {c.threshold:.2f} | {c.f1:.3f} | {c.default_f1:.3f} |"
        for c in choices
    ]
    table = "\n".join(lines) + "\n"
    out = args.out or settings.results_dir / "thresholds"
    atomic_write_text(
        Path(out).with_suffix(".md"), f"### Reporting thresholds ({source} val)\n\n{table}"
    )
    print(table)
    print(f"wrote {path} and {Path(out).with_suffix('.md')}")


def _run_reports(args: argparse.Namespace) -> None:
    from medxpert.eval.results import write_results
    from medxpert.report.evaluation import run_reports

    settings = Settings.from_env()
    pipeline, index_dir = _pipeline(args, settings)
    rows, systems = run_reports(
        _evidence(pipeline), args.protocol, limit=args.limit, n_boot=args.bootstrap
    )
    default_out = "report_metrics" if args.protocol == "iu" else f"report_metrics_{args.protocol}"
    paths = write_results(
        rows,
        args.out or settings.results_dir / default_out,
        systems,
        title=f"Report quality (protocol {args.protocol})",
        meta={
            "model": pipeline.engine.encoder.info["path"],
            "library": str(index_dir),
            "protocol": args.protocol,
            "bootstrap": args.bootstrap,
        },
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
