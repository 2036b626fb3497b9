"""The local replacement model of one prompt, as an explicit linear map of the residual stream.

One forward of the real model records, per layer, the attention patterns A_l (H, T, T), the
RMSNorm scales r = 1/rms(x) at both norms, the MLP inputs and outputs, and the final norm scale.
With those frozen, and each MLP replaced by (transcoder features + error: constants, + the skip
term: linear), every block is linear in the residual stream h (T, d):

    n1  = h * (w1 r1)                                    frozen input norm
    att = sum_s A[h, t, s] (n1_s Wv_h^T) Wo_h^T          frozen pattern (biases are constants)
    mid = h + att
    x   = mid * (w2 r2)                                  mlp_in, frozen post-attention norm
    out = x S^T + c                                      skip S (or 0); c = features+bias+error
    h'  = mid + out

``backward`` runs the transposed map for a batch of cotangents in one sweep from the top layer
down, injecting each target where it reads (a feature's encoder row at its mlp_in, a logit's
de-meaned unembedding row after the final norm) and reading the gradient at every mlp_out and at
the embeddings: the direct effects of all sources on a batch of targets, in one pass.

>>> # lin = capture(lm, tc, ids); g = lin.backward(targets)  # per-layer gradients at mlp_out
"""
from __future__ import annotations

from dataclasses import dataclass
import torch

from ..core import BadInputError
from ._splice import check_transcoders, mlp_module

_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "OlmoRMSNorm")


@dataclass
class Target:
    """A batch of targets: ``layer`` (B,) where they read (n_layers = the logits), ``pos`` (B,)
    and ``vec`` (B, d): the encoder row at mlp_in.layer, or the unembedding row (post norm)."""
    layer: torch.Tensor
    pos: torch.Tensor
    vec: torch.Tensor


