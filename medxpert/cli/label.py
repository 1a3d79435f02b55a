"""`medxpert label`: CheXpert-14 labels of a report text."""

from __future__ import annotations

import argparse
import json
import sys

from medxpert.errors import ConfigError


def add_commands(commands: argparse._SubParsersAction) -> None:
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
