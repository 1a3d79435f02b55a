"""The `medxpert` command line (also `python -m medxpert`). It parses, calls the package and
prints; it holds no logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from medxpert import __version__
from medxpert.atomic import atomic_write_json
from medxpert.config import Settings
from medxpert.errors import ConfigError, MedXpertError

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
    _add_data_commands(commands)
    _add_label_command(commands)
    return parser


# --- medxpert data ---------------------------------------------------------------------
def _add_data_commands(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="inspect data sources")
    data_commands = data.add_subparsers(title="data commands", metavar="COMMAND")

    listing = data_commands.add_parser("sources", help="list the data sources and their options")
    listing.set_defaults(run=_run_data_sources)

    summary = data_commands.add_parser(
        "summary", help="counts per split, view and label for one or more sources"
    )
    summary.add_argument(
        "--source",
        action="append",
        required=True,
        help="source name (repeatable): see `medxpert data sources`",
    )
    summary.add_argument("--split", default="all", help="train, val, test or all (default)")
    summary.add_argument("--root", type=Path, help="folder of the source (overrides the data dir)")
    summary.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="reader option, e.g. dataset=./my_hf_folder (repeatable)",
    )
    summary.add_argument("--json", type=Path, metavar="OUT", help="also write the counts as JSON")
    summary.set_defaults(run=_run_data_summary)


def _run_data_sources(args: argparse.Namespace) -> None:
    from medxpert.data import reader_options, sources
    from medxpert.data.locate import find_pack

    settings = Settings.from_env()
    for spec in sources():
        where = "(give --root or options)"
        if spec.pack is not None:
            try:
                where = str(find_pack(spec.pack, settings))
            except MedXpertError:
                where = "not found"
        options = ", ".join(reader_options(spec)) or "-"
        print(f"{spec.name:10s} {spec.description}\n{'':10s} data: {where}; options: {options}")


def _run_data_summary(args: argparse.Namespace) -> None:
    from medxpert.data import load_cases
    from medxpert.data.summary import format_summary, summarize

    options = _parse_options(args.option)
    summaries = {}
    for source in args.source:
        cases = load_cases(source, args.split, root=args.root, **options)
        summaries[source] = summarize(cases)
        print(format_summary(source, summaries[source]), end="\n\n")
    if args.json:
        atomic_write_json(args.json, summaries)
        print(f"wrote {args.json}")


def _parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r} must look like KEY=VALUE.")
        options[key.strip()] = value.strip()
    return options


# --- medxpert label ----------------------------------------------------------------------
def _add_label_command(commands: argparse._SubParsersAction) -> None:
    label = commands.add_parser("label", help="CheXpert-14 labels of a report text")
    label.add_argument("text", help="report text (use - to read standard input)")
    label.add_argument("--json", action="store_true", help="print the labels as JSON")
    label.set_defaults(run=_run_label)


def _run_label(args: argparse.Namespace) -> None:
    from medxpert.labels import CHEXPERT_LABELS, default_labeler

    text = sys.stdin.read() if args.text == "-" else args.text
    if not text.strip():
        raise ConfigError("the report text is empty.")
    labeler = default_labeler()
    vector = labeler.label(text)
    values = {
        name: (None if value != value else float(value))
        for name, value in zip(CHEXPERT_LABELS, vector, strict=True)
    }
    if args.json:
        print(json.dumps(values, indent=2))
        return
    words = {1.0: "positive", 0.0: "negative", -1.0: "uncertain"}
    for name, value in values.items():
        if value is not None:
            print(f"{name:28s} {words[value]}")
    for mention in labeler.mentions(text):
        print(f"  - {mention.label}: {mention.text!r} ({mention.status})")


def _configure_logging(verbosity: int) -> None:
    """-v: debug; default: info; -q: warnings; -qq: errors only."""
    levels = {1: logging.DEBUG, 0: logging.INFO, -1: logging.WARNING}
    logging.basicConfig(
        level=levels.get(max(min(verbosity, 1), -2), logging.ERROR),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
