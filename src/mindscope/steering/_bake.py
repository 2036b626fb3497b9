"""Baking an intervention into the weights, where the math allows it exactly.

- Ablation (``bake_ablation``): the residual stream is a sum of writes (embeddings, every
  attention output projection, every MLP down projection). Orthogonalising each writing matrix
  against u (W <- W - u u^T W; bias too) removes u from every write, which equals hooked
  ``ablate_direction`` (ablation at ``embed``, ``attn_out.*``, ``mlp_out.*``).
- Constant addition (``bake_addition``): h <- h + c v at ``resid_post.L`` equals a bias c v on
  the MLP down projection of block L (added if the layer has no bias); at ``attn_out``/``resid_mid``
  a bias on the attention output projection; at ``embed``/``resid_pre.0`` c v added to every
  token embedding row.

Not possible exactly for sandwich-norm families (Gemma 2/3, OLMo 2): there an RMSNorm sits
between the writing matrix and the residual, and a norm's output cannot be given a fixed
direction-free subspace or a constant offset through its weight. Use the hooks there.
Tied input/output embeddings are untied first, so the unembedding stays unchanged.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch

from ..core import FAMILIES, LM, Family

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Writers:
    embeds: tuple
    """Embedding modules whose rows are written to the residual stream (token, position)."""
    attn: str
    """Linear inside a block whose output is added to the residual after attention."""
    mlp: str
    """Linear inside a block whose output is added to the residual after the MLP."""
    conv1d: bool = False
    """GPT-2 style Conv1D: weight stored (in, out)."""

    @classmethod
    def of(cls, fam: Family) -> "Writers":
        return cls(fam.embeds, fam.o_proj, fam.mlp_down, fam.conv1d)


WRITERS = {name: Writers.of(f) for name, f in FAMILIES.items() if f.no_bake is None}
"""Families whose residual writes can be baked (read from the core family table)."""


def _writers(lm) -> Writers:
    fam = lm.family_spec
    if fam.no_bake is not None:
        raise NotImplementedError(
            f"cannot bake into a {lm.family} model ({fam.no_bake}): the residual write passes "
            "through something after the writing matrix, so no weight edit equals the hooked "
            "intervention. Apply it with hooks (lm.intervene) instead.")
    return _validated(lm, Writers.of(fam))


def _validated(lm, w: Writers) -> Writers:
    for p in w.embeds:
        lm.module(p)
    lm.block_part(0, w.attn)
    lm.block_part(0, w.mlp)
    return w


def _copy(lm, inplace: bool) -> LM:
    if inplace:
        return lm
    return LM(copy.deepcopy(lm.model), lm.tokenizer, lm.name)


def _untie(lm, embed: torch.nn.Module) -> None:
    head = lm.model.get_output_embeddings()
    if getattr(head, "weight", None) is not None and head.weight is embed.weight:
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=False)
        lm.model.config.tie_word_embeddings = False
        log.info("untied the input and output embeddings before editing the embedding")


def _basis(direction, d: int) -> torch.Tensor:
    x = getattr(direction, "data", direction)
    x = torch.as_tensor(x).double()
    x = x.unsqueeze(0) if x.dim() == 1 else x
    if x.shape[-1] != d:
        raise ValueError(f"direction has dimension {x.shape[-1]} but the model has d_model {d}")
    q, _ = torch.linalg.qr(x.T)  # (d, k) orthonormal
    return q


@torch.no_grad()
def bake_ablation(lm, direction, inplace: bool = False) -> LM:
    """A model whose weights never write ``direction`` (d,) or a subspace (k, d) into the
    residual stream. Equals ``lm.intervene(*ablate_direction(lm, direction))`` up to float error.
    Returns a new ``LM`` (a deep copy) unless ``inplace``."""
    w = _writers(lm)
    out = _copy(lm, inplace)
    q = _basis(direction, lm.d_model)  # (d, k)

    def on(t):  # the basis on the weight's device (a sharded model spans several)
        return q if q.device == t.device else q.to(t.device)

    def orth_rows(t):  # rows are d-vectors: t (n, d)
        qd = on(t)
        t.copy_((t.double() - (t.double() @ qd) @ qd.T).to(t.dtype))

    def orth_out(t):  # outputs along dim 0: t (d, n) or bias (d,)
        qd = on(t)
        t.copy_((t.double() - qd @ (qd.T @ t.double())).to(t.dtype))

    for p in w.embeds:
        m = out.module(p)
        _untie(out, m)
        orth_rows(m.weight)
    for i in range(out.n_layers):
        for path in (w.attn, w.mlp):
            lin = out.block_part(i, path)
            (orth_rows if w.conv1d else orth_out)(lin.weight)
            if getattr(lin, "bias", None) is not None:
                orth_out(lin.bias)
    return out


def _target(lm, site: str) -> tuple[str, int | None]:
    kind, L = lm.parse_site(site)
    if kind == "resid_pre":
        return ("embed", None) if L == 0 else ("mlp", L - 1)
    if kind in ("resid_post", "mlp_out"):
        return "mlp", L
    if kind in ("resid_mid", "attn_out"):
        return "attn", L
    if kind == "embed":
        return "embed", None
    raise ValueError(f"cannot bake an addition at {site}: the final norm's output has no "
                     "writer to carry a bias")


@torch.no_grad()
def bake_addition(lm, vector, site: str, scale: float = 1.0, inplace: bool = False) -> LM:
    """A model with h <- h + scale * v built in at ``site`` at every position, as a bias on the
    writer that produces that site (see the module docstring). Equals
    ``lm.intervene(Add(site, v, scale))`` on real tokens up to float error."""
    w = _writers(lm)
    v = torch.as_tensor(getattr(vector, "data", vector)).double() * float(scale)
    if v.dim() != 1 or v.shape[0] != lm.d_model:
        raise ValueError(f"vector must be (d_model,) = ({lm.d_model},); got {tuple(v.shape)}")
    out = _copy(lm, inplace)
    kind, L = _target(out, site)
    if kind == "embed":
        m = out.module(w.embeds[0])
        _untie(out, m)
        m.weight.add_(v.to(m.weight.device, m.weight.dtype))
        return out
    lin = out.block_part(L, w.attn if kind == "attn" else w.mlp)
    if getattr(lin, "bias", None) is None:
        lin.bias = torch.nn.Parameter(v.to(lin.weight.device, lin.weight.dtype).clone(),
                                      requires_grad=False)
    else:
        lin.bias.add_(v.to(lin.bias.device, lin.bias.dtype))
    return out
