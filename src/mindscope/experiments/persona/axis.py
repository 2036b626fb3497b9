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
from .data import role_score

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
    gens = lm.generate(prompts, chat=True, max_new_tokens=max_new_tokens, temperature=temperature,
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


def check_balanced(keys: Sequence[str], questions: Sequence[str]) -> None:
    """Every role and the default assistant must answer the same questions: otherwise
    mean(default) - mean(roles) carries question content. Raises ValueError naming the first
    key whose question set differs from the default's."""
    by: dict[str, set] = {}
    for k, q in zip(keys, questions):
        by.setdefault(k, set()).add(q)
    if "default" not in by:
        raise ValueError("no default-assistant responses: the axis needs them")
    ref = by["default"]
    for k, qs in by.items():
        if qs != ref:
            raise ValueError(f"unequal question sets: {k!r} answers {len(qs)} question(s), the "
                             f"default assistant {len(ref)} (differ: {sorted(qs ^ ref)[:3]}); "
                             "every role and the default must answer the same questions")


def role_scores(resp: Responses, roles: dict, judge=None) -> list[Optional[int]]:
    """0-3 role score per row (None for default rows): ``judge`` (a ``judges.LogitJudge``, or
    an evals ``Judge`` asked whether the response is fully in role: yes -> 3, no -> 0), else
    the offline rule ``role_score``."""
    out: list[Optional[int]] = [None] * len(resp.texts)
    idx = [i for i, k in enumerate(resp.keys) if k != "default"]
    items = [{"role": resp.keys[i], "description": roles[resp.keys[i]], "question": resp.questions[i],
              "text": resp.texts[i]} for i in idx]
    if judge is None:
        vals = [role_score(it["text"], it["role"], it["description"]) for it in items]
    elif hasattr(judge, "digit"):
        from ..graders import role_question
        vals = judge.digit([role_question(it) for it in items])
    else:
        from ...evals import Rubric
        crit = ("Answer yes only if the response is fully in role: it speaks in the first person "
                "as {d}, fits that role, and never presents itself as an AI or assistant.")
        vals = [3 if judge.grade(it["question"], it["text"],
                                 Rubric(criteria=crit.format(d=it["description"]))).correct else 0
                for it in items]
    for i, v in zip(idx, vals):
        out[i] = int(v)
    return out


def keep_rows(resp: Responses, role_filter: str, scores: Optional[Sequence] = None,
              min_score: int = 3) -> list[int]:
    """Rows used for vectors: non-empty responses; unless ``role_filter='none'``, role responses
    with a role score below ``min_score`` are dropped (the paper keeps score 3). A role left
    with no response is dropped, never refilled with out-of-role responses."""
    rows = [i for i, t in enumerate(resp.texts) if t]
    if role_filter == "none":
        return rows
    if scores is None:
        raise ValueError("keep_rows needs role scores unless role_filter='none'")
    return [i for i in rows if resp.keys[i] == "default" or (scores[i] or 0) >= min_score]


def role_vectors(acts: torch.Tensor, keys: Sequence[str]) -> tuple[list[str], torch.Tensor]:
    """Mean over each key's rows: acts (n, L, d), keys (n,) -> names, (n_keys, L, d)."""
    names = list(dict.fromkeys(keys))
    karr = np.asarray(keys)
    return names, torch.stack([acts[torch.as_tensor(karr == k)].mean(0) for k in names])


def assistant_axis(default: torch.Tensor, roles: torch.Tensor) -> torch.Tensor:
    """mean(default responses) - mean(role vectors), per layer: (n_d, L, d), (n_r, L, d) -> (L, d)."""
    return default.mean(0) - roles.mean(0)


def balanced_axis(acts: torch.Tensor, keys: Sequence[str], questions: Sequence[str]) -> torch.Tensor:
    """The Assistant axis with question content cancelled: mean over questions q of
    [mean(default responses to q) - mean over roles of (role's mean response to q)], using the
    questions both sides kept. acts (n, L, d) -> (L, d). With every question kept on both sides
    and equal counts this equals ``assistant_axis`` of the role vectors.

    >>> a = torch.tensor([[[10.]], [[0.]], [[11.]], [[1.]], [[1.]]])  # q1, q2 offsets 10 / 0
    >>> balanced_axis(a, ["r", "r", "default", "default", "default"], ["q1", "q2", "q1", "q2", "q2"]).item()
    1.0
    """
    karr, qarr = np.asarray(keys), np.asarray(questions)
    diffs = []
    for q in dict.fromkeys(questions):
        dm = (karr == "default") & (qarr == q)
        role_means = [acts[torch.as_tensor((karr == k) & (qarr == q))].mean(0)
                      for k in dict.fromkeys(keys) if k != "default" and ((karr == k) & (qarr == q)).any()]
        if dm.any() and role_means:
            diffs.append(acts[torch.as_tensor(dm)].mean(0) - torch.stack(role_means).mean(0))
    if not diffs:
        raise ValueError("no question was answered by both the default assistant and a kept role")
    return torch.stack(diffs).mean(0)


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
