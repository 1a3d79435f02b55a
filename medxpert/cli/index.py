"""`medxpert index build` / `medxpert index info`: the case library under indexes/<name>/."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medxpert.cli.common import add_source_arguments, load_sources
from medxpert.config import Settings

DEFAULT_SPLITS = ("train", "val")


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("index", help="build and inspect case libraries (FAISS)")
    actions = parser.add_subparsers(title="actions", metavar="ACTION")

    build = actions.add_parser(
        "build",
        help="embed cases and save their image and report indexes",
        description="Embed every case of the chosen sources and splits (images into an image "
        "index, one report per study into a report index) and save them under "
        "indexes/<name>/. The test split is left out by default, so that test cases can be "
        "queried honestly.",
    )
    build.add_argument(
        "--model",
        type=Path,
        default=None,
        help="model directory (default: models/<MEDXPERT_ENCODER>)",
    )
    build.add_argument("--name", default=None, help="library name (default: the model's name)")
    add_source_arguments(build)
    build.add_argument(
        "--split",
        action="append",
        choices=("train", "val", "test"),
        help=f"split to index (repeatable; default: {' '.join(DEFAULT_SPLITS)})",
    )
    build.add_argument(
        "--image-factory",
        default="auto",
        help="FAISS factory string for images: Flat, HNSW32, IVF{nlist},SQ8, ..., an on-disk "
        "memory-mapped index disk:IVF{nlist},SQ8 (or ,Flat / ,PQ32), or auto (by corpus size; "
        "see docs/index.md)",
    )
    build.add_argument("--report-factory", default="auto", help="the same, for reports")
    build.add_argument("--batch-size", type=int, default=8, help="images per batch")
    engine = build.add_argument_group(
        "engine", "where the embedding runs (docs/index.md: 'Embedding on a Ray cluster')"
    )
    engine.add_argument(
        "--engine",
        choices=("single", "ray"),
        default="single",
        help="single: this process (the default); ray: Ray Data tasks read the images and a "
        "pool of actors embeds them, on a local Ray runtime or the cluster at --address",
    )
    engine.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto (the one this node belongs to, or a Ray Job's) or the "
        "head's HOST:6379; default: start a local Ray runtime. Ray Client (ray://) cannot run "
        "Ray Data: submit a Ray Job instead",
    )
    engine.add_argument("--workers", type=int, default=2, help="actors, one encoder each")
    engine.add_argument(
        "--num-gpus-per-worker", type=float, default=0.0, help="GPUs per actor (0: the CPU)"
    )
    engine.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs per actor (its torch threads)"
    )
    engine.add_argument(
        "--shards",
        type=Path,
        default=None,
        metavar="DIR",
        help="where the Ray engine writes its Parquet shards of vectors (a rerun resumes from "
        "them; default: .cache/ray-shards/<name>)",
    )
    build.add_argument(
        "--embeddings",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write the raw embeddings (.npy) and their case ids here",
    )
    build.set_defaults(run=_build)

    info = actions.add_parser("info", help="print a library's manifest summary")
    info.add_argument(
        "name",
        nargs="?",
        default=None,
        help="library name or folder (default: the MEDXPERT_ENCODER one)",
    )
    info.add_argument("--json", action="store_true", help="print the whole manifest")
    info.set_defaults(run=_info)


def _build(args: argparse.Namespace) -> None:
    from medxpert.encoders import DualEncoder
    from medxpert.index import CaseLibrary, embed_cases
    from medxpert.index.export import write_embeddings

    settings = Settings.from_env()
    model = args.model or settings.encoder  # a folder, or a model's name under models/
    name = args.name or Path(model).name
    splits = args.split or list(DEFAULT_SPLITS)
    cases = [case for split in splits for case in load_sources(args.source, split)]
    if args.engine == "ray":
        from medxpert.index.ray_engine import RayOptions, embed_cases_ray

        options = RayOptions(
            address=args.address,
            workers=args.workers,
            num_gpus_per_worker=args.num_gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            batch_size=args.batch_size,
        )
        # the driver only ships the encoder to the workers
        encoder = DualEncoder.load(model, device="cpu", models_dir=settings.models_dir)
        shards = args.shards or settings.cache_dir / "ray-shards" / Path(name).name
        embeddings = embed_cases_ray(encoder, cases, shards, options=options)
        print(f"Ray shards of the vectors: {shards}")
    else:
        encoder = DualEncoder.load(model, device=settings.device, models_dir=settings.models_dir)
        encoder.use_feature_cache(settings.cache_dir / "features")  # the frozen stages, once
        embeddings = embed_cases(encoder, cases, batch_size=args.batch_size)
    library = CaseLibrary.from_embeddings(
        encoder,
        cases,
        embeddings,
        image_factory=args.image_factory,
        report_factory=args.report_factory,
    )
    target = settings.library_path(name)
    library.save(target)
    print(f"case library {target}: {_summary(library.manifest)}")
    if args.embeddings:
        for path in write_embeddings(args.embeddings, cases, embeddings):
            print(f"wrote {path}")


def _info(args: argparse.Namespace) -> None:
    from medxpert.index.library import read_manifest

    settings = Settings.from_env()
    manifest = read_manifest(settings.library_path(args.name))
    if args.json:
        print(json.dumps(manifest, indent=2))
        return
    print(f"{manifest['name']}: {_summary(manifest)}")
    print(
        f"  encoder {manifest['encoder']['backbone']} (fingerprint "
        f"{manifest['encoder']['fingerprint'][:16]}…), d={manifest['encoder']['dim']}"
    )
    print(
        f"  sources {', '.join(manifest['sources'])}; splits {', '.join(manifest['splits'])}; "
        f"created {manifest['created']}"
    )


def _summary(manifest: dict) -> str:
    parts = [
        f"{entry['count']} {modality} ({entry['factory']}"
        + (f", {entry['search_params']}" if entry.get("search_params") else "")
        + ")"
        for modality, entry in manifest["indexes"].items()
    ]
    return f"{manifest['cases']} cases; " + ", ".join(parts)
