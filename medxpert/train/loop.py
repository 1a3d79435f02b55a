"""`finetune`: contrastive fine-tuning of a `DualEncoder` on paired and unpaired cases.

Each step is either a *paired* batch (images with their own reports: symmetric InfoNCE) or an
*unpaired* batch (labelled images and labelled reports: label-aware soft targets, plus an
image–image term), interleaved in proportion to how many images each kind has. An epoch is one
pass over the training images. AdamW with a cosine schedule and warm-up, gradient
accumulation, mixed precision on CUDA, a checkpoint each epoch (resumable), early stopping on
a validation retrieval score; the best epoch's model is saved.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from medxpert.atomic import atomic_path
from medxpert.data import Case
from medxpert.encoders import Augmentation, DualEncoder
from medxpert.errors import MedXpertError
from medxpert.eval.retrieval_metrics import label_precision_at_k, recall_at_k
from medxpert.train.config import TrainConfig
from medxpert.train.data import CaseImages, TrainingSets, label_matrix, training_sets
from medxpert.train.losses import clip_loss, semantic_vectors, soft_clip_loss, soft_self_loss

logger = logging.getLogger(__name__)

HEAD_PREFIXES = (
    "visual.head.",
    "visual.proj",
    "text.proj",
    "text_projection",
    "logit_scale",
    "logit_bias",
)
MAX_LOGIT_SCALE = math.log(100.0)


class TrainingDataError(MedXpertError):
    """The cases given cannot train a dual encoder (no pairs, or no labelled images/reports)."""


@dataclass
class TrainResult:
    model_dir: Path
    best_epoch: int
    best_score: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def finetune(
    encoder: DualEncoder,
    train_cases: Sequence[Case],
    config: TrainConfig,
    *,
    out_dir: str | Path,
    val_cases: Sequence[Case] = (),
    log_path: str | Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Fine-tune `encoder` in place; the best epoch is saved to `out_dir` and loaded back."""
    start_time = time.perf_counter()
    out_dir = Path(out_dir)
    sets = training_sets(train_cases, config.text_sections)
    if not sets.paired and not (sets.images and sets.texts):
        raise TrainingDataError(
            f"nothing to train on: {sets.describe()}. Fine-tuning needs image-report pairs, or "
            "both labelled images and labelled reports."
        )
    logger.info("training on %s", sets.describe())
    _seed_everything(config.seed)
    model, device = encoder.model, encoder.device
    frozen = _freeze(
        model, config.freeze if config.freeze is not None else _default_freeze(encoder)
    )
    optimizer = _optimizer(model, config)
    plan_length = len(_epoch_plan(sets, config, 0))
    total_updates = max(1, config.epochs * plan_length // config.grad_accum)
    scheduler = _scheduler(optimizer, total_updates, config.warmup_fraction)
    scaler, autocast = _mixed_precision(device, config.amp)
    validator = Validator(encoder, val_cases, config.text_sections)
    checkpoints = out_dir.parent / f".{out_dir.name}.checkpoints"
    log = _TrainLog(log_path, append=resume)
    state = {
        "epoch": 0,
        "step": 0,
        "best_score": -math.inf,
        "best_epoch": -1,
        "history": [],
        "stale": 0,
    }
    if resume:
        state = _load_checkpoint(checkpoints / "last.pt", model, optimizer, scheduler, state)
    train_transform = encoder.image_transform(Augmentation() if config.augment else None)

    for epoch in range(state["epoch"], config.epochs):
        model.train()
        for module in frozen:
            module.eval()  # frozen batch-norm layers keep their pretrained statistics
        plan = _epoch_plan(sets, config, epoch)
        batches = _Batches(sets, train_transform, config, epoch)
        window = _LossWindow()
        progress = tqdm(plan, desc=f"epoch {epoch + 1}/{config.epochs}", unit="step")
        for position, kind in enumerate(progress):
            with autocast():
                losses = _step_losses(kind, batches, encoder, config)
                loss = sum(losses.values())
            scaler.scale(loss / config.grad_accum).backward()
            if (position + 1) % config.grad_accum == 0 or position + 1 == len(plan):
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            state["step"] += 1
            window.add(loss, losses)
            if state["step"] % config.log_every == 0 or position + 1 == len(plan):
                record = {
                    "event": "step",
                    "epoch": epoch + 1,
                    "step": state["step"],
                    "kind": kind,
                    **window.means(),
                    "lr_tower": scheduler.get_last_lr()[0],
                    "logit_scale": float(model.logit_scale.detach().exp()),
                    "seconds": round(time.perf_counter() - start_time, 1),
                }
                log.write(record)
                progress.set_postfix(loss=f"{record['loss']:.3f}")
        metrics = validator()
        score = metrics.get("score", -float(loss.detach()))
        improved = score > state["best_score"]
        state["history"].append({"epoch": epoch + 1, **metrics, "score": score})
        log.write(
            {
                "event": "epoch",
                "epoch": epoch + 1,
                **metrics,
                "score": score,
                "improved": improved,
                "seconds": round(time.perf_counter() - start_time, 1),
            }
        )
        logger.info(
            "epoch %d: validation %s",
            epoch + 1,
            ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()),
        )
        if improved:
            state.update(best_score=score, best_epoch=epoch + 1, stale=0)
            encoder.save(out_dir, training=_record(config, sets, state))
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        _save_checkpoint(checkpoints / "last.pt", model, optimizer, scheduler, state)
        if state["stale"] >= config.patience:
            logger.info("early stop: no better validation score for %d epochs", state["stale"])
            break

    best = DualEncoder.load(out_dir, device=str(device.type))
    encoder.model.load_state_dict(best.model.state_dict())
    encoder.info = best.info
    encoder.model.eval()
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(
        out_dir,
        state["best_epoch"],
        state["best_score"],
        state["history"],
        time.perf_counter() - start_time,
    )


