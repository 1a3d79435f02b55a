"""`medxpert eval thresholds` (choose the per-finding reporting thresholds on val, save them)
and `medxpert eval reports` (report quality against the baselines, by protocol)."""

from __future__ import annotations

import argparse

from medxpert.cli.common import (
    add_artifact_arguments,
    add_output_arguments,
    load_pipeline,
    output_prefix,
    present_results,
)
from medxpert.eval.sources import REPORT_PROTOCOLS


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
    add_output_arguments(thresholds, "thresholds", bootstrap=False)
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
    add_output_arguments(reports, "report_metrics")
    reports.set_defaults(run=_run_reports)


def _add_protocol(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol",
        choices=REPORT_PROTOCOLS,
        default="iu",
        help="iu: the pack's own splits (default); r2gen: R2Gen's split of IU X-ray",
    )


def _run_thresholds(args: argparse.Namespace) -> None:
    from medxpert.eval import thresholds

    pipeline, index_dir = load_pipeline(args)
    result = thresholds.run(pipeline, args.protocol)
    print(result.table())
    paths = thresholds.save(result, index_dir, output_prefix(args))
    print(f"wrote {paths['thresholds']} and {paths['md']}")


def _run_reports(args: argparse.Namespace) -> None:
    from medxpert.eval import reports

    pipeline, _ = load_pipeline(args)
    evaluation = reports.run(pipeline, args.protocol, limit=args.limit, n_boot=args.bootstrap)
    if args.protocol != "iu":
        args.out_name = f"{args.out_name}_{args.protocol}"
    present_results(evaluation.write(output_prefix(args)))
