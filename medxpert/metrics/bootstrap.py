"""95% bootstrap intervals for per-query means and for ROC AUC."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

N_BOOT = 1000


@dataclass(frozen=True)
class Estimate:
    """A figure with its 95% bootstrap interval over `n` queries (or cases)."""

    value: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n}


def bootstrap_mean(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> Estimate:
    """Mean of per-query `values`, with a percentile interval from resampled queries."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[samples].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return Estimate(float(values.mean()), float(low), float(high), len(values))


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties averaged); NaN with one class only."""
    truth = np.asarray(truth, dtype=bool)
    positives, negatives = truth.sum(), (~truth).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_auc(
    truth: np.ndarray, scores: np.ndarray, n_boot: int = N_BOOT, seed: int = 0
) -> tuple[list[Estimate], Estimate]:
    """Per-label AUCs and their macro mean, each with a 95% interval from resampled cases.

    `truth` is (n, labels) with 1 / 0 / NaN (NaN rows are left out for that label).
    """
    truth = np.asarray(truth, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(truth), size=(n_boot, len(truth)))
    per_label, boot = [], np.full((n_boot, truth.shape[1]), np.nan)
    for label in range(truth.shape[1]):
        known = ~np.isnan(truth[:, label])
        value = roc_auc(truth[known, label] == 1, scores[known, label])
        for b, sample in enumerate(samples):
            sample = sample[known[sample]]
            boot[b, label] = roc_auc(truth[sample, label] == 1, scores[sample, label])
        low, high = np.nanpercentile(boot[:, label], [2.5, 97.5])
        per_label.append(Estimate(value, float(low), float(high), int(known.sum())))
    macro_boot = np.nanmean(boot, axis=1)
    low, high = np.nanpercentile(macro_boot, [2.5, 97.5])
    macro = float(np.nanmean([estimate.value for estimate in per_label]))
    return per_label, Estimate(macro, float(low), float(high), len(truth))