class _LossWindow:
    """Mean losses over the steps since the last log record (one batch's loss is noisy)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, loss: torch.Tensor, parts: dict[str, torch.Tensor]) -> None:
        for name, value in {"loss": loss, **parts}.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value.detach())
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self) -> dict[str, float]:
        """Each part's mean over the steps that had it (paired and unpaired steps have
        different parts); then a new window starts."""
        means = {name: total / self.counts[name] for name, total in self.sums.items()}
        self.sums, self.counts = {}, {}
        return means


# --- steps ----------------------------------------------------------------------------------
def _epoch_plan(sets: TrainingSets, config: TrainConfig, epoch: int) -> list[str]:
    """The kinds of this epoch's steps, shuffled (same order on resume)."""
    batch = config.batch_size
    paired = len(sets.paired) // batch
    unpaired = len(sets.images) // batch if sets.texts and len(sets.texts) >= batch else 0
    if paired == 0 and unpaired == 0:
        raise TrainingDataError(
            f"batch size {batch} is larger than the training data ({sets.describe()})."
        )
    plan = ["paired"] * paired + ["unpaired"] * unpaired
    random.Random(config.seed * 1000 + epoch).shuffle(plan)
    return plan[: config.max_steps_per_epoch] if config.max_steps_per_epoch else plan


class _Batches:
    """Endless shuffled batches of each kind for one epoch."""

    def __init__(self, sets: TrainingSets, transform, config: TrainConfig, epoch: int) -> None:
        self.sets, self.config = sets, config
        self.rng = np.random.default_rng(config.seed * 1000 + epoch)
        generator = torch.Generator().manual_seed(config.seed * 1000 + epoch)

        def loader(cases: list[Case]) -> Iterator:
            while True:
                yield from DataLoader(
                    CaseImages(cases, transform),
                    batch_size=config.batch_size,
                    shuffle=True,
                    drop_last=True,
                    generator=generator,
                    num_workers=config.num_workers,
                )

        self.paired = loader(sets.paired) if len(sets.paired) >= config.batch_size else None
        self.images = loader(sets.images) if len(sets.images) >= config.batch_size else None
        self.image_labels = semantic_vectors(label_matrix(sets.images))
        self.text_labels = semantic_vectors(label_matrix(sets.texts))
        self.text_labels_normalised = torch.nn.functional.normalize(self.text_labels, dim=1)

    def paired_batch(self) -> tuple[torch.Tensor, list[str]]:
        images, index = next(self.paired)
        return images, [self.sets.paired[i].text(self.config.text_sections) for i in index]

    def unpaired_batch(self) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        images, index = next(self.images)
        if self.config.text_sampling == "matched":
            # each image brings a report with the most similar labels (ties broken at random),
            # so every row of the soft targets has a real positive
            similarity = (
                torch.nn.functional.normalize(self.image_labels[index], dim=1)
                @ self.text_labels_normalised.T
            ).numpy()
            jitter = self.rng.random(similarity.shape) * 1e-3
            chosen = (similarity + jitter).argmax(axis=1)
        else:
            chosen = self.rng.choice(len(self.sets.texts), self.config.batch_size, replace=False)
        texts = [self.sets.texts[i].text(self.config.text_sections) for i in chosen]
        return images, self.image_labels[index], texts, self.text_labels[chosen]


def _step_losses(
    kind: str, batches: _Batches, encoder: DualEncoder, config: TrainConfig
) -> dict[str, torch.Tensor]:
    model, device = encoder.model, encoder.device
    scale = model.logit_scale.exp()
    if kind == "paired":
        images, texts = batches.paired_batch()
        image_features = model.encode_image(images.to(device), normalize=True)
        text_features = model.encode_text(encoder.tokenize(texts).to(device), normalize=True)
        return {"paired_loss": clip_loss(image_features, text_features, scale)}
    images, image_labels, texts, text_labels = batches.unpaired_batch()
    image_labels, text_labels = image_labels.to(device), text_labels.to(device)
    image_features = model.encode_image(images.to(device), normalize=True)
    text_features = model.encode_text(encoder.tokenize(texts).to(device), normalize=True)
    losses = {
        "unpaired_loss": config.unpaired_weight
        * soft_clip_loss(
            image_features,
            text_features,
            scale,
            image_labels,
            text_labels,
            config.label_temperature,
        )
    }
    if config.image_image_weight:
        losses["image_image_loss"] = config.image_image_weight * soft_self_loss(
            image_features, scale, image_labels, config.label_temperature
        )
    return losses


