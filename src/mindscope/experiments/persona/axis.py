"""Role vectors, persona space and the Assistant axis.

Responses are generated for every (system prompt, question) in one batched ``generate`` call;
each prompt + response is re-fed once and ``resid_post.*`` is averaged over the assistant tokens
(``ms.role("assistant")``), giving (n_responses, n_layers, d). A role vector is the mean over its
kept responses; the Assistant axis at each layer is mean(default responses) - mean(role vectors).

>>> import torch
>>> roles = torch.tensor([[[1.0, 0.0]], [[3.0, 0.0]]])      # (n_roles=2, L=1, d=2)
>>> default = torch.tensor([[[2.0, 2.0]]])                   # (n_default=1, L=1, d=2)
>>> assistant_axis(default, roles).tolist()
[[0.0, 2.0]]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

import mindscope as ms

from ...core import VectorSet, pca
from ...steering import row_means
from .data import identity

log = logging.getLogger(__name__)


@dataclass
class Responses:
    """Generated responses: one row per (key, system prompt, question)."""

    keys: list[str]
    """Role name per row (``default`` for the default assistant)."""
    systems: list[Optional[str]]
    questions: list[str]
    texts: list[str]

    def convs(self, lm, rows: Optional[Sequence[int]] = None):
        rows = range(len(self.texts)) if rows is None else rows
        return [lm.chat([{"role": "user", "content": self.questions[i]},
                         {"role": "assistant", "content": self.texts[i]}],
                        system=self.systems[i], add_generation_prompt=False) for i in rows]


def generate_responses(lm, jobs: Sequence[tuple[str, Optional[str], str]], max_new_tokens: int,
                       temperature: float, seed: int, batch_size: int,
                       interventions=()) -> Responses:
    """``jobs`` = [(key, system prompt or None, question)] -> Responses (one batched call)."""
    prompts = [lm.chat([{"role": "user", "content": q}], system=s) for _, s, q in jobs]
    gens = lm.generate(prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed, batch_size=batch_size, interventions=interventions)
    return Responses([k for k, _, _ in jobs], [s for _, s, _ in jobs], [q for _, _, q in jobs],
                     [g.text.strip() for g in gens])


def response_acts(lm, resp: Responses, rows: Sequence[int], sites: Sequence[str],
                  batch_size: int = 16, chunk: int = 64) -> torch.Tensor:
    """Mean activation over each response's assistant tokens at every site -> (n, L, d)."""
    out = []
    rows = list(rows)
    for a in range(0, len(rows), chunk):
        convs = resp.convs(lm, rows[a:a + chunk])
        m = row_means(lm, convs, list(sites), ms.role("assistant"), False, 0, batch_size)
        out.append(torch.stack([m[s] for s in sites], 1))  # (c, L, d)
    return torch.cat(out)


def keep_rows(resp: Responses, role_filter: str) -> list[int]:
    """Rows used for vectors: non-empty responses; with ``role_filter='rule'`` role responses the
    identity judge calls ``assistant`` are dropped (a role keeps all if none would be left)."""
    rows = [i for i, t in enumerate(resp.texts) if t]
    if role_filter == "none":
        return rows
    kept = []
    for key in dict.fromkeys(resp.keys[i] for i in rows):
        mine = [i for i in rows if resp.keys[i] == key]
        good = mine if key == "default" else [i for i in mine if identity(resp.texts[i]) != "assistant"]
        if not good:
            log.info("role %r: every response reads as the assistant; keeping them all", key)
            good = mine
        kept += good
    return sorted(kept)


def role_vectors(acts: torch.Tensor, keys: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Mean over each key's rows: acts (n, L, d), keys (n,) -> names, (n_keys, L, d)."""
    names = list(dict.fromkeys(keys))
    karr = np.asarray(keys)
    return names, torch.stack([acts[torch.as_tensor(karr == k)].mean(0) for k in names])


def assistant_axis(default: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """mean(default responses) - mean(role vectors), per layer: (n_d, L, d), (n_r, L, d) -> (L, d)."""
    return default.mean(0) - roles.mean(0)


def persona_space(roles: torch.Tensor, axis: torch.Tensor, role_names: Sequence[str],
                  layer_index: int, default_mean: Optional[torch.Tensor] = None,
                  n_pcs: int = 5) -> dict:
    """Per layer: PCA of the role vectors (explained variance) and |cos(PC1, axis)|; at
    ``layer_index``: role loadings on PC1/PC2 (PC1 signed so the default assistant is positive)."""
    L = roles.shape[1]
    cos, evr = [], []
    for li in range(L):
        p = pca(roles[:, li], min(n_pcs, roles.shape[0] - 1))
        a = axis[li] / axis[li].norm().clamp(min=1e-12)
        cos.append(float((p.components[0] @ a).abs()))
        evr.append(p.explained_variance_ratio.tolist())
    p = pca(roles[:, layer_index], min(n_pcs, roles.shape[0] - 1))
    sc = p.transform(roles[:, layer_index])  # (n_roles, n)
    sign = 1.0
    if default_mean is not None:
        d = p.transform(default_mean[layer_index][None])[0]
        sign = 1.0 if float(d[0]) >= 0 else -1.0
        d0 = float(d[0]) * sign
    else:
        d0 = None
    load = [{"role": n, "pc1": float(sc[i, 0]) * sign,
             "pc2": float(sc[i, 1]) if sc.shape[1] > 1 else 0.0} for i, n in enumerate(role_names)]
    return {"cos_pc1_axis": cos, "explained_variance_ratio": evr, "loadings": load,
            "default_pc1": d0, "layer_index": layer_index}


def axis_vectorset(lm, axis: torch.Tensor, sites: Sequence[str], meta: dict) -> VectorSet:
    """The axis at every layer as a VectorSet (rows named and sited by layer), raw units."""
    return VectorSet(axis, names=list(sites), sites=list(sites), model=lm.name,
                     method="assistant_axis", meta=meta)


def token_thresholds(lm, resp: Responses, rows: Sequence[int], axis: torch.Tensor,
                     layers: Sequence[int], percentile: float = 25.0,
                     batch_size: int = 16) -> dict[int, float]:
    """The ``percentile`` of per-token projections (unit axis) over the assistant tokens of the
    default responses, per layer: the capping floor tau."""
    sites = [f"resid_post.{L}" for L in layers]
    cap = lm.capture(resp.convs(lm, rows), sites=sites, positions=ms.role("assistant"),
                     dtype=torch.float32, batch_size=batch_size)
    out = {}
    for L, s in zip(layers, sites):
        u = axis[L] / axis[L].norm()
        out[L] = float(torch.quantile(cap[s] @ u, percentile / 100.0))
    return out
