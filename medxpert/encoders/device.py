"""Pick the compute device: CUDA when present and asked for (or "auto"), else the CPU."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` → CUDA if available else CPU; `cuda` without a GPU falls back to CPU (warning)."""
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not {requested!r}")
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        logger.warning("CUDA was asked for but no GPU is visible; using the CPU instead.")
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
