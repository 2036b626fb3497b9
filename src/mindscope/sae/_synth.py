"""Synthetic ground truth for SAEs: activations built from a known dictionary, and metrics of a
trained SAE against it (in the spirit of SynthSAEBench).

A row is ``x = sum_i a_i D_i + noise`` with D (F, d) random unit directions. Which features fire:
* free features (all but the children) fire with power-law base rates p_i ~ (i+1)^-alpha, scaled
  so the expected L0 equals ``l0``; within each of ``corr_groups`` groups firing is correlated
  through a Gaussian copula with correlation ``corr``;
* hierarchy: each of the first ``n_parents`` features (the most frequent) has
  ``children_per_parent`` children; when the parent fires, one of its children (uniform) fires
  too with probability ``child_prob``; a child never fires without its parent (the setting
  that invites feature absorption).
Magnitudes a_i = |N(mag_mean, mag_std)|.

>>> data = SynthData(SynthConfig(d=16, n_features=48, l0=4, n_parents=4, seed=0))
>>> x, acts = data.sample(2000)
>>> x.shape, acts.shape, 3 < float((acts > 0).sum(1).float().mean()) < 5
(torch.Size([2000, 16]), torch.Size([2000, 48]), True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class SynthConfig:
    d: int = 64
    """Width of the activations."""
    n_features: int = 256
    """True features F (the dictionary; F > d makes it overcomplete)."""
    l0: float = 8.0
    """Expected number of active features per row."""
    alpha: float = 1.0
    """Power-law exponent of the free features' firing rates."""
    n_parents: int = 16
    """Hierarchical parents (features 0..n_parents-1)."""
    children_per_parent: int = 3
    """Children per parent (the features right after the parents)."""
    child_prob: float = 0.5
    """P(one child fires | its parent fires)."""
    corr_groups: int = 16
    """Free features are split into this many groups of correlated firing."""
    corr: float = 0.3
    """Gaussian-copula correlation of firing within a group."""
    mag_mean: float = 1.0
    """Mean magnitude of an active feature."""
    mag_std: float = 0.25
    """Std of the magnitude."""
    noise: float = 0.01
    """Std of isotropic Gaussian noise added to every coordinate."""
    seed: int = 0
    """Seed of the dictionary and the rates (sampling takes its own generator)."""

    def __post_init__(self):
        n_child = self.n_parents * self.children_per_parent
        if self.d <= 0 or self.n_features <= n_child + self.n_parents:
            raise ValueError(f"SynthConfig: need d > 0 and n_features > parents + children "
                             f"({self.n_parents + n_child}), got d={self.d}, n_features={self.n_features}")
        if not 0 < self.l0 < self.n_features - n_child:
            raise ValueError(f"SynthConfig.l0={self.l0} must be in (0, free features)")
        for f in ("child_prob", "corr"):
            if not 0 <= getattr(self, f) < 1:
                raise ValueError(f"SynthConfig.{f} must be in [0, 1)")
        if self.corr_groups < 1:
            raise ValueError("SynthConfig.corr_groups must be >= 1")


