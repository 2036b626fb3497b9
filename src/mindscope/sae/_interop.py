"""Names other SAE packages use: SAELens config keys, TransformerLens hook names and HF module
names, translated to mindscope sites.

>>> site_from_hook("blocks.12.hook_resid_post"), site_from_hook("model.layers.3.mlp")
('resid_post.12', 'mlp_out.3')
>>> hook_from_site("resid_post.0")
('blocks.0.hook_resid_post', 'model.layers.0')
"""
from __future__ import annotations

import re
from typing import Optional

SAELENS_VERSION = "6.0.0"
"""Written as metadata.sae_lens_version: sae_lens >= 6 then reads the config as a 6.x one
(without it, ``handle_pre_6_0_config`` rebuilds it and drops metadata.hook_name/model_name)."""

# Top-level keys of SAELens 6 inference configs (SAEConfig and its subclasses, sae_lens 6.54).
SAELENS_V6_KEYS = frozenset({
    "architecture", "d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input",
    "normalize_activations", "reshape_activations", "metadata", "k",
    "rescale_acts_by_decoder_norm"})
# Keys of pre-6 SAELens configs (training-runner fields and renamed fields) that do not change
# what encode/decode compute, or that import_saelens reads itself.
SAELENS_OLD_KEYS = frozenset({
    "model_name", "model_class_name", "hook_name", "hook_point", "hook_layer", "hook_point_layer",
    "hook_head_index", "hook_point_head_index", "hook_eval", "activation_fn_str", "activation_fn",
    "activation_fn_kwargs", "finetuning_scaling_factor", "context_size", "dataset_path",
    "dataset_trust_remote_code", "is_dataset_tokenized", "prepend_bos", "exclude_special_tokens",
    "seqpos_slice", "sae_lens_version", "sae_lens_training_version", "neuronpedia_id",
    "model_from_pretrained_kwargs", "model_kwargs", "expansion_factor", "l1_coefficient",
    "lp_norm", "lr", "lr_scheduler_name", "lr_warm_up_steps", "lr_decay_steps", "lr_end",
    "l1_warm_up_steps", "training_tokens", "train_batch_size_tokens", "store_batch_size_prompts",
    "n_batches_in_buffer", "use_ghost_grads", "b_dec_init_method", "normalize_sae_decoder",
    "noise_scale", "decoder_orthogonal_init", "decoder_heuristic_init",
    "init_encoder_as_decoder_transpose", "mse_loss_normalization",
    "scale_sparsity_penalty_by_decoder_norm", "jumprelu_init_threshold", "jumprelu_bandwidth",
    "feature_sampling_window", "dead_feature_window", "dead_feature_threshold", "seed",
    "checkpoint_path", "n_checkpoints", "log_to_wandb", "wandb_project", "wandb_entity",
    "wandb_log_frequency", "eval_every_n_wandb_logs", "run_name", "verbose", "autocast",
    "autocast_lm", "compile_llm", "compile_sae", "llm_compilation_mode", "sae_compilation_mode",
    "act_store_device", "cached_activations_path", "use_cached_activations", "streaming",
    "adam_beta1", "adam_beta2", "n_eval_batches", "eval_batch_size_prompts", "from_pretrained_path",
    "resume", "n_restart_cycles", "sequence_separator_token", "disable_concat_sequences",
    "use_chat_formatting", "output_path", "logger", "tokens_per_buffer", "save_final_checkpoint",
    "hook_name_out", "hook_head_index_out", "hf_hook_name", "hf_hook_name_out"})

_TL = {"hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid",
       "hook_resid_post": "resid_post", "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out"}
_HF = {"": "resid_post", "mlp": "mlp_out", "self_attn": "attn_out", "attn": "attn_out"}


def site_from_hook(name: Optional[str]) -> Optional[str]:
    """The mindscope site of a TransformerLens hook name (``blocks.12.hook_resid_post``) or an
    HF module name (``model.layers.12`` = the block's output, ``.mlp``, ``.self_attn``); a
    mindscope site or anything unrecognised is returned unchanged."""
    if not name:
        return name
    m = re.fullmatch(r"blocks\.(\d+)\.(hook_\w+)", name)
    if m and m.group(2) in _TL:
        return f"{_TL[m.group(2)]}.{m.group(1)}"
    m = re.fullmatch(r"(?:[\w.]*\.)?(?:layers|h|blocks)\.(\d+)(?:\.(mlp|self_attn|attn))?", name)
    if m:
        return f"{_HF[m.group(2) or '']}.{m.group(1)}"
    return name


def hook_from_site(site: str) -> tuple:
    """(TransformerLens hook name, HF module name or None) of a mindscope ``kind.L`` site;
    (site, None) when it has no equivalent."""
    m = re.fullmatch(r"(\w+)\.(\d+)", site or "")
    inv = {v: k for k, v in _TL.items()}
    if not m or m.group(1) not in inv:
        return site, None
    kind, layer = m.groups()
    hf = {"resid_post": f"model.layers.{layer}", "mlp_out": f"model.layers.{layer}.mlp",
          "attn_out": f"model.layers.{layer}.self_attn"}.get(kind)
    return f"blocks.{layer}.{inv[kind]}", hf
