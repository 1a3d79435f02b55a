"""`medxpert encoders`: the named backbones."""

from __future__ import annotations

import argparse


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("encoders", help="list the named dual-encoder backbones")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from medxpert.encoders import backbones

    for spec in backbones():
        where = "needs the Hugging Face hub" if spec.hub else "offline"
        print(f"{spec.name:18s} {spec.description} [{where}]")
    print("Also: any open_clip model name (NAME or NAME:pretrained_tag) or hf-hub:org/repo.")
