"""`medxpert train`: contrastive fine-tuning of a dual encoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from medxpert.cli.common import add_source_arguments, load_sources
from medxpert.config import Settings


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="fine-tune a dual encoder on paired and unpaired cases",
        description="Fine-tune a dual encoder: InfoNCE on image-report pairs, label-aware soft "
        "targets on labelled images and reports. Unset options take the tuned "
        "defaults of the backbone (see docs/training.md).",
    )
    parser.add_argument("--backbone", default=None, help="backbone (default: MEDXPERT_ENCODER)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="model directory to write (default: models/<backbone>)",
    )
    add_source_arguments(parser)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--grad-accum", type=int)
    parser.add_argument("--lr-tower", type=float, help="learning rate of the pretrained towers")
    parser.add_argument("--lr-head", type=float, help="learning rate of the projection heads")
    parser.add_argument(
        "--freeze",
        action="append",
        metavar="PREFIX",
        help="freeze parameters with this name prefix (repeatable)",
    )
    parser.add_argument("--no-freeze", action="store_true", help="train every layer")
    parser.add_argument(
        "--frozen-image-stages",
        type=int,
        help="freeze the image trunk's stem and first N stages (EfficientNet-style trunks)",
    )
    parser.add_argument(
        "--frozen-text-layers",
        type=int,
        help="freeze the text tower's embeddings and first N layers (all: the tower is cached)",
    )
    parser.add_argument("--image-size", type=int, help="input resolution (default: backbone's)")
    parser.add_argument(
        "--shared-positives",
        choices=("none", "text", "labels"),
        help="paired batches: studies with the same report ('text') or the same labels "
        "('labels') count as positives, not negatives",
    )
    parser.add_argument(
        "--no-cache",
        action="store_true",
        help="run the frozen stages every step instead of once per image (slower; needed "
        "for pixel-level augmentation)",
    )
    parser.add_argument("--text-sections", help="comma-separated, default impression,findings")
    parser.add_argument("--image-image-weight", type=float)
    parser.add_argument("--uniformity-weight", type=float, help="spread the vectors (0: off)")
    parser.add_argument("--no-augment", action="store_true")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap steps (quick runs)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    parser.set_defaults(run=_run)

    tune = commands.add_parser(
        "tune",
        help="search fine-tuning settings with Optuna on the validation score",
        description="Fine-tune one trial after another with sampled learning rates, "
        "temperature, frozen stages, resolution, positives and epochs; each trial is scored "
        "on the validation split (the training loop's validation score) and the poorer ones "
        "are pruned. Trials go to an Optuna SQLite study under --out (resumable), with "
        "Optuna's optimisation-history and parameter-importance plots. Test is never read.",
    )
    tune.add_argument("--backbone", default=None, help="backbone (default: MEDXPERT_ENCODER)")
    add_source_arguments(tune)
    tune.add_argument("--minutes", type=float, default=30.0, help="time budget (default 30)")
    tune.add_argument("--trials", type=int, default=None, help="at most this many trials")
    tune.add_argument(
        "--study-name", default=None, help="Optuna study (default: BACKBONE-finetune)"
    )
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    tune.add_argument("--out", type=Path, default=None, help="study folder (default: results/tune)")
    tune.set_defaults(run=_run_tune)


def _run_tune(args: argparse.Namespace) -> None:
    from medxpert.train.tune import tune

    settings = Settings.from_env()
    backbone = args.backbone or settings.encoder
    out = args.out or settings.results_dir / "tune"
    result = tune(
        backbone,
        load_sources(args.source, "train"),
        load_sources(args.source, "val"),
        storage_dir=out,
        minutes=args.minutes,
        trials=args.trials,
        study_name=args.study_name,
        feature_cache=settings.cache_dir / "features",
        device=args.device or settings.device,
        seed=args.seed,
    )
    print(
        f"best trial #{result.best_trial} of {result.trials}: validation score "
        f"{result.best_value:.4f}"
    )
    for name, value in sorted(result.best_params.items()):
        print(f"  {name} = {value}")
    print(f"study: {result.storage}")
    for name, path in result.plots.items():
        print(f"{name} plot: {path}")


def _run(args: argparse.Namespace) -> None:
    from medxpert.encoders import DualEncoder
    from medxpert.eval.plots import training_curves
    from medxpert.train import TrainConfig, finetune

    settings = Settings.from_env()
    backbone = args.backbone or settings.encoder
    out = args.out or settings.models_dir / backbone.replace("/", "_").replace(":", "_")
    freeze = () if args.no_freeze else (tuple(args.freeze) if args.freeze else None)
    config = TrainConfig.for_backbone(
        backbone,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr_tower=args.lr_tower,
        lr_head=args.lr_head,
        freeze=freeze,
        text_sections=tuple(args.text_sections.split(",")) if args.text_sections else None,
        image_image_weight=args.image_image_weight,
        uniformity_weight=args.uniformity_weight,
        frozen_image_stages=args.frozen_image_stages,
        frozen_text_layers=args.frozen_text_layers,
        image_size=args.image_size,
        shared_positives=args.shared_positives,
        cache_features=False if args.no_cache else None,
        augment=False if args.no_augment else None,
        max_steps_per_epoch=args.max_steps_per_epoch,
        seed=args.seed,
        extra={"sources": args.source or "shared packs"},
    )
    train_cases = load_sources(args.source, "train")
    val_cases = load_sources(args.source, "val")
    encoder = DualEncoder.create(backbone, device=args.device or settings.device)
    log_path = settings.results_dir / "train_log.jsonl"
    result = finetune(
        encoder,
        train_cases,
        config,
        out_dir=out,
        val_cases=val_cases,
        log_path=log_path,
        resume=args.resume,
        feature_cache=settings.cache_dir / "features",
    )
    curves = training_curves(log_path, settings.results_dir / "train_curves.png")
    print(
        f"best epoch {result.best_epoch} (validation score {result.best_score:.3f}) in "
        f"{result.seconds / 60:.1f} min; model: {result.model_dir}; log: {log_path}; "
        f"curves: {curves}"
    )
