"""`medxpert data ...`: inspect data sources."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from medxpert.atomic import atomic_write_json
from medxpert.config import Settings
from medxpert.errors import ConfigError, MedXpertError


def add_commands(commands: argparse._SubParsersAction) -> None:
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

    options = parse_options(args.option)
    summaries = {}
    for source in args.source:
        cases = load_cases(source, args.split, root=args.root, **options)
        summaries[source] = summarize(cases)
        print(format_summary(source, summaries[source]), end="\n\n")
    if args.json:
        atomic_write_json(args.json, summaries)
        print(f"wrote {args.json}")


def parse_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option {pair!r} must look like KEY=VALUE.")
        options[key.strip()] = value.strip()
    return options
