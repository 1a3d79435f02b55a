"""`medxpert eval fusion`: choose how `--target both` fuses reports and images, on val; save it
next to the index; compare every method on test."""

from __future__ import annotations

import argparse

from medxpert.cli.common import (
    add_artifact_arguments,
    add_output_arguments,
    output_prefix,
    present_results,
)
from medxpert.config import Settings


def add_eval_command(kinds: argparse._SubParsersAction) -> None:
    """`medxpert eval fusion` (the `eval` parser's kinds call this)."""
    parser = kinds.add_parser(
        "fusion",
        help="choose how target both fuses reports and images (label P@10 on val), save it, "
        "compare every method on test",
        description="Query the IU X-ray frontal views (one per study) and the NIH images: "
        "the validation ones against the library's train split, to measure each index's score "
        "distribution and choose the fusion with the best label P@k over the retrieved studies "
        "(saved next to the index as fusion.json, read by search and diagnose); then the test "
        "ones against the train and val splits, every method side by side with 95% intervals.",
    )
    add_artifact_arguments(parser)
    parser.add_argument("-k", "--k", type=int, default=10, help="studies retrieved per query")
    parser.add_argument("--k0", type=int, default=60, help="the k0 of reciprocal-rank fusion")
    add_output_arguments(parser, "fusion_metrics")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from medxpert.eval import fusion
    from medxpert.index.library import library_artifacts
    from medxpert.retrieval import SearchEngine

    settings = Settings.from_env()
    model_dir, index_dir = library_artifacts(args.index, args.model, settings)
    engine = SearchEngine.from_artifacts(model_dir, index_dir, device=settings.device)
    result = fusion.run(engine, k=args.k, k0=args.k0, n_boot=args.bootstrap)
    print(result.evaluation.meta["queries"])
    paths = fusion.save(result, index_dir, output_prefix(args))
    present_results(paths, f"saved the fusion {result.fusion.method} to {paths['fusion']}")
