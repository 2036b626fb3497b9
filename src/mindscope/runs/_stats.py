"""Interval statistics shared by every run: one Wilson interval, a normal-approximation mean
CI and a Student-t one (few seeds), and one percentile bootstrap.

>>> wilson(3, 10)["lo"] < 0.3 < wilson(3, 10)["hi"]
True
>>> mean_ci([1.0, 2.0, 3.0])["mean"]
2.0
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

__all__ = ["wilson", "mean_ci", "t_ci", "bootstrap_ci", "mcnemar", "seed_spread", "cohen_kappa", "auc"]


def wilson_bounds(k, n: int, z: float = 1.96) -> tuple:
    """Wilson score bounds of k/n (k a number or an array of counts), clipped to [0, 1].

    Wilson (1927): centre (p + z²/2n)/(1 + z²/n), half-width z/(1 + z²/n)·√(p(1-p)/n + z²/4n²).
    """
    p = np.asarray(k, dtype=float) / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z / den * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def wilson(k: int, n: int, z: float = 1.96) -> dict:
    """Rate k/n with its Wilson score interval (95% for z=1.96; ``wilson_bounds``). n == 0 ->
    rate None."""
    k, n = int(k), int(n)
    if k < 0 or n < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n; got k={k}, n={n}")
    if n == 0:
        return {"k": 0, "n": 0, "rate": None, "lo": None, "hi": None}
    lo, hi = wilson_bounds(k, n, z)
    return {"k": k, "n": n, "rate": k / n, "lo": float(lo), "hi": float(hi)}


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


def t_ci(xs: Sequence[float], level: float = 0.95) -> dict:
    """Mean with a Student-t interval: mean ± t_{(1+level)/2, n-1}·sd/√n (sd with n-1), the
    interval to use for a few seeds, where ``mean_ci``'s normal z is too narrow (n = 3: t = 4.30
    against z = 1.96). NaNs are dropped; ``half`` is the half-width. n < 2 -> no interval
    (lo, hi, half None)."""
    if not 0 < level < 1:
        raise ValueError(f"t_ci: level must be in (0, 1), got {level!r}")
    xs = [float(x) for x in xs if x == x]
    n = len(xs)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "half": None, "n": 0}
    m = sum(xs) / n
    if n < 2:
        return {"mean": m, "lo": None, "hi": None, "half": None, "n": 1}
    from scipy.stats import t  # scipy comes with scikit-learn

    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    h = float(t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": m, "lo": m - h, "hi": m + h, "half": h, "n": n}


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


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> dict:
    """Exact McNemar test for paired binary outcomes (the same trials under two conditions):
    discordant counts a_only (a true, b false) and b_only, two-sided binomial p.

    >>> mcnemar([True, True, True, False], [False, False, False, False])["p"]
    0.25
    """
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"mcnemar needs paired outcomes of equal length; got {len(a)} and {len(b)}")
    n10 = sum(x and not y for x, y in zip(a, b))
    n01 = sum(y and not x for x, y in zip(a, b))
    n, k = n10 + n01, min(n10, n01)
    p = 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    return {"n_pairs": len(a), "a_only": n10, "b_only": n01, "p": p}


_T975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306,
         10: 2.262}


def seed_spread(values: Sequence[float]) -> dict:
    """Across-seed summary of one number: mean, sd (n-1), min, max, the values, and a t-based
    95% interval of the mean (normal quantile above 30 seeds).

    >>> seed_spread([1.0, 2.0, 3.0])["sd"]
    1.0
    """
    xs = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    n = len(xs)
    if n == 0:
        return {"n_seeds": 0, "mean": None, "sd": None, "min": None, "max": None, "values": [],
                "lo": None, "hi": None}
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    h = _T975.get(n, 1.96 if n > 30 else 2.2) * sd / math.sqrt(n) if n > 1 else None
    return {"n_seeds": n, "mean": m, "sd": sd, "min": min(xs), "max": max(xs), "values": xs,
            "lo": None if h is None else m - h, "hi": None if h is None else m + h}


def cohen_kappa(a: Sequence, b: Sequence) -> Optional[float]:
    """Cohen's kappa of two label sequences (any hashable labels); None when undefined (no
    items, or chance agreement 1: both raters constant on the same label).

    >>> cohen_kappa([1, 1, 0, 0], [1, 1, 0, 0])
    1.0
    """
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa needs equal lengths; got {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in set(a) | set(b))
    if pe >= 1.0 - 1e-12:
        return None
    return (po - pe) / (1.0 - pe)


def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """Area under the ROC curve: P(pos > neg) + 0.5 P(tie) over all pairs (Mann-Whitney).

    >>> round(auc([3.0, 4.0], [1.0, 2.0, 3.0]), 3)
    0.917
    """
    p, q = np.asarray(pos, float)[:, None], np.asarray(neg, float)[None, :]
    if p.size == 0 or q.size == 0:
        return float("nan")
    return float(((p > q).sum() + 0.5 * (p == q).sum()) / (p.size * q.size))
