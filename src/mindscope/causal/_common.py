"""Shared pieces of the causal toolbox: answer tokens, the logit-difference metric, the final
norm frozen into a linear map, per-head output projections, and saving result files.

>>> import torch
>>> from mindscope.testing import tiny_lm
>>> lm = tiny_lm("llama")
>>> resid = torch.randn(3, lm.d_model)
>>> fn = freeze_final_norm(lm, resid)
>>> torch.allclose(fn(resid), lm.module(lm.family_spec.final_norm)(resid), atol=1e-5)
True
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..core import atomic_save_tensors, atomic_write_text

Token = Union[int, str]


def token_id(lm, tok: Token) -> int:
    """A single token id from an id or a string that tokenizes to exactly one token."""
    if isinstance(tok, (int,)) or (isinstance(tok, torch.Tensor) and tok.dim() == 0):
        t = int(tok)
        if not 0 <= t < lm.vocab_size:
            raise ValueError(f"token id {t} is outside the vocabulary (0..{lm.vocab_size - 1})")
        return t
    ids = lm.tokenizer(tok, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [lm.tokenizer.decode([i]) for i in ids]
        raise ValueError(f"{tok!r} is {len(ids)} tokens {pieces}; give a string that is one token "
                         "(usually with its leading space, e.g. ' Mary') or a token id")
    return ids[0]


def answer_ids(lm, answers, n: int) -> torch.Tensor:
    """(n, 2) ids of (correct, wrong) answers. ``answers``: one pair for every row, a list of
    ``n`` pairs, or an (n, 2) tensor."""
    if isinstance(answers, torch.Tensor):
        a = answers.long().view(-1, 2)
    elif (isinstance(answers, (tuple, list)) and len(answers) == 2
          and not isinstance(answers[0], (tuple, list))):
        a = torch.tensor([[token_id(lm, answers[0]), token_id(lm, answers[1])]])
    else:
        a = torch.tensor([[token_id(lm, x), token_id(lm, y)] for x, y in answers])
    if a.shape[0] == 1 and n > 1:
        a = a.expand(n, 2)
    if a.shape[0] != n:
        raise ValueError(f"got {a.shape[0]} answer pairs for {n} prompts; give one pair for all "
                         "or one per prompt")
    return a


def last_logit_diff(logits: torch.Tensor, ans: torch.Tensor) -> torch.Tensor:
    """logits (B, T, V) of a left-padded batch, ans (B, 2) -> (B,) logit[correct] - logit[wrong]
    at the last position."""
    last = logits[:, -1]  # (B, V)
    last = last if last.dtype == torch.float64 else last.float()
    ans = ans.to(last.device)
    return last.gather(1, ans[:, :1]).squeeze(1) - last.gather(1, ans[:, 1:]).squeeze(1)


def logit_diff(lm, answers):
    """Metric factory for ``sae_attribution``: mean logit difference at the last position."""
    def metric(logits, batch):
        return last_logit_diff(logits, answer_ids(lm, answers, logits.shape[0])).mean()
    return metric


def softcap(lm, logits: torch.Tensor) -> torch.Tensor:
    """Apply the family's final logit soft-capping (Gemma 2/3) if it has one."""
    cap = getattr(lm.model.config, "final_logit_softcapping", None)
    return logits if not cap else torch.tanh(logits / cap) * cap