# --- validation -------------------------------------------------------------------------------
class Validator:
    """Retrieval scores on the validation cases; `score` (their mean) drives early stopping.

    report→image and image→image label precision at 10 (labelled sets), and image↔text
    recall at 5 (paired sets), whichever the validation cases allow.
    """

    def __init__(self, encoder: DualEncoder, cases: Sequence[Case], sections: Sequence[str]):
        self.encoder = encoder
        sets = training_sets(cases, sections)
        self.sections = sections
        self.images, self.texts, self.pairs = sets.images, sets.texts, sets.paired

    def __call__(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        encoder = self.encoder
        if self.images and self.texts:
            image_vectors = encoder.encode_images([c.image_path for c in self.images])
            text_vectors = encoder.encode_texts([c.text(self.sections) for c in self.texts])
            image_pos = semantic_vectors(label_matrix(self.images)).numpy() > 0
            text_pos = semantic_vectors(label_matrix(self.texts)).numpy() > 0
            metrics["report_to_image_p10"] = float(
                label_precision_at_k(text_vectors @ image_vectors.T, text_pos, image_pos, 10).mean()
            )
            if len(self.images) > 10:
                metrics["image_to_image_p10"] = float(
                    label_precision_at_k(
                        image_vectors @ image_vectors.T, image_pos, image_pos, 10, exclude_self=True
                    ).mean()
                )
        if len(self.pairs) >= 5:
            image_vectors = encoder.encode_images([c.image_path for c in self.pairs])
            text_vectors = encoder.encode_texts([c.text(self.sections) for c in self.pairs])
            similarity = image_vectors @ text_vectors.T
            metrics["pair_r5"] = float(
                (recall_at_k(similarity, 5).mean() + recall_at_k(similarity.T, 5).mean()) / 2
            )
        if metrics:
            metrics["score"] = float(np.mean(list(metrics.values())))
        return metrics


# --- optimisation ------------------------------------------------------------------------------
def _default_freeze(encoder: DualEncoder) -> tuple[str, ...]:
    from medxpert.encoders import get_backbone

    try:
        return get_backbone(encoder.backbone).freeze
    except MedXpertError:
        return ()


def _freeze(model: torch.nn.Module, prefixes: Sequence[str]) -> list[torch.nn.Module]:
    """Freeze parameters whose names start with any prefix; returns fully frozen modules."""
    count = 0
    for name, parameter in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            parameter.requires_grad_(False)
            count += parameter.numel()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("frozen %.1fM parameters, training %.1fM", count / 1e6, trainable / 1e6)
    return [
        module
        for module in model.modules()
        if list(module.parameters(recurse=False))
        and not any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        head = name.startswith(HEAD_PREFIXES)
        decay = parameter.ndim >= 2 and not name.startswith("logit_")
        groups.setdefault((head, decay), []).append(parameter)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": config.lr_head if head else config.lr_tower,
                "weight_decay": config.weight_decay if decay else 0.0,
            }
            for (head, decay), params in sorted(groups.items())
        ]
    )


def _scheduler(optimizer, total: int, warmup_fraction: float):
    warmup = int(total * warmup_fraction)

    def factor(update: int) -> float:
        if update < warmup:
            return (update + 1) / warmup
        progress = (update - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _mixed_precision(device: torch.device, enabled: bool):
    """(grad scaler, autocast factory): bf16/fp16 autocast on CUDA, plain fp32 on the CPU."""
    import contextlib

    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
        return scaler, lambda: torch.autocast("cuda", dtype=dtype)
    return torch.amp.GradScaler("cpu", enabled=False), contextlib.nullcontext


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- checkpoints and logs -------------------------------------------------------------------
def _save_checkpoint(path: Path, model, optimizer, scheduler, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "rng": {
                    "torch": torch.get_rng_state(),
                    "numpy": np.random.get_state(),
                    "python": random.getstate(),
                },
            },
            tmp,
        )


def _load_checkpoint(path: Path, model, optimizer, scheduler, state: dict) -> dict:
    if not path.is_file():
        logger.warning("no checkpoint at %s: starting from the beginning", path)
        return state
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(checkpoint["rng"]["torch"])
    np.random.set_state(checkpoint["rng"]["numpy"])
    random.setstate(checkpoint["rng"]["python"])
    logger.info("resumed after epoch %d from %s", checkpoint["state"]["epoch"], path)
    return checkpoint["state"]


def _record(config: TrainConfig, sets: TrainingSets, state: dict) -> dict:
    return {
        "config": config.to_dict(),
        "data": sets.describe(),
        "best_epoch": state["best_epoch"],
        "best_score": state["best_score"],
        "history": list(state["history"]),
    }


class _TrainLog:
    """JSON lines appended to `path` (started afresh unless resuming)."""

    def __init__(self, path: str | Path | None, append: bool) -> None:
        self.path = Path(path) if path else None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not append:
                self.path.write_text("")

    def write(self, record: dict) -> None:
        if self.path is not None:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
