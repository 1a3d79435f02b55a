"""Contrastive fine-tuning of the dual encoder on paired and unpaired data."""

from medxpert.train.config import TrainConfig
from medxpert.train.loop import TrainingDataError, TrainResult, finetune

__all__ = ["TrainConfig", "TrainResult", "TrainingDataError", "finetune"]