def unembed(lm, h: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding, before soft-capping: (..., d) -> (..., V). Like ``lm.unembed``
    but finds the head with ``get_output_embeddings()`` (robust to renamed head modules)."""
    norm = lm.module(lm.family_spec.final_norm)
    return lm.model.get_output_embeddings()(norm(h.to(lm.device, lm.dtype)))


def lens_logits(lm, h: torch.Tensor) -> torch.Tensor:
    """Final norm + unembedding (+ soft-capping): (..., d) -> (..., V), as the model's own head."""
    return softcap(lm, unembed(lm, h)).float()


@dataclass
class FrozenNorm:
    """The final norm with its scale frozen on the full residual, hence linear in each
    component: ``y(c) = (c - mean(c) if center else c) * scale * weight`` (plus ``bias``, which
    is a constant and belongs to no component). Summed over components whose sum is the full
    residual, it returns exactly ``norm(resid)``."""

    scale: torch.Tensor  # (N, 1) 1/rms (RMSNorm) or 1/std (LayerNorm) of the full residual
    weight: torch.Tensor  # (d,) effective weight (Gemma's 1 + w included)
    bias: Optional[torch.Tensor]  # (d,) or None
    center: bool

    def __call__(self, c: torch.Tensor) -> torch.Tensor:
        c = c.float()
        if self.center:
            c = c - c.mean(-1, keepdim=True)
        return c * self.scale * self.weight  # (N, d)


def freeze_final_norm(lm, resid: torch.Tensor) -> FrozenNorm:
    """Freeze the final norm's scale on ``resid`` (N, d), the residual entering the final norm."""
    mod = lm.module(lm.family_spec.final_norm)
    x = resid.float()
    if isinstance(mod, torch.nn.LayerNorm):
        var = x.var(-1, keepdim=True, unbiased=False)
        scale = torch.rsqrt(var + mod.eps)
        w = mod.weight.float() if mod.weight is not None else torch.ones(x.shape[-1])
        b = mod.bias.float() if mod.bias is not None else None
        fn = FrozenNorm(scale, w.to(x.device), None if b is None else b.to(x.device), True)
    else:
        eps = getattr(mod, "variance_epsilon", None)
        eps = getattr(mod, "eps", 1e-6) if eps is None else eps
        one = torch.ones(1, x.shape[-1], device=lm.device, dtype=lm.dtype)
        with torch.no_grad():  # norm(1) = w_eff / sqrt(1 + eps) for any RMS-style norm
            w = mod(one).float().squeeze(0).to(x.device) * (1.0 + eps) ** 0.5
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        fn = FrozenNorm(scale, w, None, False)
    with torch.no_grad():
        ref = mod(resid.to(lm.device, lm.dtype)).float().to(x.device)
    got = fn(x) + (fn.bias if fn.bias is not None else 0)
    err = (got - ref).abs().max().item()
    if err > 1e-3 * (1 + ref.abs().max().item()):
        raise ValueError(f"the final norm {type(mod).__name__} of {lm.name} is neither a LayerNorm "
                         f"nor an RMS-style norm (frozen-scale check off by {err:.3g}); direct "
                         "logit attribution does not support it yet")
    return fn


def unembed_matrix(lm) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(V, d) unembedding weight and (V,) bias or None."""
    head = lm.model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


# ---- attention heads --------------------------------------------------------------------------
# Path (inside a block) of the linear map whose input is the concatenated head outputs and whose
# output is added to the residual as attn_out. Families whose attn_out passes a norm after that
# projection (Gemma 2/3, OLMo 2) cannot be split into additive heads and are left out.
HEAD_PROJ = {"llama": "self_attn.o_proj", "mistral": "self_attn.o_proj",
             "qwen2": "self_attn.o_proj", "qwen3": "self_attn.o_proj", "gemma": "self_attn.o_proj",
             "gpt2": "attn.c_proj", "gpt_neox": "attention.dense"}


def n_heads(lm) -> int:
    cfg = lm.model.config
    return int(getattr(cfg, "num_attention_heads", None) or cfg.n_head)


def head_proj(lm, layer: int) -> torch.nn.Module:
    if lm.family not in HEAD_PROJ:
        raise ValueError(f"per-head outputs are not available for family {lm.family!r}: its "
                         "attention output passes a norm after the output projection (or the "
                         f"family is not in HEAD_PROJ); supported: {', '.join(sorted(HEAD_PROJ))}")
    return lm.block_part(layer, HEAD_PROJ[lm.family])


def head_weights(lm, layer: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """-> W (H, hd, d_out) with head h's output = z_h @ W[h], and the projection bias or None."""
    mod, H = head_proj(lm, layer), n_heads(lm)
    w = mod.weight
    w = w if type(mod).__name__ == "Conv1D" else w.T  # (H*hd, d_out)
    return w.reshape(H, w.shape[0] // H, w.shape[1]), getattr(mod, "bias", None)


def as_list(x: Union[str, Sequence[str]]) -> list:
    return [x] if isinstance(x, str) else list(x)


def save_files(folder, files: dict) -> Path:
    """Create ``folder`` and write ``files`` into it in order: ``{name: content}`` where a
    ``*.safetensors`` name takes a dict of tensors and any other name a JSON-able value (written
    indented). Each file is written atomically (a temp file in ``folder`` renamed over it, mode
    0644): a reader sees the old file or the new one, never a torn one, and a write that fails
    leaves no temp file behind. Returns ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if name.endswith(".safetensors"):
            atomic_save_tensors(folder / name, content)
        else:
            atomic_write_text(folder / name, json.dumps(content, indent=2))
    return folder
