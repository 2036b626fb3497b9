"""Structural discovery of a decoder-only family that is not in the table: find the block list,
embedding, final norm, attention and MLP modules and their projections by shape and name.

Heuristics, checked where they can be: the block list is the longest ModuleList of identical
blocks; the embedding is ``get_input_embeddings()``; the final norm is a norm next to the block
list; inside a block, attention and MLP are the children whose names say so; sandwich norms
or post-norms (a ``post_feedforward_layernorm``, Gemma 2/3, OLMo 2/3) make the post-norms the
residual writers; a block with a single norm is a parallel attention+MLP block."""
from __future__ import annotations

from typing import Optional

import torch

from ._families import Family

_O = ("o_proj", "out_proj", "dense", "c_proj", "wo", "out")
_DOWN = ("down_proj", "c_proj", "dense_4h_to_h", "fc2", "w2", "out_proj", "wo")
_FUSED = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv")
_NORMS = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm", "norm_f")


def _child(mod: torch.nn.Module, names, kind=None) -> Optional[str]:
    kids = dict(mod.named_children())
    for n in names:
        if n in kids and (kind is None or isinstance(kids[n], kind)):
            return n
    return None


def _is_norm(m: torch.nn.Module) -> bool:
    return "norm" in type(m).__name__.lower() or isinstance(m, torch.nn.LayerNorm)


def discover(model: torch.nn.Module) -> Family:
    mods = dict(model.named_modules())
    lists = [(n, m) for n, m in mods.items() if isinstance(m, torch.nn.ModuleList) and len(m) > 0
             and len({type(b) for b in m}) == 1 and "vision" not in n and "visual" not in n]
    if not lists:
        raise ValueError(f"cannot discover the blocks of {type(model).__name__} (no ModuleList "
                         "of identical blocks); add an entry to mindscope/core/_families.py")
    layers, blocks = max(lists, key=lambda t: len(t[1]))
    emb = model.get_input_embeddings()
    embed = next(n for n, m in mods.items() if m is emb)
    parent = layers.rsplit(".", 1)[0] if "." in layers else ""
    pmod = mods[parent] if parent else model
    norm = _child(pmod, _NORMS) or next((n for n, m in pmod.named_children() if _is_norm(m)), None)
    if norm is None:
        raise ValueError(f"cannot discover the final norm next to {layers}; add a family entry")
    block = blocks[0]
    kids = dict(block.named_children())
    attn = next((n for n, m in kids.items() if "attention" in type(m).__name__.lower()
                 or n in ("self_attn", "attn", "attention")), None)
    mlp = next((n for n, m in kids.items() if n in ("mlp", "feed_forward", "ffn")
                or type(m).__name__.lower().endswith("mlp")), None)
    if attn is None or mlp is None:
        raise ValueError(f"cannot discover attention/MLP inside {type(block).__name__} "
                         f"(children: {', '.join(kids)}); add a family entry")
    a, m = kids[attn], kids[mlp]
    o = _child(a, _O, torch.nn.Module)
    fused = _child(a, _FUSED)
    q = _child(a, ("q_proj", "query", "q"))
    down = _child(m, _DOWN)
    sandwich = "post_feedforward_layernorm" in kids  # post-norms write the residual
    n_norms = sum(_is_norm(x) for x in kids.values())
    fam = Family(
        layers=layers, embed=embed, final_norm=f"{parent}.{norm}" if parent else norm,
        attn_out="post_attention_layernorm" if sandwich else attn,
        mlp_out="post_feedforward_layernorm" if sandwich else mlp,
        parallel=n_norms == 1, attn=attn, mlp=mlp,
        mlp_down=f"{mlp}.{down}" if down else None, o_proj=f"{attn}.{o}" if o else f"{attn}.o_proj",
        q=f"{attn}.{q}" if q else None, k=f"{attn}.{q[0].replace('q', 'k')}{q[1:]}" if q else None,
        v=f"{attn}.{q[0].replace('q', 'v')}{q[1:]}" if q else None,
        qkv=f"{attn}.{fused}" if fused and not q else None, heads_additive=not sandwich,
        embeds=(embed,), conv1d=type(getattr(a, o or "", None)).__name__ == "Conv1D",
        no_bake="discovered family (weight baking needs a table entry)")
    return fam
