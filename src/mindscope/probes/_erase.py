"""Linear concept erasure (LEACE: Belrose et al. 2023, "LEACE: Perfect linear concept erasure in
closed form"): the smallest affine edit of ``x`` after which no linear probe can read a concept
``z`` better than a constant.

With ``Σ_xx`` the covariance of ``x``, ``Σ_xz`` its cross-covariance with the one-hot concept,
the whitening ``W = Σ_xx^{-1/2}`` (pseudo-inverse on the data's span, or of a shrunk
covariance), and ``U`` an orthonormal basis of the column space of ``W Σ_xz``, the eraser is

    r(x) = x - P (x - μ),   P = W⁺ U Uᵀ W   (an oblique projection of rank ≤ classes - 1).

``P Σ_xz = Σ_xz`` for any invertible ``W``, so after erasure the cross-covariance is zero:
every class has the same mean, and a least-squares probe learns nothing. ``W = Σ^{-1/2}``
makes the edit the smallest in mean squared norm among all such erasers.

>>> import numpy as np
>>> rng = np.random.default_rng(0); y = rng.integers(0, 3, 300)
>>> X = rng.normal(size=(300, 6)) + 3 * np.eye(6)[y]
>>> e = fit_leace(X, y)
>>> e.rank, bool(np.allclose([e(X)[y == c].mean(0) for c in range(3)], e(X).mean(0)))
(2, True)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

from ._linear import _np

Shrinkage = Union[None, float, str]


@dataclass(frozen=True)
class Eraser:
    """``x <- x - ((x - mean) @ right.T) @ left.T``: remove the subspace ``left`` (d, r) along
    the oblique directions ``right`` (r, d); ``left @ right`` is the projection ``P``."""

    mean: torch.Tensor
    """(d,) the fitting data's mean (the point the erasure keeps fixed)."""
    left: torch.Tensor
    """(d, r) ``W⁺ U``."""
    right: torch.Tensor
    """(r, d) ``Uᵀ W``."""
    eig: torch.Tensor = field(repr=False, default=None)
    """(m,) eigenvalues (ascending) of the covariance the whitening uses, on its support."""
    vecs: torch.Tensor = field(repr=False, default=None)
    """(d, m) their eigenvectors: ``W = vecs diag(eig^-1/2) vecsᵀ``."""
    coords: torch.Tensor = field(repr=False, default=None)
    """(m, r) the whitened basis ``U`` in that eigenbasis (``U = vecs @ coords``)."""
    meta: dict = field(default_factory=dict)
    """How it was fitted (method, shrinkage, n, classes, ...)."""

    @property
    def rank(self) -> int:
        return int(self.left.shape[1])

    @property
    def d(self) -> int:
        return int(self.mean.shape[0])

    @property
    def P(self) -> torch.Tensor:
        """(d, d) the erased projection (``x - P (x - mean)``)."""
        return self.left @ self.right

    def __call__(self, x):
        """Erase rows of ``x`` (N, d) or one vector (d,); numpy in -> numpy out."""
        if isinstance(x, np.ndarray):
            return self(torch.from_numpy(x)).numpy()
        if x.shape[-1] != self.d:
            raise ValueError(f"eraser fitted on d = {self.d} got vectors of d = {x.shape[-1]}; "
                             "was it fitted at another site or model?")
        dev, dt = x.device, x.dtype
        L, R, mu = (t.to(dev, torch.float64) for t in (self.left, self.right, self.mean))
        xf = x.to(torch.float64)
        return (xf - ((xf - mu) @ R.T) @ L.T).to(dt)  # (..., d)

    def intervention(self, site: str, positions="all"):
        """A core ``Replace`` that erases at ``site`` on ``positions`` (e.g. a (B, T) mask)."""
        from ..core import Replace
        return Replace(site, self, positions=positions)

    def overlap(self, other: "Eraser") -> float:
        """Mean squared cosine between the two erasers' whitened subspaces ``U`` (same
        whitening): 1 = the same erasure, about rank/m for unrelated random ones."""
        if self.coords is None or other.coords is None:
            raise ValueError("overlap needs erasers from fit_leace / random_like")
        return float((self.coords.T @ other.coords).pow(2).sum() / self.rank)

    def edit_norm(self, X) -> float:
        """Root mean squared norm of the edit on the rows of ``X`` (N, d)."""
        X = torch.as_tensor(_np(X), dtype=torch.float64)
        return float((X - self(X)).pow(2).sum(-1).mean().sqrt())

    def random_like(self, seed: int = 0, band: int = 16,
                    ratio: Optional[float] = None) -> "Eraser":
        """The same erasure machinery (same mean and whitening, same rank) on a RANDOM subspace
        whose variance profile matches this one's: the whitened basis ``U``, written in the
        covariance's eigenbasis, is turned by an independent Haar-random rotation inside each
        band of ``band`` consecutive eigenvalues (with ``ratio``: also cut where the band's
        largest eigenvalue would exceed ``ratio`` times its smallest). Each band keeps its share
        of ``U``, so the edit's mean squared size (``Σ_i λ_i |U_i|²``) stays close to this
        eraser's (within the factor ``ratio`` when given), while the directions are random
        (expected overlap with ``U`` about 1/band per direction; ``overlap`` measures it): the
        baseline a concept erasure is compared with."""
        if self.vecs is None:
            raise ValueError("this eraser has no stored whitening (made by hand?); fit it "
                             "with fit_leace")
        if band < 1 or (ratio is not None and not ratio >= 1):
            raise ValueError(f"need band >= 1 and ratio >= 1; got {band}, {ratio}")
        V, lam, A = self.vecs, self.eig, self.coords  # (d, m), (m,), (m, r)
        g = torch.Generator().manual_seed(int(seed))
        B = A.clone()
        for a, b in eigen_bands(lam, band, ratio):
            if b - a < 2:
                continue  # a band of one: nothing to rotate
            q, r = torch.linalg.qr(torch.randn(b - a, b - a, generator=g, dtype=torch.float64))
            sg = torch.diagonal(r).sign()
            q = q * torch.where(sg == 0, torch.ones_like(sg), sg)  # Haar-random rotation
            B[a:b] = q @ A[a:b]  # this band's coordinates, turned
        left = V @ (lam.sqrt().unsqueeze(1) * B)  # W⁺ U (d, r)
        right = (V @ (B / lam.sqrt().unsqueeze(1))).T  # Uᵀ W (r, d)
        return Eraser(self.mean, left, right, self.eig, self.vecs, B,
                      {**self.meta, "method": "random (variance-matched)", "seed": int(seed),
                       "band": band, "ratio": ratio})


