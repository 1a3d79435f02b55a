"""`medxpert search`: the most similar prior cases for X-rays, texts, or an X-ray + note."""

from __future__ import annotations

import argparse
from pathlib import Path

from medxpert.cli.common import (
    add_artifact_arguments,
    add_sample_arguments,
    sample_test_images,
    slug,
)
from medxpert.cli.index import library_dir
from medxpert.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "search",
        help="search the case library by image, text, or image + note",
        description="Rank the prior cases most similar to each query. Give --image and/or "
        "--text (each repeatable), or --sample N test images. With an image, --note adds a "
        "clinical note to its query.",
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="X-ray to search with (PNG, JPEG or DICOM; repeatable)",
    )
    parser.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="TEXT",
        help='text query, e.g. "left lower lobe consolidation" (repeatable)',
    )
    parser.add_argument("--note", default=None, help="clinical note to add to image queries")
    parser.add_argument(
        "--note-weight",
        type=float,
        default=None,
        help="weight of the note in an image + note query (0..1)",
    )
    add_sample_arguments(parser, "also query with")
    parser.add_argument("-k", "--k", type=int, default=None, help="results per query")
    add_artifact_arguments(parser)
    parser.add_argument("--target", choices=("reports", "images", "both"), default="reports")
    parser.add_argument("--filter-split", action="append", help="only these splits")
    parser.add_argument("--filter-view", action="append", help="only these views")
    parser.add_argument("--filter-source", action="append", help="only these sources")
    parser.add_argument("--no-dedupe", action="store_true", help="keep several images of one study")
    parser.add_argument("--csv", type=Path, default=None, help="write the ranked table here")
    parser.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="DIR",
        help="write a PNG grid per query (query + top-K) into DIR",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the hits as JSON here")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from medxpert.errors import QueryError
    from medxpert.retrieval import Filters, SearchEngine
    from medxpert.retrieval.export import Query, hits_frame, plot_hits, write_csv

    settings = Settings.from_env()
    queries = [Query(path.name, image=path, note=args.note) for path in args.image]
    queries += [Query(text, text=text) for text in args.text]
    for case in sample_test_images(args.sample, args.seed):
        queries.append(Query(case.case_id, image=case.image_path, note=args.note))
    if not queries:
        raise QueryError("nothing to search for: give --image PATH, --text TEXT or --sample N.")
    engine = SearchEngine.from_artifacts(
        args.model or settings.models_dir / settings.encoder,
        library_dir(args.index, settings),
        device=settings.device,
    )
    filters = None
    if args.filter_split or args.filter_view or args.filter_source:
        filters = Filters.of(args.filter_split, args.filter_view, args.filter_source)
    k = args.k or settings.top_k
    results = []
    for query in queries:
        hits = engine.search(
            image=query.image,
            text=query.text,
            note=query.note,
            k=k,
            target=args.target,
            filters=filters,
            dedupe_study=not args.no_dedupe,
            note_weight=args.note_weight,
        )
        results.append((query, hits))
        _print_hits(query, hits)
    frame = hits_frame(results)
    if args.csv:
        print(f"wrote {write_csv(frame, args.csv)}")
    if args.json:
        from medxpert.atomic import atomic_write_json

        print(f"wrote {atomic_write_json(args.json, frame.to_dict(orient='records'))}")
    if args.plot:
        for number, (query, hits) in enumerate(results, start=1):
            name = f"{number:02d}_{slug(query.name)}.png"
            print(f"wrote {plot_hits(query, hits, args.plot / name)}")


def _print_hits(query, hits) -> None:
    from medxpert.labels import positive_labels
    from medxpert.retrieval.export import snippet

    what = "image" if query.image is not None else "text"
    print(f"\n{what} query: {query.name}" + (f"  (+ note: {query.note})" if query.note else ""))
    print(f"{'rank':>4}  {'score':>6}  {'modality':<8}  {'case':<34}  labels / report")
    for hit in hits:
        labels = ", ".join(positive_labels(hit.case.labels)) or "-"
        print(
            f"{hit.rank:>4}  {hit.score:>6.3f}  {hit.modality:<8}  {hit.case.case_id:<34}  {labels}"
        )
        print(f"{'':>58}{snippet(hit, 100)}")
    if not hits:
        print("  (no case passes the filters)")
