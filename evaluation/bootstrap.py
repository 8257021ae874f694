"""Percentile-bootstrap 95% intervals over evaluation documents.

A statistic is a function of per-document arrays (e.g. each document's summed loss and token count). One
resample draws documents with replacement and applies the same draw to every array, so a ratio of two models
scored on the same documents is a paired comparison.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def bootstrap_interval(statistic: Callable[..., float], arrays: Sequence, n_samples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> dict:
    """{"value": statistic on the data, "low", "high": the central `level` interval of the resampled values}."""
    columns = [np.asarray(a, dtype=float) for a in arrays]
    n = len(columns[0])
    if n == 0 or any(len(c) != n for c in columns):
        raise ValueError(f"bootstrap needs non-empty arrays of one length, got {[len(c) for c in columns]}")
    value = float(statistic(*columns))
    draws = np.random.default_rng(seed).integers(0, n, size=(n_samples, n))
    resampled = np.array([statistic(*(c[d] for c in columns)) for d in draws], dtype=float)
    resampled = resampled[np.isfinite(resampled)]
    if not len(resampled):
        return {"value": value, "low": float("nan"), "high": float("nan")}
    tail = (1.0 - level) / 2
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    return {"value": value, "low": float(low), "high": float(high)}


def pooled_mean(sums, counts) -> float:
    """Σ sums / Σ counts: a token-weighted mean loss, or a hit rate from hits and attempts."""
    total = float(np.sum(counts))
    return float(np.sum(sums)) / total if total else float("nan")


def pooled_ratio(sums_a, counts_a, sums_b, counts_b) -> float:
    return pooled_mean(sums_a, counts_a) / pooled_mean(sums_b, counts_b)
