"""Towers split where their frozen part ends, so that the frozen part runs once per input.

Fine-tuning keeps the first stages of the image tower (and, by default, the whole text
transformer) frozen: their output for a given X-ray never changes, in any epoch, in the index
build or in the untuned baseline, which shares the same ImageNet stages. `ImageStages` runs an
EfficientNet-style timm trunk (stem, `blocks`, head conv) as prefix + suffix; `TextStages` runs
a Hugging Face text tower as pooled transformer output + projection. `FeatureCache` keeps the
prefix outputs on disk, keyed by a hash of the prefix weights and preprocessing and by each
file's path, size and modification time, so a change of either is a miss, never a stale hit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from medxpert.atomic import atomic_path

logger = logging.getLogger(__name__)


class ImageStages:
    """`suffix(prefix(x)) == visual(x)` for a timm EfficientNet-style trunk, split after
    `frozen_stages` of its `blocks` (0: after the stem)."""

    def __init__(self, visual: torch.nn.Module, frozen_stages: int) -> None:
        trunk = visual.trunk
        if not 0 <= frozen_stages <= len(trunk.blocks):
            raise ValueError(f"frozen_stages must be in 0..{len(trunk.blocks)}")
        self.visual, self.trunk, self.frozen_stages = visual, trunk, frozen_stages

    @staticmethod
    def supports(visual: torch.nn.Module) -> bool:
        trunk = getattr(visual, "trunk", None)
        return all(hasattr(trunk, name) for name in ("conv_stem", "bn1", "blocks", "conv_head"))

    def frozen_parameter_prefixes(self) -> tuple[str, ...]:
        stages = [f"visual.trunk.blocks.{i}." for i in range(self.frozen_stages)]
        return ("visual.trunk.conv_stem.", "visual.trunk.bn1.", *stages)

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        x = self.trunk.bn1(self.trunk.conv_stem(images))
        for stage in self.trunk.blocks[: self.frozen_stages]:
            x = stage(x)
        return x

    def suffix(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for stage in self.trunk.blocks[self.frozen_stages :]:
            x = stage(x)
        x = self.trunk.bn2(self.trunk.conv_head(x))
        return self.visual.head(self.trunk.forward_head(x))

    def fingerprint(self, preprocess: dict) -> str:
        return _state_hash(self.visual, self.frozen_parameter_prefixes(), "visual.", preprocess)


class TextStages:
    """`suffix(prefix(tokens)) == text(tokens)` for an open_clip HF text tower whose whole
    transformer is frozen: the prefix is the pooled transformer output, the suffix the
    projection."""

    def __init__(self, text: torch.nn.Module) -> None:
        self.text = text

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        text = getattr(model, "text", None)
        return all(hasattr(text, name) for name in ("transformer", "pooler", "proj"))

    def prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.text.config.pad_token_id).long()
        output = self.text.transformer(input_ids=tokens, attention_mask=mask)
        return self.text.pooler(output, mask)

    def suffix(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.text.proj(pooled)

    def fingerprint(self, tokenizer_name: str) -> str:
        prefixes = ("text.transformer.", "text.pooler.")
        return _state_hash(self.text, prefixes, "text.", tokenizer_name)


class FeatureCache:
    """Prefix outputs on disk under `root/<fingerprint>/`, in shards written atomically;
    float32, so that cached vectors equal fresh ones. Keys name the input (`image_key`,
    `text_key`)."""

    def __init__(self, root: str | Path, fingerprint: str) -> None:
        self.directory = Path(root) / fingerprint
        self._rows: dict[str, tuple[int, int]] = {}
        self._shards: list[np.ndarray] = []
        for path in sorted(self.directory.glob("shard-*.npz")):
            try:
                with np.load(path, allow_pickle=False) as shard:
                    keys, features = shard["keys"], shard["features"]
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
                logger.warning("feature cache: %s unreadable (%s); ignored", path, error)
                continue
            self._shards.append(features)
            index = len(self._shards) - 1
            self._rows.update({str(key): (index, row) for row, key in enumerate(keys)})

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def get(self, key: str) -> np.ndarray:
        shard, row = self._rows[key]
        return self._shards[shard][row]

    def put(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Add a shard of features (n, ...) for `keys`; kept in memory and written to disk."""
        if not len(keys):
            return
        features = np.ascontiguousarray(features, dtype=np.float32)
        self._shards.append(features)
        index = len(self._shards) - 1
        self._rows.update({key: (index, row) for row, key in enumerate(keys)})
        digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
        target = self.directory / f"shard-{len(self._shards):05d}-{digest}.npz"
        try:
            with atomic_path(target) as tmp, tmp.open("wb") as handle:
                np.savez(handle, keys=np.array(keys), features=features)
        except OSError as error:  # a full or read-only disk costs speed, not correctness
            logger.warning("feature cache: could not write %s (%s)", target, error)


def image_key(path: str | os.PathLike[str]) -> str | None:
    """A cache key for an image file (path, size, mtime), or None for in-memory images."""
    if not isinstance(path, str | os.PathLike):
        return None
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _state_hash(module: torch.nn.Module, prefixes: Sequence[str], strip: str, extra) -> str:
    digest = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    state = module.state_dict()
    wanted = tuple(prefix.removeprefix(strip) for prefix in prefixes)
    for name in sorted(state):
        if name.startswith(wanted):
            tensor = state[name].detach().cpu().contiguous()
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.float().numpy().tobytes())
    return digest.hexdigest()[:24]