class LinearModel:
    """Frozen weights and scales of one prompt; see the module docstring."""

    def __init__(self, lm, tc, ids: torch.Tensor, acts: dict):
        self.lm, self.tc, self.ids = lm, tc, ids
        self.__dict__.update(acts)
        self.L, self.T, self.d = lm.n_layers, ids.shape[0], lm.d_model

    # ---- one layer's transposed maps (cotangents g: (B, T, d)) ----------------------------
    def _attn_T(self, l: int, g: torch.Tensor) -> torch.Tensor:
        """J_attn^T g: gradient at resid_pre.l from gradient g at the attention output."""
        a = self.lm.block(l).self_attn
        H, dh, grp = self.n_heads, a.head_dim, a.num_key_value_groups
        B, T, _ = g.shape                                             # T <= self.T: causal prefix
        u = (g @ a.o_proj.weight.float()).view(B, T, H, dh)          # (B, T, H, dh)
        gv = torch.einsum("hts,bthe->bshe", self.A[l][:, :T, :T], u)  # (B, T, H, dh)
        gv = gv.reshape(B, T, H // grp, grp, dh).sum(3).reshape(B, T, -1)  # GQA: sum the group
        return (gv @ a.v_proj.weight.float()) * self.n1[l][:T]        # (B, T, d)

    def _attn(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """The frozen attention map (without biases) of a (B, T, d) residual."""
        a = self.lm.block(l).self_attn
        H, dh, grp = self.n_heads, a.head_dim, a.num_key_value_groups
        B, T, _ = h.shape
        v = ((h * self.n1[l]) @ a.v_proj.weight.float().T).view(B, T, H // grp, 1, dh)
        v = v.expand(B, T, H // grp, grp, dh).reshape(B, T, H, dh)
        z = torch.einsum("hts,bshe->bthe", self.A[l], v).reshape(B, T, H * dh)
        return z @ a.o_proj.weight.float().T

    def backward(self, tg: Target, read) -> torch.Tensor:
        """Sweep a batch of targets down the model. ``read(l, g)`` is called with the gradient
        g (B, T', d) at mlp_out.l for l = top..0; returns the gradient (B, T', d) at the
        embeddings. T' = the last target position + 1: by causality nothing reaches a later
        position, so the sweep runs on that prefix only (and from the top target layer down)."""
        B = tg.layer.shape[0]
        T = int(tg.pos.max()) + 1
        g = torch.zeros(B, T, self.d)
        rows = torch.arange(B)
        logit = tg.layer == self.L
        if bool(logit.any()):
            g[rows[logit], tg.pos[logit]] = tg.vec[logit] * self.nf[tg.pos[logit]]
        top = int(tg.layer.max().clamp(max=self.L - 1))
        for l in range(top, -1, -1):
            read(l, g)                                                # gradient at mlp_out.l
            S = self.skip[l]
            if S is not None:
                g += (g @ S) * self.n2[l][:T]
            here = tg.layer == l
            if bool(here.any()):
                g[rows[here], tg.pos[here]] += tg.vec[here] * self.n2[l][tg.pos[here]]
            g += self._attn_T(l, g)
        return g

    def forward(self, embed: torch.Tensor, outs: torch.Tensor) -> tuple:
        """The linear model run forward: embeddings (B, T, d) and per-layer MLP-output constants
        ``outs`` (B, L, T, d) -> (final-norm output (B, T, d), mlp_in (B, L, T, d)). With the
        recorded embeddings and outputs it reproduces the real model (biases aside)."""
        h, ins = embed, []
        for l in range(self.L):
            mid = h + self._attn(l, h) + self.attn_bias[l]
            x = mid * self.n2[l]
            ins.append(x)
            out = outs[:, l]
            if self.skip[l] is not None:
                out = out + x @ self.skip[l].T
            h = mid + out
        return h * self.nf, torch.stack(ins, 1)


@torch.no_grad()
def capture(lm, tc, ids: torch.Tensor) -> LinearModel:
    """One forward of ``lm`` on ``ids`` (T,) recording everything the linear model freezes."""
    check_transcoders(lm, tc)
    fam = lm.family_spec
    blk = lm.block(0)
    names = {type(blk.input_layernorm).__name__, type(blk.post_attention_layernorm).__name__}
    if not names <= set(_NORMS) or not hasattr(blk, "self_attn") or \
            not hasattr(blk.self_attn, "v_proj"):
        raise BadInputError(lm.name, f"family {lm.family!r} (norms {sorted(names)}) is not "
                                     "supported by attribution graphs yet",
                            "use a llama/mistral/qwen2-family model such as SmolLM2")
    L = lm.n_layers
    rec: dict = {"pre": [None] * L, "mid": [None] * L, "x": [None] * L, "y": [None] * L}
    hooks = []

    def pre_hook(l):
        def fn(m, args, kwargs):
            rec["pre"][l] = (args[0] if args else kwargs["hidden_states"])[0].float()
        return fn

    def mlp_hook(l):
        def fn(m, args, out):
            rec["x"][l], rec["y"][l] = args[0][0].float(), out[0].float()
        return fn

    def mid_hook(l):
        def fn(m, args):
            rec["mid"][l] = args[0][0].float()
        return fn

    for l in range(L):
        b = lm.block(l)
        hooks.append(b.register_forward_pre_hook(pre_hook(l), with_kwargs=True))
        hooks.append(b.post_attention_layernorm.register_forward_pre_hook(mid_hook(l)))
        hooks.append(mlp_module(lm, l).register_forward_hook(mlp_hook(l)))
    fn_in: dict = {}
    final = lm.module(fam.final_norm)
    def final_hook(m, args):
        fn_in["h"] = args[0][0].float()

    hooks.append(final.register_forward_pre_hook(final_hook))
    model = lm.model
    old = model.config._attn_implementation
    try:
        if old != "eager":
            model.set_attn_implementation("eager")
        out = model(input_ids=ids[None].to(lm.device), output_attentions=True, use_cache=False,
                    logits_to_keep=1)                            # the last position only
    finally:
        for h in hooks:
            h.remove()
        if old != "eager":
            model.set_attn_implementation(old)
    A = torch.stack([a[0].float().cpu() for a in out.attentions])    # (L, H, T, T)

    def scale(norm, x):  # w / rms(x) per position: (T, d)
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6))
        r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        return r * norm.weight.float()

    n1 = [scale(lm.block(l).input_layernorm, rec["pre"][l]) for l in range(L)]
    n2 = [scale(lm.block(l).post_attention_layernorm, rec["mid"][l]) for l in range(L)]
    nf = scale(final, fn_in["h"])
    embed = lm.module(fam.embed)(ids[None].to(lm.device))[0].float().cpu()
    skip = [None if tc.skip_matrix(l) is None else tc.skip_matrix(l).detach().float()
            for l in range(L)]
    lin = LinearModel(lm, tc, ids, dict(A=A, n1=n1, n2=n2, nf=nf, embed=embed, skip=skip,
                                        mlp_in=torch.stack(rec["x"]), mlp_out=torch.stack(rec["y"]),
                                        resid_pre=torch.stack(rec["pre"]), resid_final=fn_in["h"],
                                        logits=out.logits[0, -1].float().cpu(),
                                        n_heads=A.shape[1], attn_bias=[None] * L))
    # attention biases (constants of the linear model): real attn out - the bias-free map
    for l in range(L):
        att = rec["mid"][l] - rec["pre"][l]                            # (T, d)
        lin.attn_bias[l] = att - lin._attn(l, rec["pre"][l][None])[0]
    return lin
