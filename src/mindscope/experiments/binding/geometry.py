"""Slot geometry with honest baselines: are the current- and prior-entity probe subspaces more
orthogonal than two probes fitted on the same activations with no relation to the labels?

Both probes are fitted on standardised features (divided by the per-dimension sd) and mapped
back to raw space, so an isotropic random-subspace baseline (``random_overlap``) is the wrong
null: the residual stream is far from isotropic and the 1/sd scaling shapes every probe. The
null here is covariance-matched: the same probe fitted twice on the same rows with labels
permuted (``shuffled_overlap``), whose subspaces carry exactly the activation covariance and the
scaling and nothing else. ``bootstrap_geometry`` resamples STORIES (the unit of independence)
with replacement, refits both probes and gives percentile intervals for the overlap and the
smallest principal angle.

>>> import numpy as np
>>> rng = np.random.default_rng(0); X = rng.normal(size=(200, 6))
>>> b = shuffled_overlap(X, rng.integers(0, 3, 200), rng.integers(0, 3, 200), n=2, seed=0)
>>> 0.0 <= b["mean"] <= 1.0
True
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ...probes import fit_probe, orthonormal_basis, principal_angles, subspace_overlap


def probe_basis(X, y, kind: str = "ridge", C: float = 0.01, rank: Optional[int] = None
                ) -> torch.Tensor:
    """Orthonormal basis (r, d) of the subspace a probe fitted on (X, y) reads (raw space)."""
    p = fit_probe(X, y, kind=kind, C=C)
    center = p.kind in ("multinomial", "ridge") and p.weight.shape[0] > 2
    return orthonormal_basis(p.weight, center=center, rank=rank)


def shuffled_overlap(X, y_a, y_b, kind: str = "ridge", C: float = 0.01, n: int = 5,
                     seed: int = 0) -> dict:
    """Covariance-matched null: mean and sd over ``n`` draws of the subspace overlap (mean cos²
    of the principal angles) between two probes fitted on ``X`` with independently permuted
    labels."""
    rng = np.random.default_rng(seed)
    y_a, y_b = np.asarray(y_a), np.asarray(y_b)
    vals, mins = [], []
    for _ in range(n):
        A = probe_basis(X, rng.permutation(y_a), kind, C)
        B = probe_basis(X, rng.permutation(y_b), kind, C)
        vals.append(subspace_overlap(A, B))
        mins.append(float(principal_angles(A, B, degrees=True)[0]))
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if n > 1 else 0.0,
            "min_angle_deg_mean": float(np.mean(mins)), "n": n,
            "kind": "probes on permuted labels (covariance-matched)"}


def bootstrap_geometry(X, y_a, y_b, groups, kind: str = "ridge", C: float = 0.01,
                       n_boot: int = 20, seed: int = 0) -> dict:
    """Percentile 95% intervals of the overlap and the smallest principal angle between the two
    probes' subspaces, resampling groups (stories) with replacement and refitting."""
    rng = np.random.default_rng(seed)
    X, y_a, y_b, groups = np.asarray(X), np.asarray(y_a), np.asarray(y_b), np.asarray(groups)
    ug = np.unique(groups)
    rows = {g: np.where(groups == g)[0] for g in ug}
    ov, mn = [], []
    for _ in range(n_boot):
        idx = np.concatenate([rows[g] for g in rng.choice(ug, len(ug), replace=True)])
        if len(np.unique(y_a[idx])) < 2 or len(np.unique(y_b[idx])) < 2:
            continue
        A = probe_basis(X[idx], y_a[idx], kind, C)
        B = probe_basis(X[idx], y_b[idx], kind, C)
        ov.append(subspace_overlap(A, B))
        mn.append(float(principal_angles(A, B, degrees=True)[0]))
    if not ov:
        return {"n_boot": 0}
    return {"n_boot": len(ov), "overlap_ci": [float(np.percentile(ov, 2.5)), float(np.percentile(ov, 97.5))],
            "min_angle_deg_ci": [float(np.percentile(mn, 2.5)), float(np.percentile(mn, 97.5))],
            "unit": "stories"}
