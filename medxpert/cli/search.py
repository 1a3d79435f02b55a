"""`medxpert search`: the most similar prior studies for X-rays, studies, texts, or an X-ray +
note."""

from __future__ import annotations

import argparse
from pathlib import Path

from medxpert.cli.common import (
    TARGET_CHOICES,
    add_artifact_arguments,
    add_fusion_argument,
    add_sample_arguments,
    sample_test_images,
    slug,
)
from medxpert.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "search",
        help="search the case library by image, study, text, or image + note",
        description="Rank the prior studies most similar to each query; each result is one "
        "study (its images and report), with what matched. Give --image, --study and/or --text "
        "(each repeatable), or --sample N test images. With an image, --note adds a clinical "
        "note to its query.",
    )
    parser.add_argument(
        "--image",
        action="append",
        default=[],
        type=Path,
        metavar="PATH",
        help="X-ray to search with (PNG, JPEG or DICOM); repeated, each is its own query",
    )
    parser.add_argument(
        "--study",
        action="append",
        nargs="+",
        default=[],
        type=Path,
        metavar="IMAGE",
        help="several X-rays of one study (e.g. frontal and lateral, or a DICOM series) as one "
        "query: --study front.png lat.png (repeatable, one study each)",
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
    parser.add_argument("--target", choices=TARGET_CHOICES, default="reports")
    add_fusion_argument(parser)
    parser.add_argument("--filter-split", action="append", help="only these splits")
    parser.add_argument("--filter-view", action="append", help="only these views")
    parser.add_argument("--filter-source", action="append", help="only these sources")
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
    queries += [
        Query(" + ".join(p.name for p in paths), images=tuple(paths), note=args.note)
        for paths in args.study
    ]
    queries += [Query(text, text=text) for text in args.text]
    for case in sample_test_images(args.sample, args.seed):
        queries.append(Query(case.case_id, image=case.image_path, note=args.note))
    if not queries:
        raise QueryError(
            "nothing to search for: give --image PATH, --study PATH..., --text TEXT or --sample N."
        )
    engine = SearchEngine.load(args.index, model=args.model, settings=settings, fusion=args.fusion)
    filters = None
    if args.filter_split or args.filter_view or args.filter_source:
        filters = Filters.of(args.filter_split, args.filter_view, args.filter_source)
    k = args.k or settings.top_k
    results = []
    for query in queries:
        hits = engine.search(
            image=query.image,
            images=query.images,
            text=query.text,
            note=query.note,
            k=k,
            target=args.target,
            filters=filters,
            note_weight=args.note_weight,
        )
        results.append((query, hits))
        _print_hits(query, hits)
    frame = hits_frame(results)
    if args.csv:
        print(f"wrote {write_csv(frame, args.csv)}")
    if args.json:
        from medxpert.atomic import atomic_write_json
        from medxpert.retrieval.export import hit_record

        records = [
            {"query": query.name, **hit_record(hit)} for query, hits in results for hit in hits
        ]
        print(f"wrote {atomic_write_json(args.json, records)}")
    if args.plot:
        for number, (query, hits) in enumerate(results, start=1):
            name = f"{number:02d}_{slug(query.name)}.png"
            print(f"wrote {plot_hits(query, hits, args.plot / name)}")


def _print_hits(query, hits) -> None:
    from medxpert.labels import positive_labels
    from medxpert.retrieval.export import snippet

    what = "study" if query.images else "image" if query.image is not None else "text"
    print(f"\n{what} query: {query.name}" + (f"  (+ note: {query.note})" if query.note else ""))
    print(f"{'rank':>4}  {'score':>6}  {'study':<34}  {'images':>6}  labels / matched / report")
    for hit in hits:
        labels = ", ".join(positive_labels(hit.case.labels)) or "-"
        print(
            f"{hit.rank:>4}  {hit.score:>6.3f}  {hit.study_id:<34}  {len(hit.images):>6}  {labels}"
        )
        print(f"{'':>56}matched: {hit.describe_evidence()}")
        print(f"{'':>56}{snippet(hit, 100)}")
    if not hits:
        print("  (no study passes the filters)")
