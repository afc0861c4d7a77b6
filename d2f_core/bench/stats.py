"""Bootstrap confidence intervals over the samples of a cell (seeded, so a re-run reproduces them)."""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000


def bootstrap_mean(values, seed: int = 0) -> tuple[float, float]:
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, len(x), (RESAMPLES, len(x)))
    lo, hi = np.percentile(x[idx].mean(1), [2.5, 97.5])
    return float(lo), float(hi)


def bootstrap_ratio(numer, denom, seed: int = 0) -> tuple[float, float]:
    """95% CI of sum(numer) / sum(denom), resampling (numer, denom) pairs: e.g. TPS = tokens / latency."""
    a, b = np.asarray(numer, dtype=float), np.asarray(denom, dtype=float)
    if len(a) == 0:
        return (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, len(a), (RESAMPLES, len(a)))
    lo, hi = np.percentile(a[idx].sum(1) / b[idx].sum(1), [2.5, 97.5])
    return float(lo), float(hi)
