"""Attention internals as sites: q/k/v from the projections, z and head_out at the output
projection, and attn_scores/attn_pattern through an eager attention kernel that mindscope
registers with transformers (``"mindscope_eager"``) and switches on only while a pattern site
is read or written (other sites keep the model's fast kernel).

Inside a handler every headed site is (B, T, H, x): q/k/v/z x = d_head, head_out x = d_model,
attn_scores/attn_pattern x = S (key positions of this call's cache, padded coordinates)."""
from __future__ import annotations

import inspect
import logging

import torch

log = logging.getLogger(__name__)
KERNEL = "mindscope_eager"
_registered = False


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask
    AttentionInterface.register(KERNEL, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(KERNEL, eager_mask)
    _registered = True


def _repeat(x: torch.Tensor, n: int) -> torch.Tensor:
    return x if n == 1 else x.repeat_interleave(n, dim=1)  # (B, Hkv, S, d) -> (B, H, S, d)


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
              softcap=None, **kw):
    """Eager attention with two dispatch points (scores before softmax, pattern after).
    query (B, H, T, d), key/value (B, Hkv, S, d), attention_mask additive (B, 1, T, S)."""
    if kw.get("s_aux") is not None or getattr(module, "sinks", None) is not None:
        raise NotImplementedError(f"{type(module).__name__} uses attention sinks; mindscope's "
                                  "pattern kernel does not model them (read 'module:' sites)")
    disp, layer = getattr(module, "_ms_pattern", (None, None))
    H = query.shape[1]
    k, v = _repeat(key, H // key.shape[1]), _repeat(value, H // value.shape[1])
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, k.transpose(2, 3)) * scaling  # (B, H, T, S)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : k.shape[-2]]
    if disp is not None:
        scores = disp.dispatch_heads(f"attn_scores.{layer}", scores)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)  # (B, H, T, S)
    if disp is not None:
        pattern = disp.dispatch_heads(f"attn_pattern.{layer}", pattern)
    pattern = torch.nn.functional.dropout(pattern, p=dropout, training=module.training)
    out = torch.matmul(pattern, v).transpose(1, 2).contiguous()  # (B, T, H, d)
    return out, pattern


def check_kernel(attn_module) -> None:
    """Refuse a pattern site on an attention module that does not use transformers' attention
    interface (its kernel cannot be swapped for one that returns patterns)."""
    try:
        src = inspect.getsource(type(attn_module).forward)
    except (OSError, TypeError):
        src = ""
    if "ALL_ATTENTION_FUNCTIONS" not in src and "attention_interface" not in src:
        raise ValueError(
            f"cannot read attention patterns of {type(attn_module).__name__}: its kernel is not "
            "pluggable (it does not go through transformers' AttentionInterface). Read "
            "'z.L' / 'head_out.L' instead, or load the model with attn_implementation='eager' "
            "and call it with output_attentions=True.")


class KernelSwitch:
    """Switch the attention modules' configs to ``mindscope_eager`` while pattern sites are in
    use; restore the previous implementation when the last one is removed."""

    def __init__(self, lm):
        self.lm, self.users, self.saved = lm, 0, []

    def acquire(self) -> None:
        _register()
        if self.users == 0:
            configs = {id(m.config): m.config for m in self._attn_modules()
                       if getattr(m, "config", None) is not None}
            if not configs:
                configs = {id(self.lm.model.config): self.lm.model.config}
            self.saved = [(c, c._attn_implementation) for c in configs.values()]
            for c, old in self.saved:
                c._attn_implementation = KERNEL
            olds = sorted({str(o) for _, o in self.saved})
            if olds != ["eager"]:
                log.info("attention pattern site requested: switching attention from %s to "
                         "mindscope's eager kernel while it is hooked (slower; other sites "
                         "keep the fast kernel)", "/".join(olds))
        self.users += 1

    def release(self) -> None:
        self.users -= 1
        if self.users == 0:
            for c, old in self.saved:
                c._attn_implementation = old
            self.saved = []

    def _attn_modules(self):
        fam = self.lm.family_spec
        return [self.lm.block_part(i, fam.attn) for i in range(self.lm.n_layers)]


# ---- q / k / v / z / head_out --------------------------------------------------------------------
def split_fused(out: torch.Tensor, layout: str, H: int, Hkv: int, which: str):
    """Slice q, k or v out of a fused projection output (B, T, F) -> (view (B, T, n, dh), put)
    where ``put(new)`` returns the fused tensor with that slice replaced."""
    B, T, F = out.shape
    if layout == "heads":  # GPT-NeoX: (B, T, H, 3 * dh), per head [q k v]
        dh = F // (3 * H)
        i = "qkv".index(which)
        part = out.view(B, T, H, 3 * dh)[..., i * dh:(i + 1) * dh]  # (B, T, H, dh)

        def put(new):
            full = out.view(B, T, H, 3 * dh).clone()
            full[..., i * dh:(i + 1) * dh] = new
            return full.view(B, T, F)
        return part, put
    dh = F // (H + 2 * Hkv)
    lo = {"q": 0, "k": H * dh, "v": (H + Hkv) * dh}[which]
    n = H if which == "q" else Hkv
    part = out[..., lo:lo + n * dh].view(B, T, n, dh)

    def put(new):
        full = out.clone()
        full[..., lo:lo + n * dh] = new.reshape(B, T, n * dh)
        return full
    return part, put


def head_weights(proj: torch.nn.Module, H: int, conv1d: bool) -> torch.Tensor:
    """-> W (H, dh, d_out) with head h's contribution = z_h @ W[h]."""
    w = proj.weight if conv1d else proj.weight.T  # (H*dh, d_out)
    return w.reshape(H, w.shape[0] // H, w.shape[1])


def head_out(z: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """z (B, T, H, dh), W (H, dh, d) -> per-head outputs (B, T, H, d)."""
    return torch.einsum("bthe,hed->bthd", z, W.to(z.dtype))
