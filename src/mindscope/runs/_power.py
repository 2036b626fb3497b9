"""Power and minimum detectable effects (MDE): what a null result rules out.

A protocol that reports "no effect" at n trials has only shown that the effect, if any, is
smaller than what n trials can detect. These functions give that size for the tests the
protocols use, at a two-sided level ``alpha`` and a ``power`` (80% by default), so a null is
written as "no effect larger than X (power 80%)" (``null_statement``).

* ``mde_proportions(n1, n2, p0)``: smallest p1 - p0 such that the Newcombe (hybrid Wilson)
  interval of the difference excludes 0 in ``power`` of exact binomial draws (TPR vs FPR,
  a rate under injection vs without).
* ``mde_mean(sd, n)``: smallest mean (paired difference, one-sample) a two-sided t-test detects,
  from the noncentral t distribution (exact for normal data).
* ``mde_correlation(n)``: smallest |r| a two-sided test detects (Fisher z).
* ``mde_auc(n_pos, n_neg)``: smallest AUC - 0.5 detectable (Hanley-McNeil standard error).
* ``mde_from_curve(strengths, rates)``: from a planted control run at several strengths, the
  smallest strength detected in ``power`` of the seeds (linear interpolation).

>>> round(mde_correlation(30), 2)
0.49
>>> 0.3 < mde_proportions(20, 20, 0.0)["mde"] < 0.5
True
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ._stats import wilson_bounds

__all__ = ["newcombe_diff", "mde_proportions", "power_proportions", "mde_mean", "mde_correlation",
           "mde_auc", "mde_from_curve", "null_statement"]


def _z(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def newcombe_diff(k1, n1: int, k2, n2: int, alpha: float = 0.05) -> tuple:
    """Newcombe's (1998, method 10) interval for p1 - p2 from two Wilson intervals; works on
    arrays of counts. Returns (diff, lo, hi)."""
    if n1 <= 0 or n2 <= 0:
        raise ValueError(f"need n1, n2 > 0; got {n1}, {n2}")
    z = _z(1 - alpha / 2)
    k1, k2 = np.asarray(k1, dtype=float), np.asarray(k2, dtype=float)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_bounds(k1, n1, z)
    l2, u2 = wilson_bounds(k2, n2, z)
    d = p1 - p2
    lo = d - np.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, lo, hi


def power_proportions(n1: int, n2: int, p0: float, p1: float, alpha: float = 0.05) -> float:
    """Exact power (enumerating both binomials) that the Newcombe interval of p1 - p0 lies
    above 0, with n1 trials at rate p1 and n2 at rate p0."""
    from scipy.stats import binom

    k1, k2 = np.arange(n1 + 1), np.arange(n2 + 1)
    _, lo, _ = newcombe_diff(k1[:, None], n1, k2[None, :], n2, alpha)
    w = binom.pmf(k1, n1, p1)[:, None] * binom.pmf(k2, n2, p0)[None, :]
    return float(w[lo > 0].sum())


def mde_proportions(n1: int, n2: int, p0: float, alpha: float = 0.05, power: float = 0.8,
                    tol: float = 1e-3) -> dict:
    """Smallest p1 - p0 > 0 detected (Newcombe interval above 0) with probability ``power``,
    for n1 trials at the raised rate and n2 at the baseline p0. ``mde`` is None when even
    p1 = 1 does not reach the power (n too small)."""
    if not 0 <= p0 < 1:
        raise ValueError(f"p0 must be in [0, 1); got {p0}")
    if power_proportions(n1, n2, p0, 1.0, alpha) < power:
        return {"mde": None, "p0": p0, "n1": n1, "n2": n2, "power": power, "alpha": alpha,
                "note": f"n1={n1}, n2={n2} cannot reach power {power} even at p1 = 1"}
    lo, hi = p0, 1.0
    while hi - lo > tol:  # power is monotone in p1 for fixed n (up to lattice wiggles)
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if power_proportions(n1, n2, p0, mid, alpha) >= power else (mid, hi)
    return {"mde": hi - p0, "p1": hi, "p0": p0, "n1": n1, "n2": n2, "power": power,
            "alpha": alpha}


def mde_mean(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |mean| a two-sided one-sample (or paired) t-test at level alpha detects with
    ``power``, for n observations of standard deviation sd (noncentral t, exact for normal
    data)."""
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    if n < 2:
        raise ValueError(f"need n >= 2 observations; got {n}")
    if sd <= 0:
        return 0.0
    df = n - 1
    c = t.ppf(1 - alpha / 2, df)

    def pw(delta: float) -> float:  # delta in sd units
        nc = delta * math.sqrt(n)
        lower = float(nct.cdf(-c, df, nc))  # the wrong-sign tail; scipy gives nan when ~0
        return float(nct.sf(c, df, nc)) + (0.0 if math.isnan(lower) else lower) - power

    d0 = (_z(1 - alpha / 2) + _z(power)) / math.sqrt(n)  # the normal approximation
    return float(brentq(pw, d0 / 4, d0 * 4)) * sd


def mde_correlation(n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |r| a two-sided test of r = 0 detects with ``power`` (Fisher z, n > 3)."""
    if n <= 3:
        raise ValueError(f"need n > 3 pairs; got {n}")
    return math.tanh((_z(1 - alpha / 2) + _z(power)) / math.sqrt(n - 3))


def mde_auc(n_pos: int, n_neg: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest AUC - 0.5 detectable (Hanley & McNeil 1982 standard error, evaluated at the
    alternative; solved by bisection)."""
    if n_pos < 1 or n_neg < 1:
        raise ValueError(f"need positives and negatives; got {n_pos}, {n_neg}")

    def se(a: float) -> float:
        q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
        return math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a))
                         / (n_pos * n_neg))

    za, zb = _z(1 - alpha / 2), _z(power)
    lo, hi = 0.5, 0.999999
    if (hi - 0.5) < za * se(0.5) + zb * se(hi):
        return float("nan")
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if (mid - 0.5) >= za * se(0.5) + zb * se(mid) else (mid, hi)
    return hi - 0.5


def mde_from_curve(strengths: Sequence[float], detect_rates: Sequence[float],
                   power: float = 0.8) -> Optional[float]:
    """From a planted control at several strengths (``detect_rates[i]``: fraction of seeds in
    which the protocol detected the effect at ``strengths[i]``), the smallest strength
    detected with rate >= power, linearly interpolated between the two strengths around it.
    None when no strength reaches it."""
    pairs = sorted(zip(map(float, strengths), map(float, detect_rates)))
    if not pairs:
        raise ValueError("give at least one strength")
    prev = None
    for s, r in pairs:
        if r >= power:
            if prev is None or prev[1] >= r:
                return s
            s0, r0 = prev
            return s0 + (power - r0) * (s - s0) / (r - r0)
        prev = (s, r)
    return None


def null_statement(measure: str, mde: Optional[float], power: float = 0.8,
                   unit: str = "") -> str:
    """'no <measure> larger than X (power 80%)' — how every null result is written."""
    if mde is None or (isinstance(mde, float) and math.isnan(mde)):
        return f"no {measure} detectable at this n (power {power:.0%} not reached)"
    return f"no {measure} larger than {mde:.3g}{unit} (power {power:.0%})"
