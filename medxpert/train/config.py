"""Fine-tuning settings: the original MedXpert's defaults, and tuned defaults per backbone."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from medxpert.errors import ConfigError

# Tuned on the shared packs' validation splits for the offline default: `medxpert tune`, study
# "medxpert-default-finetune" of 2026-12-01, trial 11 (validation score 0.421 at its epoch 3,
# against 0.413 for the same settings at 224 px, trial 8; benchmarks/RESULTS.md). Its
# projection heads start from random weights and its towers are small, so it wants far larger
# learning rates than a pretrained CLIP.
TUNED: dict[str, dict[str, object]] = {
    "medxpert-default": {
        "epochs": 6,
        "batch_size": 32,
        "lr_tower": 1e-4,
        "lr_head": 1e-3,
        "label_temperature": 0.1,
        "image_image_weight": 0.5,
        "uniformity_weight": 0.0,
        "shared_positives": "text",
        "image_size": 192,
        "frozen_image_stages": 5,
        "frozen_text_layers": 6,
    },
}


@dataclass(frozen=True)
class TrainConfig:
    """How to fine-tune. Defaults are the original MedXpert's (AdamW, lr 5e-6 for the
    pretrained towers, batch 16, 3 epochs); `TrainConfig.for_backbone` applies tuned ones."""

    epochs: int = 3
    batch_size: int = 16
    grad_accum: int = 1
    lr_tower: float = 5e-6
    lr_head: float = 1e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    freeze: tuple[str, ...] | None = None  # parameter-name prefixes; None: the backbone's own
    text_sections: tuple[str, ...] = ("impression", "findings")
    unpaired_weight: float = 1.0
    image_image_weight: float = 0.5
    uniformity_weight: float = 0.0  # spread the image and report vectors (0: off)
    text_sampling: str = "matched"  # unpaired reports: "matched" to each image's labels, "random"
    shared_positives: str = "text"  # paired batches: "none", "text" (same report), "labels"
    image_size: int | None = None  # input resolution; None: the backbone's
    # Frozen depth by stage (EfficientNet-style image trunks, HF text towers); None: `freeze`
    # or the backbone's own prefixes. A text tower frozen in all its layers is cached whole.
    frozen_image_stages: int | None = None
    frozen_text_layers: int | None = None
    cache_features: bool = True  # run the frozen stages once per item, not once per step
    label_temperature: float = 0.1
    augment: bool = True
    amp: bool = True  # mixed precision, on CUDA only
    seed: int = 0
    patience: int = 2  # epochs without a better validation score before stopping
    max_steps_per_epoch: int | None = None
    num_workers: int = 0
    log_every: int = 10
    extra: dict = field(default_factory=dict)  # recorded, not used: e.g. the command line

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if self.batch_size < 2:
            raise ConfigError("batch_size must be at least 2 for contrastive learning.")
        if self.shared_positives not in ("none", "text", "labels"):
            raise ConfigError("shared_positives must be 'none', 'text' or 'labels'.")
        if self.image_size is not None and self.image_size < 32:
            raise ConfigError(f"image_size must be at least 32, got {self.image_size}.")
        if self.text_sampling not in ("matched", "random"):
            raise ConfigError("text_sampling must be 'matched' or 'random'.")
        if not 0 <= self.warmup_fraction < 1:
            raise ConfigError("warmup_fraction must be in [0, 1).")
        if self.lr_tower < 0 or self.lr_head <= 0:
            raise ConfigError("learning rates must be positive (lr_tower may be 0 to freeze).")

    @classmethod
    def for_backbone(cls, backbone: str, **overrides: object) -> TrainConfig:
        """The defaults, then the tuned values for `backbone`, then `overrides` (None skipped)."""
        values = {
            **TUNED.get(backbone, {}),
            **{k: v for k, v in overrides.items() if v is not None},
        }
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown training option(s): {sorted(unknown)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
