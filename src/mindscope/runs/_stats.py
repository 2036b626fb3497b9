"""Interval statistics shared by every run: one Wilson interval, one normal-approximation mean
CI and one percentile bootstrap.

>>> wilson(3, 10)["lo"] < 0.3 < wilson(3, 10)["hi"]
True
>>> mean_ci([1.0, 2.0, 3.0])["mean"]
2.0
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = ["wilson", "mean_ci", "bootstrap_ci"]


def wilson(k: int, n: int, z: float = 1.96) -> dict:
    """Rate k/n with its Wilson score interval (95% for z=1.96). n == 0 -> rate None.

    Wilson (1927): centre (p + z²/2n)/(1 + z²/n), half-width z/(1 + z²/n)·√(p(1-p)/n + z²/4n²).
    """
    k, n = int(k), int(n)
    if k < 0 or n < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "lo": None, "hi": None}
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z / den * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return {"k": k, "n": n, "rate": p, "lo": max(0.0, centre - half), "hi": min(1.0, centre + half)}


def mean_ci(xs: Sequence[float], z: float = 1.96) -> dict:
    """Mean with a normal-approximation CI (mean ± z·sd/√n; sd with n-1)."""
    xs = [float(x) for x in xs]
    n = len(xs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    h = z * sd / math.sqrt(n)
    return {"mean": m, "lo": m - h, "hi": m + h, "n": n}


def bootstrap_ci(fn, n: int, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
                 ) -> tuple[float, float, float]:
    """Point estimate and percentile CI of ``fn(idx)`` over resamples of ``range(n)`` (paired:
    one index set indexes every array ``fn`` uses)."""
    rng = np.random.default_rng(seed)
    est = float(fn(np.arange(n)))
    vals = np.array([fn(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    if len(vals) == 0:
        return est, float("nan"), float("nan")
    return est, float(np.quantile(vals, alpha / 2)), float(np.quantile(vals, 1 - alpha / 2))
