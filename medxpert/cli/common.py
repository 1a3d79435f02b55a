"""Helpers shared by the command modules."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from medxpert.data import Case, load_cases

SHARED_SOURCES = ("nih_cxr14", "iu_xray", "covid_cxr")


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        help=f"data source (repeatable; default: {' '.join(SHARED_SOURCES)})",
    )


def load_sources(sources: Sequence[str] | None, split: str) -> list[Case]:
    """The cases of every source for `split` (the shared packs when none are named)."""
    return [case for source in (sources or SHARED_SOURCES) for case in load_cases(source, split)]
