"""`medxpert dicom-node`: receive studies from a PACS or modality by C-STORE and answer each
with a DICOM SR of its diagnosis; see docs/dicom-node.md."""

from __future__ import annotations

import argparse
import functools
import signal
from pathlib import Path

from medxpert.cli.common import add_artifact_arguments, add_listen_arguments
from medxpert.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "dicom-node",
        help="a DICOM node (C-STORE SCP): diagnose the studies sent to it, write DICOM SRs",
        description="Listen for DICOM C-STORE (and C-ECHO) on HOST:PORT as AE title "
        "--ae-title. Instances are written under OUT/incoming/<StudyInstanceUID>/; a study is "
        "diagnosed once no new instance of it came for --quiet-seconds, and its SR written to "
        "OUT/reports/<StudyInstanceUID>.sr.dcm (with a JSON journal beside it), and sent to "
        "--send-to. Ctrl-C or SIGTERM stops it. Decision support, not a diagnosis.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for instances and SRs")
    parser.add_argument("--ae-title", default="MEDXPERT", help="own AE title (default: MEDXPERT)")
    add_listen_arguments(parser, 11112)
    parser.add_argument(
        "--allow-ae",
        action="extend",
        nargs="+",
        default=None,
        metavar="AE",
        help="accept associations from these calling AE titles only (default: any)",
    )
    parser.add_argument(
        "--quiet-seconds",
        type=float,
        default=10.0,
        help="a study is complete when no new instance came for this long (default: 10)",
    )
    parser.add_argument(
        "--send-to",
        default=None,
        metavar="HOST:PORT:AE",
        help="also send every SR by C-STORE to this node (a PACS, e.g. 127.0.0.1:4242:ORTHANC)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="diagnose images the input guard refuses as no chest radiograph (a warning goes "
        "into the report)",
    )
    add_artifact_arguments(parser)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from medxpert.interop.node import Destination, DicomNode
    from medxpert.pipeline import DiagnosisPipeline

    settings = Settings.from_env()
    pipeline = functools.partial(
        DiagnosisPipeline.load, args.index, model=args.model, settings=settings
    )
    node = DicomNode(
        pipeline,
        args.out,
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        allowed_calling_aes=args.allow_ae,
        quiet_seconds=args.quiet_seconds,
        destination=Destination.parse(args.send_to) if args.send_to else None,
        force=args.force,
    )
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as on Ctrl-C
    node.serve_forever()
