"""`medxpert eval KIND`: parse the arguments, run the protocol of `medxpert.eval`, show and save
what it measured (retrieval, context and blend here; fusion, thresholds, reports and guard in
their own command modules)."""

from __future__ import annotations

import argparse
from pathlib import Path

from medxpert.cli import fusion, guard, reports
from medxpert.cli.common import (
    add_artifact_arguments,
    add_output_arguments,
    add_source_arguments,
    load_pipeline,
    load_sources,
    output_prefix,
    present_results,
)
from medxpert.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("eval", help="evaluate models")
    kinds = parser.add_subparsers(title="evaluations", metavar="KIND")
    retrieval = kinds.add_parser(
        "retrieval", help="Recall@K, MRR, label P@K, 5×N, kNN AUC with 95%% intervals"
    )
    retrieval.add_argument(
        "--model",
        type=Path,
        default=None,
        help="fine-tuned model directory (default: models/<MEDXPERT_ENCODER>)",
    )
    retrieval.add_argument(
        "--baseline",
        default=None,
        help="untuned backbone to compare with (default: the model's own)",
    )
    retrieval.add_argument(
        "--index",
        default=None,
        help="case library built with --model: its stored image vectors are used instead of "
        "embedding those images again (refused if built with another model)",
    )
    add_source_arguments(retrieval)
    retrieval.add_argument("--split", default="test", choices=("val", "test"))
    retrieval.add_argument("--knn-k", type=int, default=None, help="neighbours for kNN AUC")
    add_output_arguments(retrieval, "retrieval_metrics")
    retrieval.set_defaults(run=_run_retrieval)

    context = kinds.add_parser(
        "context",
        help="clinical context A/B: X-rays alone against X-rays + their clinical notes",
        description="Query every COVID-pack X-ray whose case note has a history part, alone "
        "and with that history as the clinical note, leaving its own patient out of the "
        "results: label P@k and per-label AUC of the probabilities, side by side.",
    )
    add_artifact_arguments(context)
    context.add_argument("-k", "--k", type=int, default=10)
    context.add_argument("--note-weight", type=float, default=None)
    add_output_arguments(context, "context_metrics")
    context.set_defaults(run=_run_context)

    blend = kinds.add_parser(
        "blend",
        help="choose the zero-shot blend weight on val, measure it on test, save it",
        description="Blend the retrieved cases' label vote with the label captioner's zero-shot "
        "probabilities: choose the weight with the lowest Brier score on the validation X-rays, "
        "save it next to the index (blend.json, read by diagnose), and compare vote, zero-shot "
        "and blend on the test X-rays.",
    )
    add_artifact_arguments(blend)
    blend.add_argument("-k", "--k", type=int, default=10)
    blend.add_argument(
        "--target",
        choices=("reports", "images", "both"),
        default="both",
        help="what the queries retrieve (default both, as diagnose does)",
    )
    add_output_arguments(blend, "blend_metrics")
    blend.set_defaults(run=_run_blend)

    fusion.add_eval_command(kinds)
    reports.add_eval_commands(kinds)
    guard.add_eval_command(kinds)


def _run_retrieval(args: argparse.Namespace) -> None:
    from medxpert.encoders import DualEncoder
    from medxpert.eval import retrieval

    settings = Settings.from_env()
    tuned = DualEncoder.load(
        args.model or settings.encoder, models_dir=settings.models_dir, device=settings.device
    )
    vectors = None
    if args.index:
        from medxpert.index import CaseLibrary

        library = CaseLibrary.load(settings.library_path(args.index), encoder=tuned)
        vectors = library.image_vectors_by_path()
        print(f"taking {len(vectors)} image vectors from the case library {args.index}")
    evaluation = retrieval.run(
        tuned,
        load_sources(args.source, args.split),
        load_sources(args.source, "train"),
        split=args.split,
        baseline=args.baseline,
        library_vectors=vectors,
        cache_dir=settings.cache_dir / "features",
        knn_k=args.knn_k or retrieval.KNN_K,
        n_boot=args.bootstrap,
    )
    print(f"evaluated on {evaluation.meta['sets']}")
    present_results(evaluation.write(output_prefix(args)))


def _run_context(args: argparse.Namespace) -> None:
    from medxpert.eval import context
    from medxpert.retrieval import DEFAULT_NOTE_WEIGHT

    note_weight = args.note_weight if args.note_weight is not None else DEFAULT_NOTE_WEIGHT
    pipeline, _ = load_pipeline(args, note_weight=note_weight)
    evaluation = context.run(pipeline, k=args.k, n_boot=args.bootstrap)
    present_results(evaluation.write(output_prefix(args)))


def _run_blend(args: argparse.Namespace) -> None:
    from medxpert.eval import blend

    pipeline, index_dir = load_pipeline(args, zero_shot_weight=0.0)
    result = blend.run(pipeline, k=args.k, target=args.target, n_boot=args.bootstrap)
    meta = result.evaluation.meta
    print(f"validation Brier score by weight: {meta['validation Brier score by weight (chooses)']}")
    print(f"validation macro AUC by weight: {meta['validation macro AUC by weight']}")
    paths = blend.save(result, index_dir, output_prefix(args))
    present_results(paths, f"saved the weight {result.weight:g} to {paths['blend']}")
