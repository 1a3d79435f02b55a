"""The `medxpert` command line (also `python -m medxpert`). It parses, calls the package and
prints; it holds no logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from medxpert import __version__
from medxpert.cli import (
    app,
    captioner,
    data,
    diagnose,
    dicom_node,
    encoders,
    evaluate,
    index,
    label,
    search,
    serve,
    train,
)
from medxpert.errors import MedXpertError

logger = logging.getLogger("medxpert")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 for a user error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose - args.quiet)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        args.run(args)
    except MedXpertError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medxpert",
        description="MedXpert: retrieval-augmented diagnosis for chest X-rays.",
    )
    parser.add_argument("--version", action="version", version=f"medxpert {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="less logging")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for module in (
        data,
        label,
        encoders,
        train,
        captioner,
        index,
        search,
        diagnose,
        evaluate,
        serve,
        app,
        dicom_node,
    ):
        module.add_commands(commands)
    return parser


def _configure_logging(verbosity: int) -> None:
    """MedXpert's own log: -v debug, default info, -q warnings, -qq errors. Other libraries
    (open_clip logs to the root logger) show warnings only, or everything with -v."""
    levels = {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}
    level = levels.get(max(min(verbosity, 1), -2), logging.ERROR)
    logging.basicConfig(
        level=logging.DEBUG if verbosity > 0 else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("medxpert").setLevel(level)
