"""`medxpert diagnose`: a structured report for an X-ray or a study's X-rays (with an optional
note), or a text."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from medxpert.cli.common import (
    add_artifact_arguments,
    add_fusion_argument,
    add_llm_arguments,
    add_sample_arguments,
    sample_test_images,
    slug,
)
from medxpert.cli.index import library_dir
from medxpert.config import Settings

if TYPE_CHECKING:
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
    parser.add_argument("--note", default=None, help="clinical note to go with the image")
    parser.add_argument("--text", default=None, help="a text query instead of an image")
    add_sample_arguments(parser, "diagnose")
    parser.add_argument("-k", "--k", type=int, default=None, help="cases to retrieve")
    parser.add_argument("--target", choices=("reports", "images", "both"), default="both")
    add_fusion_argument(parser)
    add_artifact_arguments(parser)
    parser.add_argument("--captioner", default=None, help="labels (default) or blip")
    parser.add_argument(
        "--blip",
        default=None,
        metavar="DIR_OR_HUB_ID",
        help="BLIP weights (default: models/blip-captioner, else the hub model)",
    )
    parser.add_argument(
        "--writer",
        default=None,
        help="report writer: offline (default), readout, gemini (needs GEMINI_API_KEY; sends "
        "de-identified text only) or openai-compatible (a local LLM server: --llm-url)",
    )
    add_llm_arguments(parser)
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
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from medxpert.atomic import atomic_write_json, atomic_write_text
    from medxpert.errors import QueryError
    from medxpert.pipeline import DiagnosisPipeline
    from medxpert.report import writer_options

    settings = Settings.from_env()
    writer = args.writer or settings.writer
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
        raise QueryError("nothing to diagnose: give --image PATH, --text TEXT or --sample N.")
    pipeline = DiagnosisPipeline.from_artifacts(
        args.model or settings.models_dir / settings.encoder,
        library_dir(args.index, settings),
        captioner=args.captioner or settings.captioner,
        writer=writer,
        device=settings.device,
        k=args.k or settings.top_k,
        writer_options=writer_options(
            writer, settings, model=args.llm_model, url=args.llm_url, send_image=args.send_image
        ),
        blip_source=args.blip,
        fusion=args.fusion,
    )
    for name, query in queries:
        diagnosis = pipeline.diagnose(**query, target=args.target, force=args.force)
        print("\n" + markdown_report("##", name, diagnosis.report))
        if args.json is None:
            continue
        path = args.json if len(queries) == 1 else args.json / f"{slug(name, 80)}.json"
        atomic_write_json(path, {"query": name, **diagnosis.to_dict()})
        print(f"wrote {path}")
        if args.markdown:
            markdown = path.with_suffix(".md")
            atomic_write_text(
                markdown, markdown_report("# MedXpert report:", name, diagnosis.report)
            )
            print(f"wrote {markdown}")


def markdown_report(heading: str, name: str, report: StructuredReport) -> str:
    """The report as Markdown under `heading` and the query's name (a file name or the user's
    text, escaped like the report's own text)."""
    from medxpert.report.schema import markdown_text

    return f"{heading} {markdown_text(name)}\n\n{report.to_markdown()}"
