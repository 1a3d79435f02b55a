"""`medxpert eval retrieval`: retrieval metrics, fine-tuned vs untuned vs chance."""

from __future__ import annotations

import argparse
from pathlib import Path

from medxpert.cli.common import add_source_arguments, load_sources
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
    retrieval.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    retrieval.add_argument(
        "--out", type=Path, default=None, help="output prefix (default: results/retrieval_metrics)"
    )
    retrieval.set_defaults(run=_run_retrieval)


def _run_retrieval(args: argparse.Namespace) -> None:
    import torch

    from medxpert.encoders import DualEncoder
    from medxpert.eval.results import write_results
    from medxpert.eval.retrieval import KNN_K, Embedder, RetrievalSets, cached, evaluate

    settings = Settings.from_env()
    model_dir = args.model or settings.models_dir / settings.encoder
    tuned = DualEncoder.load(model_dir, device=settings.device)
    torch.manual_seed(0)  # the untuned model's new projection heads: the same every run
    untuned = DualEncoder.create(args.baseline or tuned.backbone, device=settings.device)
    sets = RetrievalSets.from_cases(
        load_sources(args.source, args.split), load_sources(args.source, "train")
    )
    knn_k = args.knn_k or KNN_K
    tuned_images = tuned.encode_images
    if args.index:
        tuned_images = cached(tuned_images, _library_image_vectors(args.index, tuned, settings))
    models = {
        "untuned": Embedder(untuned.encode_images, untuned.encode_texts),
        "fine-tuned": Embedder(tuned_images, tuned.encode_texts),
    }
    rows = evaluate(models, sets, knn_k=knn_k, n_boot=args.bootstrap)
    meta = {
        "model": str(model_dir),
        "baseline": untuned.backbone,
        "split": args.split,
        "sets": sets.describe(),
        "knn_k": knn_k,
        "index": args.index,
        "bootstrap": args.bootstrap,
    }
    paths = write_results(
        rows,
        args.out or settings.results_dir / "retrieval_metrics",
        ["chance", "untuned", "fine-tuned"],
        title=f"Retrieval, {args.split} split",
        meta=meta,
    )
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _library_image_vectors(name: str, encoder, settings: Settings) -> dict:
    """image path → stored vector of a library built with `encoder` (fingerprint checked)."""
    from medxpert.cli.index import library_dir
    from medxpert.errors import IndexFormatError
    from medxpert.index import CaseLibrary

    library = CaseLibrary.load(library_dir(name, settings), encoder=encoder)
    if "images" not in library.indexes:
        return {}
    if not library.indexes["images"].stores_exact_vectors:
        raise IndexFormatError(
            f"the image index of {name} compresses its vectors "
            f"({library.indexes['images'].factory}); evaluate without --index."
        )
    stored = library.stored_vectors("images")
    paths = [library.case(row).image_path for row in stored.rows]
    print(f"taking {len(paths)} image vectors from the case library {name}")
    return dict(zip(paths, stored.vectors, strict=True))