class SynthData:
    """The generator: ``D`` (F, d) unit rows, ``p`` (F,) marginal firing rates, ``parent`` (F,)
    index of each child's parent (-1 for free features)."""

    def __init__(self, cfg: SynthConfig):
        self.cfg = c = cfg
        g = torch.Generator().manual_seed(c.seed)
        F, P, C = c.n_features, c.n_parents, c.children_per_parent
        D = torch.randn(F, c.d, generator=g)
        self.D = D / D.norm(dim=1, keepdim=True)                                 # (F, d)
        self.parent = torch.full((F,), -1, dtype=torch.long)
        self.children = torch.arange(P, P + P * C).reshape(P, C) if P else torch.zeros(0, C, dtype=torch.long)
        for p in range(P):
            self.parent[self.children[p]] = p
        free = (self.parent < 0).nonzero().squeeze(1)                             # parents first
        base = (torch.arange(len(free), dtype=torch.float64) + 1) ** -c.alpha
        child_mass = lambda s: float((base[:P] * s).clamp(max=1).sum()) * c.child_prob
        lo, hi = 0.0, 1.0 / float(base.min())
        for _ in range(100):                       # rate scale so that E[L0] = l0 (bisection)
            mid = (lo + hi) / 2
            tot = float((base * mid).clamp(max=1).sum()) + child_mass(mid)
            lo, hi = (mid, hi) if tot < c.l0 else (lo, mid)
        self.free = free
        self.p_free = (base * lo).clamp(max=1).float()                            # (n_free,)
        self.group = torch.arange(len(free)) % c.corr_groups
        self.p = torch.zeros(F)
        self.p[free] = self.p_free
        if P:
            self.p[self.children.reshape(-1)] = (self.p[:P, None] * c.child_prob / C).expand(P, C).reshape(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> tuple:
        """(x (n, d), acts (n, F)): activations and the true feature magnitudes."""
        c = self.cfg
        g = generator or torch.Generator().manual_seed(c.seed + 1)
        nf = len(self.free)
        shared = torch.randn(n, c.corr_groups, generator=g)[:, self.group]        # (n, nf)
        z = math.sqrt(c.corr) * shared + math.sqrt(1 - c.corr) * torch.randn(n, nf, generator=g)
        u = 0.5 * (1 + torch.erf(z / math.sqrt(2)))                               # uniform marginals
        on = torch.zeros(n, c.n_features, dtype=torch.bool)
        on[:, self.free] = u < self.p_free
        P, C = c.n_parents, c.children_per_parent
        if P:
            pick = torch.randint(0, C, (n, P), generator=g)
            fire = on[:, :P] & (torch.rand(n, P, generator=g) < c.child_prob)
            child = self.children[torch.arange(P)[None, :].expand(n, P), pick]    # (n, P)
            on.scatter_(1, child, fire)
        mag = (c.mag_mean + c.mag_std * torch.randn(n, c.n_features, generator=g)).abs()
        acts = mag * on                                                           # (n, F)
        x = acts @ self.D + c.noise * torch.randn(n, c.d, generator=g)           # (n, d)
        return x, acts


@torch.no_grad()
def synth_scores(codes: torch.Tensor, W_dec: torch.Tensor, data: SynthData,
                 acts: torch.Tensor, x: Optional[torch.Tensor] = None,
                 x_hat: Optional[torch.Tensor] = None) -> dict:
    """Scores of SAE codes (n, L) and raw-unit decoder rows (L, d) against the truth.

    * ``mcc``: mean cosine of decoder rows to true directions under the optimal one-to-one
      matching (Hungarian); ``recovered``: fraction of features matched with cosine > 0.9;
    * per matched feature: ``precision`` P(true on | latent on), ``recall`` P(latent on | true
      on), ``f1`` (means over features with support);
    * ``shrinkage``: least-squares slope of the latent's contribution along the true direction
      (f_j W_dec,j . D_i) on the true magnitude a_i, over rows where both fire (1 = none);
    * ``absorption``: over parent/child rows (both true features on), the fraction where the
      child's latent fires and the parent's latent does not (the parent was absorbed);
    * ``hedging``: mean |cos| of each parent's latent with its children's directions minus its
      mean |cos| with unrelated free features (0 = no leaning toward the children);
    * ``dead``: fraction of latents that never fire; ``l0``, ``fvu`` if x, x_hat given."""
    from scipy.optimize import linear_sum_assignment

    Wn = W_dec / W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    cos = (Wn @ data.D.T).double()                                               # (L, F)
    rows, cols = linear_sum_assignment(-cos.numpy())
    match = torch.full((data.cfg.n_features,), -1, dtype=torch.long)
    match[torch.as_tensor(cols)] = torch.as_tensor(rows)
    mcos = cos[match.clamp(min=0), torch.arange(len(match))] * (match >= 0)
    on_t, on_l = acts > 0, codes[:, match.clamp(min=0)] != 0                     # (n, F) each
    both = (on_t & on_l).sum(0).double()
    prec = both / on_l.sum(0).double().clamp_min(1)
    rec = both / on_t.sum(0).double().clamp_min(1)
    sup = (on_t.sum(0) > 0) & (match >= 0)
    f1 = 2 * prec * rec / (prec + rec).clamp_min(1e-12)
    contrib = codes[:, match.clamp(min=0)].double() * (W_dec[match.clamp(min=0)].double() * data.D.double()).sum(1)
    co = (on_t & on_l).double()
    num, den = (contrib * acts.double() * co).sum(0), (acts.double() ** 2 * co).sum(0)
    shrink = num / den.clamp_min(1e-12)
    has_co = co.sum(0) > 0
    absorbed = total = 0
    for p in range(data.cfg.n_parents):
        for ch in data.children[p].tolist():
            rows_pc = on_t[:, p] & on_t[:, ch]
            total += int(rows_pc.sum())
            absorbed += int((rows_pc & on_l[:, ch] & ~on_l[:, p]).sum())
    # hedging: the parent's latent leaning toward its children's directions, above its lean
    # toward unrelated features (superposition baseline)
    hedge = []
    free_other = data.free[data.free >= data.cfg.n_parents]
    for p in range(data.cfg.n_parents):
        j = int(match[p])
        if j < 0:
            continue
        ch = cos[j, data.children[p]].abs().mean()
        hedge.append(float(ch - cos[j, free_other].abs().mean()))
    out = {"mcc": float(mcos.mean()), "recovered": float((mcos > 0.9).double().mean()),
           "precision": float(prec[sup].mean()), "recall": float(rec[sup].mean()),
           "f1": float(f1[sup].mean()), "shrinkage": float(shrink[has_co].mean()) if bool(has_co.any()) else float("nan"),
           "absorption": absorbed / total if total else float("nan"),
           "hedging": sum(hedge) / len(hedge) if hedge else float("nan"),
           "dead": float(((codes != 0).sum(0) == 0).double().mean()),
           "l0": float((codes != 0).sum(1).double().mean())}
    if x is not None and x_hat is not None:
        xd = x.double()
        out["fvu"] = float((xd - x_hat.double()).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum())
    return out


def synth_eval(sae, data: SynthData, n: int = 20_000, seed: int = 12345) -> dict:
    """``synth_scores`` of an SAE on ``n`` fresh rows (its own encode / decode)."""
    x, acts = data.sample(n, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        f = sae.encode(x)
        x_hat = sae.decode(f)
        W_raw = sae.W_dec.detach() / sae.cfg.scale_out                           # raw units
    return synth_scores(f, W_raw, data, acts, x, x_hat)


