"""Fusing the report and image results of one query (`target="both"`) on one scale.

Image–image cosines run near 0.9 and image–text ones near 0.2 (the modality gap), so raw
cosines are never compared across indexes. Each index gives a ranked list of studies; a study
found in both has a rank and a cosine in each. Methods, by name:

- ``rrf``: reciprocal-rank fusion, Σ 1 / (k0 + rank) over the indexes (k0 = 60; Cormack et
  al. 2009). The default.
- ``calibrated``: each cosine as a z-score, (cosine − mean) / std, with the mean and std of
  its index's top-k cosines measured on validation queries (`Calibration`); the study's best
  z-score. Measured per query kind (image or text); a kind with no measurement uses ``rrf``.
- ``rank``: interleave the lists rank by rank (1 / best rank).
- ``max-cosine``: the best raw cosine. Wrong on purpose: the baseline that shows the gap.

Ties go to the study with the better rank, then to the report index. `medxpert eval fusion`
chooses a method on the validation split and saves it next to the index as `fusion.json`,
with the fingerprint of the encoder it was chosen for (`read_fusion`).
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medxpert.atomic import atomic_write_json
from medxpert.errors import ConfigError
from medxpert.retrieval.hits import MODALITY_ORDER, StudyMatch

logger = logging.getLogger(__name__)

FUSION_METHODS = ("rrf", "calibrated", "rank", "max-cosine")
DEFAULT_FUSION = "rrf"
RRF_K0 = 60
FUSION_FILE = "fusion.json"
QUERY_KINDS = ("image", "text")


@dataclass(frozen=True)
class Calibration:
    """Per query kind ("image", "text") and index ("image", "report"): the mean and standard
    deviation of the top-k cosines of validation queries."""

    stats: Mapping[str, Mapping[str, tuple[float, float]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, per_modality in self.stats.items():
            for modality, (mean, std) in per_modality.items():
                if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
                    raise ConfigError(
                        f"calibration of {modality} scores for {kind} queries needs a finite "
                        f"mean and a positive std, got {mean} and {std}; run "
                        "`medxpert eval fusion` again."
                    )

    def covers(self, kind: str, modalities: Iterable[str]) -> bool:
        return all(m in self.stats.get(kind, {}) for m in modalities)

    def z(self, kind: str, modality: str, cosine: float) -> float:
        mean, std = self.stats[kind][modality]
        return (cosine - mean) / std

    def to_dict(self) -> dict:
        return {
            kind: {m: {"mean": mean, "std": std} for m, (mean, std) in per_modality.items()}
            for kind, per_modality in self.stats.items()
        }

    @classmethod
    def from_dict(cls, record: Mapping) -> Calibration:
        return cls(
            {
                kind: {m: (float(v["mean"]), float(v["std"])) for m, v in per_modality.items()}
                for kind, per_modality in record.items()
            }
        )


@dataclass(frozen=True)
class Fusion:
    """A fusion method by name (`FUSION_METHODS`), with its k0 (rrf) and calibration."""

    method: str = DEFAULT_FUSION
    k0: int = RRF_K0
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ConfigError(
                f"fusion must be one of {', '.join(FUSION_METHODS)}, not {self.method!r}."
            )
        if self.k0 < 0:
            raise ConfigError(f"the rrf k0 must be 0 or more, got {self.k0}.")
        if self.method == "calibrated" and not self.calibration.stats:
            raise ConfigError(
                "calibrated fusion needs the per-index score statistics that `medxpert eval "
                "fusion` measures and saves next to the index; run it, or choose rrf."
            )

    def fuse(
        self, lists: Sequence[Sequence[StudyMatch]], k: int, kind: str = "image"
    ) -> list[tuple[float, list[StudyMatch]]]:
        """The k best studies of the lists (one per index, studies best first), each as its
        fused score and its matches, the best-contributing one first."""
        by_study: dict[str, list[StudyMatch]] = {}
        for match in sorted((m for found in lists for m in found), key=_modality_position):
            by_study.setdefault(match.study_id, []).append(match)
        method = self._method_for(kind, {m.modality for found in lists for m in found})
        scored = []
        for study, matches in by_study.items():
            contributions = [self._contribution(method, match, kind) for match in matches]
            best = max(range(len(matches)), key=lambda i: (contributions[i], -i))
            total = sum(contributions) if method == "rrf" else contributions[best]
            ordered = [matches[best], *(m for i, m in enumerate(matches) if i != best)]
            key = (-total, min(m.rank for m in matches), _modality_position(ordered[0]), study)
            scored.append((key, total, ordered))
        scored.sort(key=lambda item: item[0])
        return [(total, ordered) for _, total, ordered in scored[:k]]

    def _method_for(self, kind: str, modalities: set[str]) -> str:
        if self.method == "calibrated" and not self.calibration.covers(kind, modalities):
            _warn_uncalibrated(kind)
            return "rrf"
        return self.method

    def _contribution(self, method: str, match: StudyMatch, kind: str) -> float:
        if method == "rrf":
            return 1.0 / (self.k0 + match.rank)
        if method == "rank":
            return 1.0 / match.rank
        if method == "calibrated":
            return self.calibration.z(kind, match.modality, match.cosine)
        return match.cosine


def write_fusion(index_dir: str | Path, fusion: Fusion, fingerprint: str, **meta) -> Path:
    """Save the chosen fusion (and its calibration) next to the index, for the encoder with
    `fingerprint`; atomically."""
    record = {
        "method": fusion.method,
        "k0": fusion.k0,
        "calibration": fusion.calibration.to_dict(),
        "encoder_fingerprint": fingerprint,
        **meta,
    }
    return atomic_write_json(Path(index_dir) / FUSION_FILE, record)


def read_fusion(index_dir: str | Path, fingerprint: str, method: str | None = None) -> Fusion:
    """The saved fusion, or `method` with the saved calibration; rrf when none was saved for
    this encoder (a file chosen for another encoder is ignored, with a warning)."""
    path = Path(index_dir) / FUSION_FILE
    if not path.is_file():
        return Fusion(method or DEFAULT_FUSION)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        saved = Fusion(
            str(record["method"]),
            int(record.get("k0", RRF_K0)),
            Calibration.from_dict(record.get("calibration", {})),
        )
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as error:
        raise ConfigError(
            f"{path} is unreadable ({error}); delete it or run `medxpert eval fusion`."
        ) from error
    if record.get("encoder_fingerprint") != fingerprint:
        logger.warning("%s was chosen for another encoder; fusing with rrf", path)
        return Fusion(method or DEFAULT_FUSION)
    return saved if method is None else Fusion(method, saved.k0, saved.calibration)


def _modality_position(match: StudyMatch) -> int:
    return MODALITY_ORDER.index(match.modality)


@functools.cache
def _warn_uncalibrated(kind: str) -> None:
    logger.warning(
        "calibrated fusion has no score statistics for %s queries; fusing them with rrf", kind
    )