def eigen_bands(lam: torch.Tensor, band: int, ratio: Optional[float] = None) -> list:
    """Half-open index ranges covering ``lam`` (ascending): consecutive runs of at most ``band``
    eigenvalues (with ``ratio``: whose largest is at most ``ratio`` times its smallest)."""
    out, a = [], 0
    for i in range(1, len(lam) + 1):
        if (i == len(lam) or i - a >= band
                or (ratio is not None and float(lam[i]) > ratio * float(lam[a]))):
            out.append((a, i))
            a = i
    return out


def _shrink(S: np.ndarray, X: np.ndarray, shrinkage: Shrinkage) -> tuple[np.ndarray, float]:
    if shrinkage is None or shrinkage == 0:
        return S, 0.0
    if shrinkage == "auto":
        from sklearn.covariance import ledoit_wolf_shrinkage
        s = float(ledoit_wolf_shrinkage(X, assume_centered=True))
    else:
        s = float(shrinkage)
        if not 0 <= s <= 1:
            raise ValueError(f"shrinkage must be None, 'auto' or in [0, 1]; got {shrinkage!r}")
    mu = np.trace(S) / len(S)
    return (1 - s) * S + s * mu * np.eye(len(S)), s


def fit_leace(X, y, shrinkage: Shrinkage = None, tol: float = 1e-8) -> Eraser:
    """LEACE eraser of the class labels ``y`` (N,) from ``X`` (N, d) (module doc).

    ``shrinkage``: None = the sample covariance, pseudo-inverted on the data's span (exact
    LEACE of the sample; with fewer rows than dimensions it edits only inside that span);
    a float s in [0, 1] = ``(1 - s) Σ + s tr(Σ)/d I``; 'auto' = Ledoit-Wolf's s. Erasure of the
    fitting data is exact either way (class means equal); shrinkage trades the smallest edit
    on the sample for an eraser that generalises to new rows."""
    X = _np(X).astype(np.float64)
    y = _np(y)
    if X.ndim != 2 or len(X) != len(y):
        raise ValueError(f"X must be (N, d) and y (N,); got {X.shape} and {y.shape}")
    classes, yi = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"need at least two classes to erase; labels are all {classes!r}")
    mu = X.mean(0)
    Xc = X - mu  # (N, d)
    Z = np.eye(len(classes))[yi]  # (N, k) one-hot
    Zc = Z - Z.mean(0)
    S, s = _shrink(Xc.T @ Xc / len(X), Xc, shrinkage)  # (d, d)
    Sxz = Xc.T @ Zc / len(X)  # (d, k)
    lam, V = np.linalg.eigh(S)  # ascending
    keep = lam > tol * max(lam.max(), 1e-300)
    lam, V = lam[keep], V[:, keep]  # (m,), (d, m)
    M = (V / np.sqrt(lam)) @ (V.T @ Sxz)  # W Σ_xz (d, k)
    u, sv, _ = np.linalg.svd(M, full_matrices=False)
    r = int((sv > tol * max(sv.max(), 1e-300) * 1e3).sum()) if sv.size else 0
    if r == 0:
        raise ValueError("the classes have identical means: nothing linear to erase")
    A = V.T @ u[:, :r]  # (m, r): U = V A (U lies in W's range)
    left = V @ (np.sqrt(lam)[:, None] * A)  # W⁺ U (d, r)
    right = (V @ (A / np.sqrt(lam)[:, None])).T  # Uᵀ W (r, d)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Eraser(t(mu), t(left), t(right), t(lam), t(V), t(A),
                  {"method": "leace", "shrinkage": s, "n": int(len(X)), "classes": len(classes)})


def orth_eraser(X, y) -> Eraser:
    """The plain orthogonal projection off the class-mean differences (span of ``Σ_xz``): it also
    equalises the class means, with a larger edit than LEACE (the reference it beats)."""
    X = _np(X).astype(np.float64)
    classes, yi = np.unique(_np(y), return_inverse=True)
    mu = X.mean(0)
    Zc = np.eye(len(classes))[yi]
    Zc = Zc - Zc.mean(0)
    u, sv, _ = np.linalg.svd((X - mu).T @ Zc / len(X), full_matrices=False)
    U = u[:, : int((sv > 1e-8 * max(sv.max(), 1e-300)).sum())]
    t = torch.from_numpy(np.ascontiguousarray(U))
    return Eraser(torch.from_numpy(mu), t, t.T.contiguous(), meta={"method": "orth"})


__all__ = ["Eraser", "fit_leace", "orth_eraser", "eigen_bands"]
