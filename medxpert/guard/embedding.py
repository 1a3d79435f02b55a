"""How far an image's embedding lies from the library's chest X-rays (Mahalanobis distance).

Fine-tuning packs chest X-rays into a narrow cone: a photograph's nearest library image can be
as close by cosine as a chest X-ray's (benchmarks/RESULTS.md, "The input guard"). The
Mahalanobis distance to the library's image distribution (Lee et al., NeurIPS 2018) measures
distance along the directions in which X-rays vary little, where other pictures stand out. The
mean and a Ledoit–Wolf shrunk covariance come from the library's train images; the threshold
is the `QUANTILE` of the library's val images' distances, so that by construction about 0.5%
of chest X-rays like the val ones are refused. `medxpert eval guard` saves it next to the index
(`guard.npz`, with the encoder fingerprint); without the file the pipeline fits it in memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medxpert.atomic import atomic_path
from medxpert.errors import ConfigError, IndexFormatError
from medxpert.index import CaseLibrary

logger = logging.getLogger(__name__)

GUARD_FILE = "guard.npz"
QUANTILE = 0.995
MIN_FIT_IMAGES = 50  # fewer train or val images than this: no embedding check


@dataclass(frozen=True)
class EmbeddingGuard:
    """Mean, precision matrix and refusal threshold of the library's image distribution."""

    mean: np.ndarray  # (d,)
    precision: np.ndarray  # (d, d)
    threshold: float  # squared Mahalanobis distance above which an image is refused
    fingerprint: str
    meta: dict

    def distances(self, vectors: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance of each row of `vectors` (n, d)."""
        centred = np.asarray(vectors, dtype=np.float64) - self.mean
        return np.einsum("ij,jk,ik->i", centred, self.precision, centred)

    def problems(self, vectors: np.ndarray) -> list[list[str]]:
        """For each vector, why its image is too far from the library's (empty when near)."""
        return [
            [
                f"its embedding lies far from every chest X-ray of the library (distance "
                f"{distance:.0f} > {self.threshold:.0f}, a limit only {1 - QUANTILE:.1%} of "
                "validation X-rays exceed)"
            ]
            if distance > self.threshold
            else []
            for distance in self.distances(vectors)
        ]


def fit_embedding_guard(
    train: np.ndarray, val: np.ndarray, fingerprint: str, quantile: float = QUANTILE
) -> EmbeddingGuard:
    """Mean and Ledoit–Wolf covariance of `train` vectors; threshold at `quantile` of `val`."""
    from sklearn.covariance import LedoitWolf

    if len(train) < MIN_FIT_IMAGES or len(val) < MIN_FIT_IMAGES:
        raise ConfigError(
            f"the input guard needs at least {MIN_FIT_IMAGES} train and val images in the "
            f"library to choose its threshold; it has {len(train)} and {len(val)}."
        )
    model = LedoitWolf().fit(np.asarray(train, dtype=np.float64))
    guard = EmbeddingGuard(model.location_, model.precision_, 0.0, fingerprint, {})
    distances = guard.distances(val)
    threshold = float(np.quantile(distances, quantile))
    meta = {
        "quantile": quantile,
        "shrinkage": round(float(model.shrinkage_), 6),
        "train_images": len(train),
        "val_images": len(val),
        "val_distance_median": round(float(np.median(distances)), 2),
    }
    return EmbeddingGuard(model.location_, model.precision_, threshold, fingerprint, meta)


def library_embedding_guard(library: CaseLibrary, fingerprint: str) -> EmbeddingGuard:
    """Fit on the library's own images: train for the distribution, val for the threshold."""
    train, _ = library.image_vectors(splits=["train"])
    val, _ = library.image_vectors(splits=["val"])
    return fit_embedding_guard(train, val, fingerprint)


def write_embedding_guard(index_dir: str | Path, guard: EmbeddingGuard) -> Path:
    target = Path(index_dir) / GUARD_FILE
    record = {"threshold": guard.threshold, "encoder_fingerprint": guard.fingerprint, **guard.meta}
    with atomic_path(target) as tmp, tmp.open("wb") as handle:
        np.savez(handle, mean=guard.mean, precision=guard.precision, meta=json.dumps(record))
    return target


def read_embedding_guard(index_dir: str | Path, fingerprint: str) -> EmbeddingGuard | None:
    """The saved guard for this encoder; None when there is none (or it is for another)."""
    path = Path(index_dir) / GUARD_FILE
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            record = json.loads(str(saved["meta"]))
            mean, precision = saved["mean"], saved["precision"]
        threshold = float(record.pop("threshold"))
        saved_fingerprint = record.pop("encoder_fingerprint")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise IndexFormatError(
            f"{path} is unreadable ({error}); delete it or run `medxpert eval guard`."
        ) from None
    if saved_fingerprint != fingerprint:
        logger.warning("%s was fitted for another encoder; fitting the guard again", path)
        return None
    if precision.shape != (len(mean), len(mean)):
        raise IndexFormatError(f"{path} holds a precision matrix of the wrong shape.")
    return EmbeddingGuard(mean, precision, threshold, fingerprint, record)
