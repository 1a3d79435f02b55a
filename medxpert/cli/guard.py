"""`medxpert eval guard`: fit the input guard's embedding check on the library, save it."""

from __future__ import annotations

import argparse

from medxpert.cli.common import add_artifact_arguments
from medxpert.config import Settings


def add_eval_command(kinds: argparse._SubParsersAction) -> None:
    """`medxpert eval guard` (the `eval` parser calls this)."""
    guard = kinds.add_parser(
        "guard",
        help="fit the input guard's embedding check on the library and save it (guard.npz)",
        description="Fit the mean and Ledoit-Wolf covariance of the library's train image "
        "embeddings, and set the refusal threshold at the 99.5th percentile of the Mahalanobis "
        "distances of its val images. Saved as guard.npz next to the index; diagnose refuses "
        "images beyond it (and non-radiograph DICOM, flat, tiny or colour images) unless "
        "--force.",
    )
    add_artifact_arguments(guard)
    guard.set_defaults(run=_run_guard)


def _run_guard(args: argparse.Namespace) -> None:
    from medxpert.guard import library_embedding_guard, write_embedding_guard
    from medxpert.retrieval import SearchEngine

    settings = Settings.from_env()
    index_dir = settings.library_path(args.index)
    engine = SearchEngine.load(index_dir, model=args.model, settings=settings)
    guard = library_embedding_guard(engine.library, engine.encoder.fingerprint())
    path = write_embedding_guard(index_dir, guard)
    meta = guard.meta
    print(
        f"input guard: Mahalanobis threshold {guard.threshold:.1f} (the {meta['quantile']:.1%} "
        f"quantile of {meta['val_images']} val images; median {meta['val_distance_median']}), "
        f"fitted on {meta['train_images']} train images, Ledoit-Wolf shrinkage "
        f"{meta['shrinkage']}"
    )
    print(f"wrote {path}")
