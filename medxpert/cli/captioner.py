"""`medxpert train-captioner`: fine-tune BLIP on image–report pairs."""

from __future__ import annotations

import argparse
from pathlib import Path

from medxpert.cli.common import add_source_arguments, load_sources
from medxpert.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train-captioner",
        help="fine-tune the BLIP captioner on image-report pairs",
        description="Fine-tune BLIP (language-modelling loss on impression + findings) on the "
        "cases that have both an image and a report. Meant for MIMIC-CXR on a GPU.",
    )
    parser.add_argument(
        "--base",
        default=None,
        help="BLIP to start from: a folder or hub id "
        "(default: Salesforce/blip-image-captioning-base)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder to write (default: models/blip-captioner)"
    )
    add_source_arguments(parser)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> None:
    from medxpert.caption.blip import HUB_MODEL, BlipCaptioner
    from medxpert.caption.registry import BLIP_DIR_NAME
    from medxpert.caption.training import finetune_captioner

    settings = Settings.from_env()
    out = args.out or settings.models_dir / BLIP_DIR_NAME
    captioner = BlipCaptioner(args.base or HUB_MODEL, device=args.device or settings.device)
    losses = finetune_captioner(
        captioner,
        load_sources(args.source, "train"),
        out_dir=out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_steps=args.max_steps,
        log_path=settings.results_dir / "captioner_train_log.jsonl",
    )
    print(f"{len(losses)} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; captioner: {out}")
