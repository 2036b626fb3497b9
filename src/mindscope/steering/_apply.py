"""Applying vectors: built on the core interventions (``Add``, ``Ablate``, ``Cap``, ``Splice``).

- ``steer``: add a vector at one or many sites, absolute or as a fraction of the mean residual
  norm at each site (``relative=True``, norms measured on calibration text).
- ``sae_clamp``: set SAE features to a multiple of their max activation, SAE error kept.
- ``ablate_direction``: remove a direction from the residual stream at every layer.
- ``cap``: floor/ceiling on the projection with thresholds from calibration percentiles.

>>> # ivs = steer(lm, v, sites="resid_post.10:16", scale=0.1, relative=True)
>>> # with lm.intervene(ivs): lm.generate(["Tell me a story"])
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import torch

from ..core import Ablate, Add, Cap, Splice
from ..core import Vector, VectorSet

log = logging.getLogger(__name__)

CALIBRATION_TEXTS = [
    "The history of the city goes back more than two thousand years, to a small fishing village.",
    "To make bread, mix flour, water, salt and yeast, then let the dough rest for an hour.",
    "She opened the letter slowly, unsure whether she wanted to know what it said.",
    "Photosynthesis converts light energy into chemical energy stored in glucose molecules.",
    "The committee will meet on Tuesday to discuss the budget for the next fiscal year.",
    "def mean(xs):\n    return sum(xs) / len(xs)  # average of a list of numbers",
    "After the storm passed, the children ran outside to look at the fallen branches.",
    "Prices rose sharply in the second quarter, driven mostly by energy and food costs.",
]


def _data(v) -> torch.Tensor:
    return v.data if isinstance(v, (Vector, VectorSet)) else torch.as_tensor(v)


def residual_norms(lm, sites, texts: Optional[Sequence[str]] = None, skip_first: int = 1,
                   batch_size: int = 16) -> dict[str, float]:
    """Mean L2 norm of the activation at each site over the tokens of calibration ``texts``
    (default: 8 built-in sentences). The first ``skip_first`` tokens of each row are left out:
    the first position's norm is ~60x a typical token's in SmolLM2 and would dominate."""
    names = lm.expand_sites(sites)
    texts = list(texts or CALIBRATION_TEXTS)
    cap = lm.capture(texts, sites=names, positions="all", dtype=torch.float32,
                     batch_size=batch_size)
    keep = cap.pos >= skip_first
    return {s: float(cap[s][keep].norm(dim=-1).mean()) for s in names}


def steer(lm, vector, sites=None, scale: Union[float, torch.Tensor] = 1.0, relative: bool = False,
          positions="all", calibration: Optional[Sequence[str]] = None,
          allow_other_model: bool = False) -> list[Add]:
    """``Add`` interventions for ``vector`` at each of ``sites`` (a pattern, list, or default
    the vector's own site; a VectorSet whose rows name their sites adds each row at its site).

    ``relative=False``: h <- h + scale * v (raw units). ``relative=True``: h <- h + scale *
    n_site * v/|v|, with n_site the mean residual norm at that site on ``calibration`` text, so
    ``scale=0.1`` adds a vector one tenth as long as a typical activation. ``scale`` may be a
    (B,) tensor (one strength per batch row) and ``vector`` may be (B, d) (one per row)."""
    if isinstance(vector, VectorSet) and sites is None:
        vector.check(lm, allow_other_model)
        pairs = [(s, vector.data[i]) for i, s in enumerate(vector.sites)]
        if any(not s for s, _ in pairs):
            raise ValueError("this VectorSet does not name a site per row; pass sites=")
    else:
        if isinstance(vector, Vector):
            sites = sites or vector.site
            if not sites:
                raise ValueError("the vector records no site; pass sites='resid_post.L'")
            vector.check(lm, sites, allow_other_model)
        elif sites is None:
            raise ValueError("pass sites= for a raw tensor")
        data = _data(vector)
        if data.shape[-1] != lm.d_model:
            raise ValueError(f"vector has dimension {data.shape[-1]} but {lm.name} has d_model "
                             f"{lm.d_model}: it was made for another model")
        if isinstance(vector, VectorSet):
            data = data.mean(0) if len(vector) > 1 else data[0]
        pairs = [(s, data) for s in lm.expand_sites(sites)]
    norms = residual_norms(lm, [s for s, _ in pairs], calibration) if relative else {}
    out = []
    for s, v in pairs:
        v = v.float()
        if relative:
            vn = v.norm(dim=-1, keepdim=v.dim() == 2).clamp(min=1e-12)
            v = v / vn * norms[s]
        out.append(Add(s, v, scale=scale, positions=positions))
    return out


def per_row(vectors: Sequence, scales: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack trials for one batched call: (B, d) vectors and (B,) scales for ``Add``."""
    if len(vectors) != len(scales):
        raise ValueError(f"{len(vectors)} vectors but {len(scales)} scales")
    return (torch.stack([_data(v).float() for v in vectors]),
            torch.as_tensor(list(scales), dtype=torch.float32))


# ---- SAE features -----------------------------------------------------------------------

def feature_max_activations(lm, sae, site: str, texts: Sequence[str], skip_first: int = 1,
                            batch_size: int = 16) -> torch.Tensor:
    """Max activation of every SAE latent over the tokens of ``texts`` -> (n_latents,)."""
    cap = lm.capture(list(texts), sites=[site], positions="all", dtype=torch.float32,
                     batch_size=batch_size)
    h = cap[site][cap.pos >= skip_first]
    with torch.no_grad():
        f = torch.cat([sae.encode(h[i:i + 4096].to(_sae_dtype(sae))).float()
                       for i in range(0, len(h), 4096)])
    return f.max(0).values


def _sae_dtype(sae) -> torch.dtype:
    w = getattr(sae, "W_dec", None)
    return w.dtype if isinstance(w, torch.Tensor) else torch.float32


def sae_clamp(site: str, sae, features: Union[int, Sequence[int]], multiple: float = 10.0,
              max_acts: Optional[torch.Tensor] = None, value: Optional[float] = None,
              positions="all") -> Splice:
    """Scaling-Monosemanticity feature steering: f_i <- c at every selected position, keeping
    the SAE error term, so h <- h + (c - f_i(h)) W_dec[i] for a linear decoder.
    c = ``value`` if given, else ``multiple * max_acts[i]`` (negative multiples suppress)."""
    feats = [features] if isinstance(features, int) else list(features)
    if value is None:
        if max_acts is None:
            raise ValueError("sae_clamp needs value= or max_acts= (see feature_max_activations)")
        vals = torch.stack([multiple * torch.as_tensor(max_acts)[i].float() for i in feats])
    else:
        vals = torch.full((len(feats),), float(value))
    idx = torch.tensor(feats)
    n = sae.W_dec.shape[0] if isinstance(getattr(sae, "W_dec", None), torch.Tensor) else None
    if n is not None and int(idx.max()) >= n:
        raise ValueError(f"feature {int(idx.max())} out of range: the SAE has {n} latents")

    def edit(f: torch.Tensor) -> torch.Tensor:  # (n, m)
        f = f.clone()
        f[:, idx.to(f.device)] = vals.to(f.device, f.dtype)
        return f

    return Splice(site, sae, edit=edit, positions=positions)


# ---- ablation and capping ---------------------------------------------------------------

def ablate_direction(lm, direction, positions="all") -> list[Ablate]:
    """Remove ``direction`` from the residual stream everywhere: at the embedding and at every
    attention and MLP output (the writers), so no layer ever reads it. This is what
    ``bake_ablation`` does to the weights."""
    d = _data(direction).float()
    if d.shape[-1] != lm.d_model:
        raise ValueError(f"direction has dimension {d.shape[-1]} but {lm.name} has d_model "
                         f"{lm.d_model}")
    sites = ["embed"] + [f"{k}.{i}" for i in range(lm.n_layers) for k in ("attn_out", "mlp_out")]
    return [Ablate(s, d, positions=positions) for s in sites]


def projections(lm, direction, sites, texts: Sequence[str], skip_first: int = 1,
                batch_size: int = 16) -> dict[str, torch.Tensor]:
    """<h, u> (u = unit direction) at every token of ``texts`` -> {site: (N,)}."""
    u = _data(direction).float()
    u = u / u.norm()
    names = lm.expand_sites(sites)
    cap = lm.capture(list(texts), sites=names, positions="all", dtype=torch.float32,
                     batch_size=batch_size)
    keep = cap.pos >= skip_first
    return {s: cap[s][keep] @ u for s in names}


def cap_thresholds(lm, direction, sites, texts: Sequence[str], percentile: float = 25.0,
                   skip_first: int = 1) -> dict[str, float]:
    """The ``percentile`` of projections on ``direction`` per site over calibration ``texts``
    (the Assistant-axis floor uses the 25th percentile of default-assistant projections)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100]; got {percentile}")
    proj = projections(lm, direction, sites, texts, skip_first)
    return {s: float(torch.quantile(p, percentile / 100.0)) for s, p in proj.items()}


def cap(lm, direction, sites, texts: Sequence[str], floor_percentile: Optional[float] = 25.0,
        ceiling_percentile: Optional[float] = None, positions="all",
        skip_first: int = 1) -> list[Cap]:
    """Activation capping over a layer range (e.g. ``'resid_post.18:25'``): at each site keep
    <h, u> >= the floor percentile (and <= the ceiling percentile) of calibration projections."""
    if floor_percentile is None and ceiling_percentile is None:
        raise ValueError("cap needs floor_percentile, ceiling_percentile or both")
    proj = projections(lm, direction, sites, texts, skip_first)
    d = _data(direction).float()
    out = []
    for s, p in proj.items():
        lo = float(torch.quantile(p, floor_percentile / 100)) if floor_percentile is not None else None
        hi = (float(torch.quantile(p, ceiling_percentile / 100))
              if ceiling_percentile is not None else None)
        out.append(Cap(s, d, min=lo, max=hi, positions=positions))
    return out
