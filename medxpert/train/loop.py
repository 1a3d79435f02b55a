"""`finetune`: contrastive fine-tuning of a `DualEncoder` on paired and unpaired cases.

Each step is either a *paired* batch (images with their own reports: symmetric InfoNCE) or an
*unpaired* batch (labelled images and labelled reports: label-aware soft targets, plus an
image–image term), interleaved in proportion to how many images each kind has. An epoch is one
pass over the training images. AdamW with a cosine schedule and warm-up, gradient
accumulation, mixed precision on CUDA, a checkpoint each epoch (resumable), early stopping on
a validation retrieval score; the best epoch's model is saved.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from medxpert.atomic import atomic_path
from medxpert.data import Case, group_studies, report_groups
from medxpert.encoders import Augmentation, DualEncoder
from medxpert.encoders.staged import ImageStages
from medxpert.errors import MedXpertError
from medxpert.metrics.bootstrap import roc_auc
from medxpert.metrics.retrieval import (
    group_recall_at_k,
    knn_label_scores,
    label_precision_at_k,
)
from medxpert.train.config import TrainConfig
from medxpert.train.data import (
    ImageFeed,
    TextFeed,
    TrainingSets,
    label_matrix,
    shared_positive_matrix,
    training_sets,
)
from medxpert.train.losses import (
    semantic_vectors,
    shared_clip_loss,
    soft_clip_loss,
    soft_self_loss,
    uniformity_loss,
)

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
    feature_cache: str | Path | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Fine-tune `encoder` in place; the best epoch is saved to `out_dir` and loaded back.

    `feature_cache`: the folder that keeps the frozen stages' outputs between runs (and for
    the index build); None keeps them in a temporary folder for this run only. `on_epoch`
    is called with each epoch's number and validation score (it may raise to stop)."""
    start_time = time.perf_counter()
    out_dir = Path(out_dir)
    sets = training_sets(train_cases, config.text_sections)
    if not sets.studies and not (sets.images and sets.texts):
        raise TrainingDataError(
            f"nothing to train on: {sets.describe()}. Fine-tuning needs image-report pairs, or "
            "both labelled images and labelled reports."
        )
    logger.info("training on %s", sets.describe())
    _seed_everything(config.seed)
    model, device = encoder.model, encoder.device
    if config.image_size is not None:
        encoder.preprocess = {**encoder.preprocess, "size": int(config.image_size)}
    frozen = _freeze(model, _frozen_prefixes(encoder, config))
    optimizer = _optimizer(model, config)
    plan_length = len(_epoch_plan(sets, config, 0))
    total_updates = max(1, config.epochs * plan_length // config.grad_accum)
    scheduler = _scheduler(optimizer, total_updates, config.warmup_fraction)
    scaler, autocast = _mixed_precision(device, config.amp)
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
    with _feature_cache(encoder, config, feature_cache) as cached:
        batches = _Batches(sets, encoder, config, cached=cached)
        validator = Validator(encoder, val_cases, config.text_sections, gallery=sets.images)
        for epoch in range(state["epoch"], config.epochs):
            model.train()
            for module in frozen:
                module.eval()  # frozen batch-norm layers keep their pretrained statistics
            plan = _epoch_plan(sets, config, epoch)
            batches.start_epoch(epoch)
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
            if on_epoch is not None:
                on_epoch(epoch + 1, score)
            if state["stale"] >= config.patience:
                logger.info("early stop: no better validation score for %d epochs", state["stale"])
                break

    best = DualEncoder.load(out_dir, device=str(device.type))
    encoder.model.load_state_dict(best.model.state_dict())
    encoder.info = best.info
    encoder.model.eval().requires_grad_(False)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return TrainResult(
        out_dir,
        state["best_epoch"],
        state["best_score"],
        state["history"],
        time.perf_counter() - start_time,
    )


@contextlib.contextmanager
def _feature_cache(
    encoder: DualEncoder, config: TrainConfig, directory: str | Path | None
) -> Iterator[bool]:
    """The frozen stages' cache for this run (a temporary folder when `directory` is None);
    yields whether the image features can come from it (the cached stages must be frozen)."""
    with contextlib.ExitStack() as stack:
        if config.cache_features:
            directory = directory or stack.enter_context(tempfile.TemporaryDirectory())
            encoder.use_feature_cache(directory, image_stages=config.frozen_image_stages)
            stack.callback(encoder.use_feature_cache, None)
        stages = encoder.image_stages
        yield (
            config.cache_features
            and config.frozen_image_stages is not None
            and stages is not None
            and not _trains_any(encoder.model, stages)
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
    """The kinds of this epoch's steps, shuffled (same order on resume): one pass over the
    paired studies and one over the unpaired images."""
    batch = config.batch_size
    paired = len(sets.studies) // batch
    unpaired = len(sets.images) // batch if len(sets.texts) >= 1 else 0
    if paired == 0 and unpaired == 0:
        raise TrainingDataError(
            f"batch size {batch} is larger than the training data ({sets.describe()})."
        )
    plan = ["paired"] * paired + ["unpaired"] * unpaired
    random.Random(config.seed * 1000 + epoch).shuffle(plan)
    return plan[: config.max_steps_per_epoch] if config.max_steps_per_epoch else plan


class _Batches:
    """Shuffled batches of each kind, epoch by epoch, as embeddings from the feeds."""

    def __init__(
        self, sets: TrainingSets, encoder: DualEncoder, config: TrainConfig, *, cached: bool
    ) -> None:
        self.sets, self.config = sets, config
        paths: dict[str, int] = {}
        for case in [image for study in sets.studies for image in study.images] + sets.images:
            paths.setdefault(case.image_path, len(paths))
        texts: dict[str, int] = {}
        for study in sets.studies + sets.texts:
            texts.setdefault(study.text(config.text_sections), len(texts))
        augment = Augmentation() if config.augment else None
        self.images = ImageFeed(
            encoder, list(paths), cached=cached, augment=augment, seed=config.seed
        )
        self.texts = TextFeed(encoder, list(texts), cached=config.cache_features)
        self.study_views = [[paths[c.image_path] for c in s.images] for s in sets.studies]
        self.study_text = np.array(
            [texts[s.text(config.text_sections)] for s in sets.studies], dtype=np.int64
        )
        self.study_labels = label_matrix(sets.studies)
        self.unpaired_image = np.array([paths[c.image_path] for c in sets.images], np.int64)
        self.pool_text = np.array(
            [texts[s.text(config.text_sections)] for s in sets.texts], np.int64
        )
        self.image_labels = semantic_vectors(label_matrix(sets.images))
        self.pool_labels = semantic_vectors(label_matrix(sets.texts))
        self.pool_labels_normalised = F.normalize(self.pool_labels, dim=1)
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        seed = self.config.seed * 1000 + epoch
        self.rng = np.random.default_rng(seed)
        self.images.rng = np.random.default_rng(seed + 1)
        self._order = {
            "paired": self._cycle(len(self.sets.studies)),
            "unpaired": self._cycle(len(self.sets.images)),
        }

    def _cycle(self, n: int):
        while n >= self.config.batch_size:
            order = self.rng.permutation(n)
            for start in range(0, n - self.config.batch_size + 1, self.config.batch_size):
                yield order[start : start + self.config.batch_size]

    def paired(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings, text embeddings, positives matrix, study label vectors): one
        view per study, drawn at random."""
        chosen = next(self._order["paired"])
        views = [self.rng.choice(self.study_views[i]) for i in chosen]
        texts = [self.texts.texts[self.study_text[i]] for i in chosen]
        positives = shared_positive_matrix(
            texts, self.study_labels[chosen], self.config.shared_positives
        )
        return (
            self.images.embed(views),
            self.texts.embed(self.study_text[chosen]),
            positives,
            semantic_vectors(self.study_labels[chosen]),
        )

    def unpaired(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(image embeddings, their labels, report embeddings, their labels): each image
        brings a report of the pool with the most similar labels (ties broken at random), so
        every row of the soft targets has a real positive."""
        chosen = next(self._order["unpaired"])
        image_labels = self.image_labels[chosen]
        if self.config.text_sampling == "matched":
            similarity = (F.normalize(image_labels, dim=1) @ self.pool_labels_normalised.T).numpy()
            jitter = self.rng.random(similarity.shape) * 1e-3
            reports = (similarity + jitter).argmax(axis=1)
        else:
            reports = self.rng.choice(len(self.sets.texts), len(chosen), replace=True)
        return (
            self.images.embed(self.unpaired_image[chosen]),
            image_labels,
            self.texts.embed(self.pool_text[reports]),
            self.pool_labels[reports],
        )


def _step_losses(
    kind: str, batches: _Batches, encoder: DualEncoder, config: TrainConfig
) -> dict[str, torch.Tensor]:
    model, device = encoder.model, encoder.device
    scale = model.logit_scale.exp()
    if kind == "paired":
        images, texts, positives, labels = batches.paired()
        losses = {"paired_loss": shared_clip_loss(images, texts, scale, positives.to(device))}
        if config.uniformity_weight:
            losses["uniformity_loss"] = (
                config.uniformity_weight * (uniformity_loss(images) + uniformity_loss(texts)) / 2
            )
        labelled = labels.sum(dim=1) > 0
        if config.image_image_weight and int(labelled.sum()) > 2:
            losses["image_image_loss"] = config.image_image_weight * soft_self_loss(
                images[labelled], scale, labels[labelled].to(device), config.label_temperature
            )
        return losses
    images, image_labels, texts, text_labels = batches.unpaired()
    image_labels, text_labels = image_labels.to(device), text_labels.to(device)
    losses = {
        "unpaired_loss": config.unpaired_weight
        * soft_clip_loss(images, texts, scale, image_labels, text_labels, config.label_temperature)
    }
    if config.image_image_weight:
        losses["image_image_loss"] = config.image_image_weight * soft_self_loss(
            images, scale, image_labels, config.label_temperature
        )
    if config.uniformity_weight:
        losses["uniformity_loss"] = config.uniformity_weight * uniformity_loss(images)
    return losses


# --- validation -------------------------------------------------------------------------------
class Validator:
    """Retrieval scores on the validation cases; `score` (their mean) drives early stopping.

    Paired studies (one frontal image per study, the pool = every validation study):
    image→report and report→image recall@10, identical reports counting as one answer, and
    image→report label P@10. Labelled images without a report: kNN macro AUC of their labels
    from the training images (`gallery`). Whichever the cases allow."""

    def __init__(
        self,
        encoder: DualEncoder,
        cases: Sequence[Case],
        sections: Sequence[str],
        gallery: Sequence[Case] = (),
    ) -> None:
        self.encoder, self.sections = encoder, tuple(sections)
        sets = training_sets(cases, sections)
        self.studies = [s for s in group_studies(cases) if s.query_image and s.text(sections)]
        self.images, self.gallery = sets.images, list(gallery)

    def __call__(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        encoder = self.encoder
        if len(self.studies) >= 5:
            images = encoder.encode_images([s.query_image.image_path for s in self.studies])
            texts_ = [s.text(self.sections) for s in self.studies]
            reports = encoder.encode_texts(texts_)
            groups = report_groups(texts_)
            similarity = images @ reports.T
            k = min(10, len(self.studies) - 1)
            metrics[f"image_to_report_r{k}"] = float(
                group_recall_at_k(similarity, groups, groups, k).mean()
            )
            metrics[f"report_to_image_r{k}"] = float(
                group_recall_at_k(similarity.T, groups, groups, k).mean()
            )
            positives = label_matrix(self.studies) == 1
            if positives.any():
                metrics["image_to_report_p10"] = float(
                    label_precision_at_k(similarity, positives, positives, 10).mean()
                )
        if self.images and len(self.gallery) > 10:
            auc = self._knn_auc()
            if auc is not None:
                metrics["image_knn_auc"] = auc
        if metrics:
            metrics["score"] = float(np.mean(list(metrics.values())))
        return metrics

    def _knn_auc(self) -> float | None:
        queries = self.encoder.encode_images([c.image_path for c in self.images])
        gallery = self.encoder.encode_images([c.image_path for c in self.gallery])
        truth = label_matrix(self.images)
        scores = knn_label_scores(queries @ gallery.T, label_matrix(self.gallery) == 1, 25)
        aucs = []
        for label in range(truth.shape[1]):
            known = np.isin(truth[:, label], (0, 1))  # positive or negative, not uncertain
            positives = int((truth[known, label] == 1).sum())
            if 5 <= positives < known.sum():
                aucs.append(roc_auc(truth[known, label] == 1, scores[known, label]))
        return float(np.mean(aucs)) if aucs else None


# --- optimisation ------------------------------------------------------------------------------
def _frozen_prefixes(encoder: DualEncoder, config: TrainConfig) -> tuple[str, ...]:
    """`config.freeze` when given; else the backbone's prefixes, with the image and text
    towers' part replaced by `frozen_image_stages` / `frozen_text_layers` when those are set."""
    if config.freeze is not None:
        return tuple(config.freeze)
    from medxpert.encoders import get_backbone

    try:
        prefixes = get_backbone(encoder.backbone).freeze
    except MedXpertError:
        prefixes = ()
    model = encoder.model
    if config.frozen_image_stages is not None and ImageStages.supports(model.visual):
        stages = ImageStages(model.visual, config.frozen_image_stages)
        prefixes = tuple(p for p in prefixes if not p.startswith("visual."))
        prefixes += stages.frozen_parameter_prefixes()
    layers = getattr(getattr(getattr(model, "text", None), "transformer", None), "encoder", None)
    if config.frozen_text_layers is not None and layers is not None:
        prefixes = tuple(p for p in prefixes if not p.startswith("text."))
        if config.frozen_text_layers >= len(layers.layer):
            prefixes += ("text.transformer.",)
        else:
            prefixes += ("text.transformer.embeddings.",)
            prefixes += tuple(
                f"text.transformer.encoder.layer.{i}." for i in range(config.frozen_text_layers)
            )
    return prefixes


def _freeze(model: torch.nn.Module, prefixes: Sequence[str]) -> list[torch.nn.Module]:
    """Train every parameter but those whose names start with a prefix; returns the fully
    frozen modules."""
    count = 0
    for name, parameter in model.named_parameters():
        frozen = any(name.startswith(prefix) for prefix in prefixes)
        parameter.requires_grad_(not frozen)
        count += parameter.numel() if frozen else 0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("frozen %.1fM parameters, training %.1fM", count / 1e6, trainable / 1e6)
    return [
        module
        for module in model.modules()
        if list(module.parameters(recurse=False))
        and not any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def _trains_any(model: torch.nn.Module, stages: ImageStages) -> bool:
    prefixes = stages.frozen_parameter_prefixes()
    return any(p.requires_grad for n, p in model.named_parameters() if n.startswith(prefixes))


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
