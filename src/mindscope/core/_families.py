"""The one family table: everything mindscope needs to know about a model family, in one entry.

Every site is defined by *where its value lives* in the HF module tree:

- ``embed``: output of ``embed`` (the value HF reports as ``hidden_states[0]``).
- ``resid_pre.L``: input to block L;  ``resid_post.L``: output of block L.
- ``attn_out.L`` / ``mlp_out.L``: output of the module whose result is *added to the residual*
  (for Gemma's sandwich norms that is the post-norm, not the attention module itself).
- ``resid_mid.L = resid_pre.L + attn_out.L`` (not a module output; computed in the attn hook).
- ``mlp_in.L``: input of ``mlp``; ``mlp_post.L``: input of ``mlp_down`` (the neurons).
- ``q``/``k``/``v``: outputs of the projections (before any q/k-norm and rotary embedding,
  like TransformerLens' ``hook_q``); ``z``: input of ``o_proj``; ``head_out``: ``o_proj`` split by head.
- ``final_norm``: output of the final norm.

Causal analysis (per-head projections), weight baking (residual writers) and the tiny test
configs read the same entry. Adding a family is one entry here; an unknown decoder-only family
is discovered by structure (``discover``) with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Optional

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    layers: str = "model.layers"
    """Dotted path to the ModuleList of blocks."""
    embed: str = "model.embed_tokens"
    """Module whose output is the residual stream entering block 0."""
    final_norm: str = "model.norm"
    """The final norm before the unembedding."""
    attn_out: str = "self_attn"
    """Path inside a block of the module whose output is added to the residual after attention."""
    mlp_out: str = "mlp"
    """Path inside a block of the module whose output is added to the residual after the MLP."""
    lm_head: str = "lm_head"
    """The unembedding (prefer ``LM.unembed`` / ``model.get_output_embeddings()``)."""
    parallel: bool = False
    """True for parallel attention+MLP blocks (GPT-NeoX): resid_mid does not exist there."""
    attn: str = "self_attn"
    """The attention module inside a block."""
    mlp: str = "mlp"
    """The MLP module inside a block; its input is ``mlp_in``."""
    mlp_down: Optional[str] = "mlp.down_proj"
    """The MLP's output projection; its input is ``mlp_post`` (None for MoE blocks)."""
    o_proj: str = "self_attn.o_proj"
    """Attention output projection; its input is ``z`` (heads concatenated)."""
    q: Optional[str] = "self_attn.q_proj"
    """Query projection (``k``/``v`` alike); None when the family fuses them in ``qkv``."""
    k: Optional[str] = "self_attn.k_proj"
    v: Optional[str] = "self_attn.v_proj"
    qkv: Optional[str] = None
    """Fused q/k/v projection, read by ``qkv_layout``."""
    qkv_layout: str = "split"
    """``split``: [q | k | v] along features (GPT-2, Phi-3); ``heads``: per head [q k v] (NeoX)."""
    heads_additive: bool = True
    """True when ``o_proj``'s output *is* ``attn_out`` (no norm after it), so heads add up to it."""
    embeds: tuple = ("model.embed_tokens",)
    """Embedding modules whose rows are written to the residual stream (for weight baking)."""
    conv1d: bool = False
    """GPT-2 style Conv1D projections: weight stored (in, out)."""
    no_bake: Optional[str] = None
    """Why weight baking is impossible for this family (None: it is possible)."""
    router: Optional[str] = None
    """MoE: the router inside a block (its first output is the router logits)."""
    experts: Optional[str] = None
    """MoE: the experts module inside a block."""
    shared_expert: Optional[str] = None
    """MoE: an always-on expert added to the routed experts' sum (Qwen2-MoE)."""
    resid_scale: Optional[str] = None
    """Config attribute scaling attn/MLP outputs before they are added (Granite); attn_out and
    mlp_out are the scaled values (what the residual receives)."""
    embed_scale: Optional[str] = None
    """Config attribute scaling the embedding module's output (Granite); ``embed`` is scaled."""
    embed_input: Optional[str] = None
    """Vision-language models: the language model whose ``inputs_embeds`` input is the residual
    entering block 0 (the token embeddings with the image features scattered in); ``embed`` is
    read there instead of at the embedding module, whose output lacks the image features."""
    tiny: tuple = ("LlamaConfig", ())
    """Tiny test config: a transformers config class name and extra (key, value) pairs."""

    @property
    def moe(self) -> bool:
        return self.router is not None


_KV = (("num_key_value_heads", 2),)
_LLAMA = Family(tiny=("LlamaConfig", _KV))
_SANDWICH = dict(attn_out="post_attention_layernorm", mlp_out="post_feedforward_layernorm",
                 heads_additive=False, no_bake="sandwich norms")
