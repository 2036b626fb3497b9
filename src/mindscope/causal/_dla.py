"""Direct logit attribution: how much each layer's attention and MLP output (and each attention
head) writes directly onto a logit difference at the last position.

The residual entering the final norm is a sum of components,
``resid = embed + sum_L (attn_out.L + mlp_out.L)``. The final norm is not linear, so we
**freeze its scale** on the full residual (RMSNorm: ``1/rms(resid)``; LayerNorm: ``1/std(resid)``
plus mean-centering, which is linear) and apply that same linear map to every component. With
this convention the contributions add up *exactly* to the total logit difference (a LayerNorm /
lm_head bias is reported as the component ``"bias"``). Gemma's final logit soft-capping is not
linear and is left out: DLA explains the logits before soft-capping.

>>> # res = direct_logit_attribution(lm, ["When Mary and John ..., John gave a drink to"],
>>> #                                answers=(" Mary", " John"))
>>> # res.values.sum(-1) == res.total
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ._common import (answer_ids, freeze_final_norm, head_proj, head_weights, n_heads,
                      unembed, unembed_matrix)


@dataclass
class DLAResult:
    """Direct logit attribution of a batch of prompts at their last position."""

    components: list[str]
    """Component names: ``embed``, ``attn_out.0``, ``mlp_out.0``, ... (and ``bias``)."""
    values: torch.Tensor
    """(B, C) contribution of each component to the logit difference."""
    total: torch.Tensor
    """(B,) the logit difference itself (before soft-capping); equals ``values.sum(-1)``."""
    heads: Optional[torch.Tensor] = None
    """(B, L, H) per-head part of each ``attn_out.L`` (the output-projection bias excluded)."""
    head_bias: Optional[torch.Tensor] = None
    """(B, L) the attention output-projection bias part of ``attn_out.L`` (0 without a bias)."""

    def by_layer(self) -> dict[str, torch.Tensor]:
        """Mean over prompts: {'attn': (L,), 'mlp': (L,)} contributions per layer."""
        idx = {c: i for i, c in enumerate(self.components)}
        L = sum(c.startswith("attn_out.") for c in self.components)
        v = self.values.mean(0)
        return {"attn": torch.stack([v[idx[f"attn_out.{i}"]] for i in range(L)]),
                "mlp": torch.stack([v[idx[f"mlp_out.{i}"]] for i in range(L)])}

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` components (heads included when computed) with the largest |mean|."""
        items = list(zip(self.components, self.values.mean(0).tolist()))
        if self.heads is not None:
            hm = self.heads.mean(0)
            items += [(f"head.{L}.{h}", float(hm[L, h])) for L in range(hm.shape[0])
                      for h in range(hm.shape[1])]
        return sorted(items, key=lambda t: -abs(t[1]))[:k]


def direct_logit_attribution(lm, prompts, answers, heads: bool = True,
                             chat: bool = False) -> DLAResult:
    """Split ``logit[correct] - logit[wrong]`` at each prompt's last token into components.

    ``answers``: a (correct, wrong) pair of single-token strings/ids for every prompt, or one
    pair per prompt. ``heads``: also split attention outputs per head (families whose heads
    add up to attn_out, ``Family.heads_additive``; silently skipped for others)."""
    batch = lm.tokenize(prompts, chat=chat)
    B, L = len(batch), lm.n_layers
    ans = answer_ids(lm, answers, B)  # (B, 2)
    last = f"resid_post.{L - 1}"
    sites = ["embed"] + [f"{k}.{i}" for i in range(L) for k in ("attn_out", "mlp_out")] + [last]
    heads = heads and lm.family_spec.heads_additive
    z: dict[int, torch.Tensor] = {}
    handles = []
    if heads:
        def rec(layer):
            def hook(mod, args):
                z[layer] = args[0][:, -1].detach().float().cpu()  # (B, H*hd) at the last token
            return hook
        handles = [head_proj(lm, i).register_forward_pre_hook(rec(i)) for i in range(L)]
    try:
        cap = lm.capture(batch, sites=sites, positions="last", dtype=torch.float32)
    finally:
        for h in handles:
            h.remove()
    resid = cap[last]  # (B, d)
    norm = freeze_final_norm(lm, resid)
    W, b = unembed_matrix(lm)
    W = W.detach().float().cpu()
    u = W[ans[:, 0]] - W[ans[:, 1]]  # (B, d) logit-difference direction

    def contrib(c):  # (B, d) -> (B,)
        return (norm(c) * u).sum(-1)

    comps = sites[:-1]
    vals = [contrib(cap[s]) for s in comps]
    const = torch.zeros(B)
    if norm.bias is not None:
        const += (norm.bias.cpu() * u).sum(-1)
    if b is not None:
        bb = b.detach().float().cpu()
        const += bb[ans[:, 0]] - bb[ans[:, 1]]
    if norm.bias is not None or b is not None:
        comps = comps + ["bias"]
        vals.append(const)
    values = torch.stack(vals, 1)  # (B, C)
    logits = unembed(lm, resid).float().cpu()  # (B, V), before soft-capping
    total = logits.gather(1, ans[:, :1]).squeeze(1) - logits.gather(1, ans[:, 1:]).squeeze(1)
    hv = hb = None
    if heads:
        H = n_heads(lm)
        hv, hb = torch.zeros(B, L, H), torch.zeros(B, L)
        for i in range(L):
            Wo, bo = head_weights(lm, i)
            Wo = Wo.detach().float().cpu()  # (H, hd, d)
            zi = z[i].view(B, H, -1)  # (B, H, hd)
            out = torch.einsum("bhk,hkd->bhd", zi, Wo)  # (B, H, d)
            c = out - out.mean(-1, keepdim=True) if norm.center else out
            hv[:, i] = (c * norm.scale.unsqueeze(1) * norm.weight * u.unsqueeze(1)).sum(-1)
            if bo is not None:
                hb[:, i] = contrib(bo.detach().float().cpu().expand(B, -1))
    return DLAResult(comps, values, total, hv, hb)
