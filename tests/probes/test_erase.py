"""LEACE concept erasure (probes.fit_leace) against the closed form computed another way
(scipy's matrix square root and column-space basis), and its defining properties: after
erasure the class means are equal and a probe fitted on the erased data is at chance; the
erasure is a projection (idempotent) of rank classes - 1; its edit is smaller than the plain
orthogonal projection's; the random baseline has the same rank and size but leaves the concept."""
import numpy as np
import pytest
import scipy.linalg
import torch

from mindscope.probes import eigen_bands, fit_leace, fit_probe, majority_rate, orth_eraser


def _data(n=600, d=10, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    A = rng.normal(size=(d, d)) * np.linspace(0.3, 3.0, d)  # anisotropic
    X = rng.normal(size=(n, d)) @ A + 1.5 * rng.normal(size=(k, d))[y]
    return X, y


def _class_gap(E, y):
    return max(np.abs(E[y == c].mean(0) - E.mean(0)).max() for c in np.unique(y))


def test_leace_matches_the_closed_form_computed_with_scipy():
    X, y = _data()
    Xc = X - X.mean(0)
    Z = np.eye(4)[y]
    S = Xc.T @ Xc / len(X)
    Sxz = Xc.T @ (Z - Z.mean(0)) / len(X)
    W = np.linalg.inv(np.real(scipy.linalg.sqrtm(S)))  # Σ^{-1/2}
    Q = scipy.linalg.orth(W @ Sxz)  # orthonormal basis of col(W Σ_xz)
    P_ref = np.linalg.inv(W) @ Q @ Q.T @ W
    e = fit_leace(X, y)
    np.testing.assert_allclose(e.P.numpy(), P_ref, atol=1e-8)
    x = X[:5]
    np.testing.assert_allclose(e(x), x - (x - X.mean(0)) @ P_ref.T, atol=1e-8)


@pytest.mark.parametrize("shrinkage", [None, "auto", 0.5])
def test_erased_class_means_are_equal_and_a_refitted_probe_is_at_chance(shrinkage):
    X, y = _data()
    before = fit_probe(X, y, kind="logistic", C=1.0)
    assert before.score(X, y) > 0.9
    e = fit_leace(X, y, shrinkage=shrinkage)
    E = e(X)
    assert _class_gap(E, y) < 1e-9 < _class_gap(X, y)
    ridge = fit_probe(E, y, kind="ridge", C=1.0, standardize=False)  # least squares: learns 0
    assert float(ridge.weight.abs().max()) < 1e-8
    assert ridge.score(E, y) == pytest.approx(majority_rate(y))
    logit = fit_probe(E, y, kind="logistic", C=1.0)
    assert logit.score(E, y) < majority_rate(y) + 0.06  # ~ chance (0.27 here) vs > 0.9 before


@pytest.mark.parametrize("n,d,k", [(600, 10, 4), (40, 60, 3)])  # n < d: pseudo-inverse
def test_erasure_is_a_projection_of_rank_classes_minus_one(n, d, k):
    X, y = _data(n, d, k, seed=1)
    e = fit_leace(X, y)
    P = e.P.double()
    assert e.rank == k - 1 and int(torch.linalg.matrix_rank(P)) == k - 1
    torch.testing.assert_close(P @ P, P, atol=1e-9, rtol=0)
    E = e(X)
    np.testing.assert_allclose(e(E), E, atol=1e-9)  # erasing twice = erasing once
    assert _class_gap(E, y) < 1e-8


def test_leace_edits_less_than_the_orthogonal_projection():
    X, y = _data()
    e, o = fit_leace(X, y), orth_eraser(X, y)
    assert _class_gap(o(X), y) < 1e-9  # both erase ...
    assert e.edit_norm(X) < 0.9 * o.edit_norm(X)  # ... LEACE with the smaller edit


def test_random_eraser_has_the_same_rank_and_size_but_keeps_the_concept():
    X, y = _data(n=2000, d=64, k=4, seed=2)
    e = fit_leace(X, y)
    r = e.random_like(seed=3, band=8)
    P = r.P.double()
    assert r.rank == e.rank and torch.equal(r.mean, e.mean)
    torch.testing.assert_close(P @ P, P, atol=1e-9, rtol=0)
    assert 0.7 < r.edit_norm(X) / e.edit_norm(X) < 1.4  # variance-matched
    probe = fit_probe(X, y, kind="logistic", C=1.0)
    assert probe.score(r(X), y) > probe.score(e(X), y) + 0.3
    assert e.overlap(e) == pytest.approx(1.0) and r.overlap(e) < 0.25  # bands of 8: ~1/8
    torch.testing.assert_close(r.P, e.random_like(seed=3, band=8).P)  # deterministic per seed
    assert not torch.allclose(r.P, e.random_like(seed=4, band=8).P)


def test_bad_input_is_named():
    X, y = _data(50, 4, 2)
    with pytest.raises(ValueError, match="two classes"):
        fit_leace(X, np.zeros(50, int))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_leace(X, y, shrinkage=2.0)
    with pytest.raises(ValueError, match="d = 4"):
        fit_leace(X, y)(np.zeros((3, 5)))


def test_eigen_bands_cover_the_spectrum_within_the_ratio():
    lam = torch.tensor([1.0, 1.1, 1.2, 3.0, 3.1, 100.0, 101.0, 102.0, 103.0])
    bands = eigen_bands(lam, band=3, ratio=1.5)
    assert bands == [(0, 3), (3, 5), (5, 8), (8, 9)]
    assert eigen_bands(lam, band=100, ratio=1e9) == [(0, 9)]


@pytest.mark.parametrize("ratio", [1.25, 2.0])
def test_random_eraser_edit_matches_within_the_band_ratio_on_a_heavy_tailed_spectrum(ratio):
    rng = np.random.default_rng(5)
    n, d, k = 3000, 40, 3
    y = rng.integers(0, k, n)
    scale = np.exp(np.linspace(0, 6, d))  # sd over 2.6 orders of magnitude
    X = rng.normal(size=(n, d)) * scale  # the concept on the quietest dims of one band of 16:
    X += np.eye(d)[[16, 17, 0]][y] * 2.0 * scale[16]
    e = fit_leace(X, y)
    for seed in range(3):
        r = e.random_like(seed, band=16, ratio=ratio)
        q = r.edit_norm(X) / e.edit_norm(X)  # sqrt of Σ λ |U|² ratio: within sqrt(ratio)
        assert ratio ** -0.5 - 1e-9 <= q <= ratio ** 0.5 + 1e-9
    fixed = [e.random_like(s, band=16, ratio=1e9).edit_norm(X) / e.edit_norm(X) for s in range(3)]
    assert min(fixed) > 1.5  # plain bands of 16 on this spectrum: the edit is not matched