_GEMMA_TINY = _KV + (("head_dim", 16), ("sliding_window", 8))
_MOE_TINY = _KV + (("num_local_experts", 4), ("num_experts_per_tok", 2))
_QMOE_TINY = _KV + (("num_experts", 4), ("num_experts_per_tok", 2), ("moe_intermediate_size", 32),
                    ("norm_topk_prob", True))

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA,
    "mistral": replace(_LLAMA, tiny=("MistralConfig", _KV)),
    "qwen2": replace(_LLAMA, tiny=("Qwen2Config", _KV)),
    "qwen3": replace(_LLAMA, tiny=("Qwen3Config", _KV)),
    "smollm3": replace(_LLAMA, tiny=("SmolLM3Config", _KV)),
    "granite": replace(_LLAMA, no_bake="residual and embedding multipliers outside the modules",
                       resid_scale="residual_multiplier", embed_scale="embedding_multiplier",
                       tiny=("GraniteConfig", _KV + (("residual_multiplier", 0.5),
                                                     ("embedding_multiplier", 3.0)))),
    "phi3": replace(_LLAMA, q=None, k=None, v=None, qkv="self_attn.qkv_proj",
                    tiny=("Phi3Config", _KV + (("pad_token_id", 0),))),
    "olmo2": replace(_LLAMA, **_SANDWICH, tiny=("Olmo2Config", _KV)),
    "gemma": replace(_LLAMA, no_bake="the embedding is rescaled outside its module",
                     tiny=("GemmaConfig", _KV + (("head_dim", 16),))),
    "gemma2": replace(_LLAMA, **_SANDWICH, tiny=("Gemma2Config", _GEMMA_TINY)),
    "gemma3_text": replace(_LLAMA, **_SANDWICH, tiny=("Gemma3TextConfig", _GEMMA_TINY)),
    "mixtral": replace(_LLAMA, mlp_down=None, router="mlp.gate", experts="mlp.experts",
                       no_bake="mixture-of-experts MLPs", tiny=("MixtralConfig", _MOE_TINY)),
    "qwen3_moe": replace(_LLAMA, mlp_down=None, router="mlp.gate", experts="mlp.experts",
                         no_bake="mixture-of-experts MLPs", tiny=("Qwen3MoeConfig", _QMOE_TINY)),
    "qwen2_moe": replace(_LLAMA, mlp_down=None, router="mlp.gate", experts="mlp.experts",
                         shared_expert="mlp.shared_expert", no_bake="mixture-of-experts MLPs",
                         tiny=("Qwen2MoeConfig", _QMOE_TINY + (("shared_expert_intermediate_size", 32),))),
    "gpt2": Family("transformer.h", "transformer.drop", "transformer.ln_f", "attn", "mlp",
                   attn="attn", mlp_down="mlp.c_proj", o_proj="attn.c_proj", q=None, k=None,
                   v=None, qkv="attn.c_attn", embeds=("transformer.wte", "transformer.wpe"),
                   conv1d=True, tiny=("GPT2Config", ())),
    "gpt_neox": Family("gpt_neox.layers", "gpt_neox.emb_dropout", "gpt_neox.final_layer_norm",
                       "post_attention_dropout", "post_mlp_dropout", parallel=True,
                       attn="attention", mlp_down="mlp.dense_4h_to_h", o_proj="attention.dense",
                       q=None, k=None, v=None, qkv="attention.query_key_value", qkv_layout="heads",
                       embeds=("gpt_neox.embed_in",), tiny=("GPTNeoXConfig", ())),
}
FAMILIES["gemma3"] = replace(  # Gemma3ForConditionalGeneration: its language model
    FAMILIES["gemma3_text"], layers="model.language_model.layers",
    embed="model.language_model.embed_tokens", final_norm="model.language_model.norm",
    embeds=("model.language_model.embed_tokens",), embed_input="model.language_model",
    tiny=("Gemma3Config", ()))
_VL_TEXT = dict(layers="model.language_model.layers", embed="model.language_model.embed_tokens",
                final_norm="model.language_model.norm", embeds=("model.language_model.embed_tokens",),
                embed_input="model.language_model", no_bake="vision-language model")
for _name, _cfg in (("qwen2_vl", "Qwen2VLConfig"), ("qwen2_5_vl", "Qwen2_5_VLConfig")):
    FAMILIES[_name] = replace(_LLAMA, **_VL_TEXT, tiny=(_cfg, ()))  # 3-D rotary: see _vision
"""model_type -> Family."""

_warned: set = set()


def family_for(model_type: str, model=None) -> Family:
    """The table entry of ``model_type``; for an unknown family, discover one from ``model``."""
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    if model is not None:
        from ._discover import discover
        fam = discover(model)
        if model_type not in _warned:
            _warned.add(model_type)
            log.warning("model family %r is not in mindscope's family table; using the structure "
                        "found in the model (blocks at %s). Check the sites before trusting them, "
                        "and add an entry to mindscope/core/_families.py.", model_type, fam.layers)
        return fam
    raise ValueError(
        f"model family {model_type!r} is not in mindscope's family table "
        f"(known: {', '.join(sorted(FAMILIES))}). Add one entry to "
        "mindscope/core/_families.py naming its block list, embedding, final norm, "
        "and the modules whose outputs are added to the residual stream.")
