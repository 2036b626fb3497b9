"""Power and MDE helpers against published values, closed forms and simulation."""
import math

import numpy as np
import pytest

from mindscope.runs import (mde_auc, mde_correlation, mde_from_curve, mde_mean, mde_proportions,
                            newcombe_diff, null_statement, power_proportions)


def test_newcombe_matches_the_published_example():
    # Newcombe (1998) Stat Med 17:873, example (a): 56/70 vs 48/80, method 10: 0.0524 to 0.3339
    d, lo, hi = newcombe_diff(56, 70, 48, 80)
    assert float(d) == pytest.approx(0.2)
    assert float(lo) == pytest.approx(0.0524, abs=5e-4)
    assert float(hi) == pytest.approx(0.3339, abs=5e-4)


def test_power_proportions_matches_simulation():
    rng = np.random.default_rng(0)
    n1, n2, p0, p1 = 15, 25, 0.1, 0.5
    k1, k2 = rng.binomial(n1, p1, 20000), rng.binomial(n2, p0, 20000)
    _, lo, _ = newcombe_diff(k1, n1, k2, n2)
    assert power_proportions(n1, n2, p0, p1) == pytest.approx(float((lo > 0).mean()), abs=0.015)


def test_mde_proportions_reaches_the_power_and_no_less():
    r = mde_proportions(20, 20, 0.1)
    assert power_proportions(20, 20, 0.1, r["p1"]) >= 0.8
    assert power_proportions(20, 20, 0.1, r["p1"] - 0.02) < 0.8
    assert mde_proportions(2, 2, 0.5)["mde"] is None  # n too small for any effect
    assert mde_proportions(200, 200, 0.1)["mde"] < r["mde"]


def test_mde_mean_gives_80_percent_power_in_simulation():
    from scipy.stats import ttest_1samp

    n, sd = 12, 2.0
    m = mde_mean(sd, n)
    assert m / sd == pytest.approx((1.96 + 0.8416) / math.sqrt(n), rel=0.15)  # near normal approx
    rng = np.random.default_rng(1)
    x = rng.normal(m, sd, size=(20000, n))
    rate = float((ttest_1samp(x, 0.0, axis=1).pvalue < 0.05).mean())
    assert rate == pytest.approx(0.8, abs=0.012)


def test_mde_correlation_matches_cohens_table():
    # Cohen (1988): r = 0.5 needs n = 28-29 for 80% power, two-sided alpha 0.05
    assert mde_correlation(29) == pytest.approx(0.5, abs=0.02)
    assert mde_correlation(85) == pytest.approx(0.3, abs=0.01)


def test_mde_auc_uses_the_mann_whitney_variance_at_the_null():
    n1, n2 = 20, 30
    m = mde_auc(n1, n2)
    se0 = math.sqrt((n1 + n2 + 1) / (12 * n1 * n2))  # Mann-Whitney U variance at AUC = 0.5
    assert 1.96 * se0 < m < (1.96 + 0.85) * se0 * 1.1
    assert mde_auc(200, 200) < m


def test_mde_from_curve_interpolates():
    assert mde_from_curve([0.25, 0.5, 1.0], [0.0, 0.6, 1.0]) == pytest.approx(0.75)
    assert mde_from_curve([1.0, 2.0], [0.9, 1.0]) == 1.0
    assert mde_from_curve([1.0, 2.0], [0.1, 0.5]) is None


def test_null_statement():
    assert null_statement("TPR - FPR", 0.31) == "no TPR - FPR larger than 0.31 (power 80%)"
    assert "not reached" in null_statement("TPR - FPR", None)
