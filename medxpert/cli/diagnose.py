"""`medxpert diagnose`: a structured report for an X-ray or a study's X-rays (with an optional
note), or a text (as JSON, Markdown, DICOM SR, FHIR, heatmaps); or for every study of a
worklist, a folder or a CSV (`--input`, docs/worklists.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from medxpert.cli.common import (
    TARGET_CHOICES,
    add_artifact_arguments,
    add_fusion_argument,
    add_sample_arguments,
    add_writer_arguments,
    sample_test_images,
    slug,
)
from medxpert.config import Settings

if TYPE_CHECKING:
    from medxpert.pipeline import Diagnosis, DiagnosisPipeline
    from medxpert.report import StructuredReport


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "diagnose",
        help="write a structured report from the most similar prior cases",
        description="Retrieve the most similar prior cases and write a structured report: "
        "findings with citations, impression, differential, ICD-10 suggestions and triage. "
        "Decision support, not a diagnosis.",
    )
    parser.add_argument(
        "--image",
        type=Path,
        action="append",
        default=[],
        help="X-ray (PNG, JPEG or DICOM); repeat it for several images of one study (frontal "
        "first: the caption is of the first), which are diagnosed together as one query",
    )
    parser.add_argument(
        "--note",
        default=None,
        help="clinical note to go with the image (with --input: of the studies without one)",
    )
    parser.add_argument("--text", default=None, help="a text query instead of an image")
    add_sample_arguments(parser, "diagnose")
    parser.add_argument("-k", "--k", type=int, default=None, help="cases to retrieve")
    parser.add_argument("--target", choices=TARGET_CHOICES, default="both")
    add_fusion_argument(parser)
    add_artifact_arguments(parser)
    parser.add_argument("--captioner", default=None, help="labels (default) or blip")
    parser.add_argument(
        "--blip",
        default=None,
        metavar="DIR_OR_HUB_ID",
        help="BLIP weights (default: models/blip-captioner, else the hub model)",
    )
    add_writer_arguments(parser)
    parser.add_argument(
        "--send-image",
        action="store_true",
        help="also send the X-ray itself to the LLM (off unless you give this flag)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="diagnose an image the input guard refuses as no chest radiograph (a warning goes "
        "into the report and triage stays routine)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        help="write the report as JSON (one query) or into this folder (several)",
    )
    parser.add_argument("--markdown", action="store_true", help="also write .md next to the JSON")
    parser.add_argument(
        "--sr",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the report as a DICOM Structured Report (one query) or into this folder "
        "(several)",
    )
    parser.add_argument(
        "--fhir",
        type=Path,
        default=None,
        metavar="PATH",
        help="write the report as a FHIR R4 bundle (JSON; one query) or into this folder (several)",
    )
    parser.add_argument(
        "--heatmaps",
        type=Path,
        default=None,
        metavar="DIR",
        help="write heatmap PNGs into this folder: the findings on the first image, and what "
        "makes it and the best hits similar (a subfolder per query when there are several)",
    )
    batch = parser.add_argument_group(
        "worklists", "diagnose every study of a folder or a CSV (docs/worklists.md)"
    )
    batch.add_argument(
        "--input",
        type=Path,
        default=None,
        metavar="DIR_OR_CSV",
        help="a folder of X-rays (searched recursively; DICOM files grouped into studies by "
        "StudyInstanceUID) or a CSV with a path column (optional note and study columns)",
    )
    batch.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="the worklist's output folder: a report folder per study, summary.csv and "
        "errors.csv; a second run skips the studies done",
    )
    batch.add_argument(
        "--formats",
        default=None,
        metavar="LIST",
        help="comma-separated, of json, markdown (both always written), sr, fhir, heatmaps "
        "(default: json,markdown)",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    settings = Settings.from_env()
    if args.input is not None:
        _run_worklist(args, settings)
        return
    _check_single(args)
    queries = _queries(args)
    pipeline = _pipeline(args, settings)
    for name, query in queries:
        diagnosis = pipeline.diagnose(**query, target=args.target, force=args.force)
        print("\n" + markdown_report("##", name, diagnosis.report))
        _write_json(args, name, diagnosis, len(queries) > 1)
        _write_interop(args, pipeline, name, query, diagnosis, len(queries) > 1)


def _write_json(args: argparse.Namespace, name: str, diagnosis: Diagnosis, several: bool) -> None:
    """--json (and --markdown next to it), into its folder when there are several queries."""
    from medxpert.atomic import atomic_write_json, atomic_write_text

    if args.json is None:
        return
    path = args.json / f"{slug(name, 80)}.json" if several else args.json
    atomic_write_json(path, {"query": name, **diagnosis.to_dict()})
    print(f"wrote {path}")
    if args.markdown:
        markdown = path.with_suffix(".md")
        atomic_write_text(markdown, markdown_report("# MedXpert report:", name, diagnosis.report))
        print(f"wrote {markdown}")


def _queries(args: argparse.Namespace) -> list[tuple[str, dict]]:
    """(name, query) of each query asked for: the images or text, then the samples."""
    from medxpert.errors import QueryError

    queries: list[tuple[str, dict]] = []
    if args.image or args.text is not None:
        name = " + ".join(path.name for path in args.image) if args.image else args.text
        query = {"text": args.text, "note": args.note}
        if len(args.image) > 1:
            query["images"] = args.image  # one study
        else:
            query["image"] = args.image[0] if args.image else None
        queries.append((name, query))
    for case in sample_test_images(args.sample, args.seed):
        queries.append((case.case_id, {"image": case.image_path, "note": args.note}))
    if not queries:
        raise QueryError(
            "nothing to diagnose: give --image PATH, --text TEXT, --sample N or --input "
            "DIR_OR_CSV --out DIR."
        )
    return queries


def _check_single(args: argparse.Namespace) -> None:
    """The worklist options go with --input only."""
    from medxpert.errors import QueryError

    stray = [flag for flag, value in (("--out", args.out), ("--formats", args.formats)) if value]
    if stray:
        raise QueryError(f"{' and '.join(stray)} go with --input DIR_OR_CSV (a worklist).")


def _pipeline(args: argparse.Namespace, settings: Settings) -> DiagnosisPipeline:
    from medxpert.pipeline import DiagnosisPipeline
    from medxpert.report import writer_options

    writer = args.writer or settings.writer
    return DiagnosisPipeline.load(
        args.index,
        model=args.model,
        settings=settings,
        captioner=args.captioner or settings.captioner,
        writer=writer,
        k=args.k or settings.top_k,
        writer_options=writer_options(
            writer, settings, model=args.llm_model, url=args.llm_url, send_image=args.send_image
        ),
        blip_source=args.blip,
        fusion=args.fusion,
    )


def _write_interop(
    args: argparse.Namespace,
    pipeline: DiagnosisPipeline,
    name: str,
    query: dict,
    diagnosis: Diagnosis,
    several: bool,
) -> None:
    """--sr, --fhir and --heatmaps of one query (into their folders when there are several)."""
    stem = slug(name, 80)
    if args.sr is not None:
        from medxpert.interop.sr import write_sr

        path = args.sr / f"{stem}.sr.dcm" if several else args.sr
        print(f"wrote {write_sr(diagnosis, path, query_name=name)}")
    if args.fhir is not None:
        from medxpert.interop.fhir import write_fhir

        path = args.fhir / f"{stem}.fhir.json" if several else args.fhir
        print(f"wrote {write_fhir(diagnosis, path, query_name=name)}")
    if args.heatmaps is not None:
        from medxpert.data import open_image
        from medxpert.errors import QueryError
        from medxpert.explain import write_heatmaps

        sources = query.get("images") or [query.get("image")]
        if sources[0] is None:
            raise QueryError("--heatmaps needs an image query, not a text.")
        directory = args.heatmaps / stem if several else args.heatmaps
        images = [open_image(source) for source in sources]
        for path in write_heatmaps(pipeline, diagnosis, images, directory):
            print(f"wrote {path}")


def _run_worklist(args: argparse.Namespace, settings: Settings) -> None:
    """--input: every study of a folder or CSV into --out."""
    from medxpert.errors import QueryError
    from medxpert.interop.worklist import (
        ERRORS_FILE,
        SUMMARY_FILE,
        parse_formats,
        read_worklist,
        run_worklist,
    )

    single = ("--image", args.image), ("--text", args.text), ("--sample", args.sample)
    single += ("--json", args.json), ("--markdown", args.markdown), ("--sr", args.sr)
    single += ("--fhir", args.fhir), ("--heatmaps", args.heatmaps)
    stray = [flag for flag, value in single if value]
    if stray:
        raise QueryError(
            f"--input diagnoses a worklist; {', '.join(stray)} go with one query (choose the "
            "worklist's files with --formats)."
        )
    if args.out is None:
        raise QueryError("--input needs --out DIR, the folder of the reports.")
    formats = parse_formats(args.formats)
    studies = read_worklist(args.input, exclude=args.out)  # its errors before the model loads
    print(f"{len(studies)} studies in {args.input}")
    summary = run_worklist(
        _pipeline(args, settings),
        args.input,
        args.out,
        formats=formats,
        note=args.note,
        force=args.force,
        target=args.target,
    )
    print(
        f"{summary.done} studies diagnosed, {summary.skipped} skipped (done before), "
        f"{summary.failed} failed, in {summary.seconds:.1f} s ({summary.studies_per_s:.2f} "
        f"studies/s); formats: {', '.join(formats)}"
    )
    print(f"wrote {summary.out / SUMMARY_FILE}")
    if summary.failed:
        print(f"the failures and their reasons: {summary.out / ERRORS_FILE}")


def markdown_report(heading: str, name: str, report: StructuredReport) -> str:
    """The report as Markdown under `heading` and the query's name (a file name or the user's
    text, escaped like the report's own text)."""
    from medxpert.report.schema import markdown_text

    return f"{heading} {markdown_text(name)}\n\n{report.to_markdown()}"
