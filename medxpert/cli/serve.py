"""`medxpert serve`: the REST API (FastAPI + uvicorn); see docs/api.md."""

from __future__ import annotations

import argparse

from medxpert.cli.common import add_artifact_arguments, add_listen_arguments, add_writer_arguments
from medxpert.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve the REST API (search, diagnose, cases, health)",
        description="Serve the REST API on http://HOST:PORT (OpenAPI docs at /docs). It binds "
        "to 127.0.0.1 by default; another host needs MEDXPERT_API_KEY (clients send it as "
        "X-API-Key) or --no-api-key. Request bodies are limited to MEDXPERT_MAX_IMAGE_MB.",
    )
    add_listen_arguments(parser, 8000)
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes, each loading its own pipeline (default: 1; see docs/api.md)",
    )
    add_artifact_arguments(parser)
    parser.add_argument("--captioner", default=None, help="labels (default) or blip")
    add_writer_arguments(parser)
    parser.add_argument("-k", "--k", type=int, default=None, help="cases to retrieve by default")
    parser.add_argument(
        "--no-api-key",
        action="store_true",
        help="allow a non-loopback --host without MEDXPERT_API_KEY (trusted networks only)",
    )
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from medxpert.api import serve
    from medxpert.report import writer_options

    settings = Settings.from_env()
    writer = args.writer or settings.writer
    serve(
        args.host,
        args.port,
        model_dir=args.model,
        index_dir=settings.library_path(args.index),
        captioner=args.captioner,
        writer=writer,
        writer_options=writer_options(writer, settings, model=args.llm_model, url=args.llm_url),
        k=args.k,
        allow_no_key=args.no_api_key,
        workers=args.workers,
    )
