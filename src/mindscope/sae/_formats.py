"""Import / export of other SAE folder layouts.

SAELens (v6 ``save_model`` / ``save_inference_model``): ``cfg.json`` + ``sae_weights.safetensors``
with ``W_enc`` (d_in, d_sae), ``W_dec`` (d_sae, d_in), ``b_enc`` (d_sae), ``b_dec`` (d_in) and, for
``architecture="jumprelu"``, ``threshold`` (d_sae). Encoding there is
``act((x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc)``, decoding ``f @ W_dec + b_dec``.
A BatchTopK SAE exports as ``jumprelu`` with its inference threshold (what SAELens does too).

sparsify (EleutherAI): ``cfg.json`` (d_in, num_latents or expansion_factor, k, transcode, ...) +
``sae.safetensors`` with ``encoder.weight`` (n, d_in), ``encoder.bias`` (n), ``W_dec`` (n, d),
``b_dec`` (d); encoding ``topk(relu((x - b_dec) W^T + b))`` (no b_dec subtraction when transcode).

Our scale constant is folded into the weights on export (W_enc * s_in, W_dec / s_out, b_dec / s),
so exported SAEs take raw activations, as SAELens' ``normalize_activations="none"`` expects.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..core import (BadInputError, atomic_save_tensors, atomic_write_json, need, need_int,
                    safetensors_header)
from ._checked import (_FIX, _MAX_D, _MAX_N, PathLike, _config, _folder, _opt, _read_cfg,
                       _weights, read_ours)
from ._sae import SAE

log = logging.getLogger(__name__)


def load_ours(path: PathLike, device: str = "cpu") -> SAE:
    """A folder written by ``SAE.save`` (cfg.json + sae.safetensors), every field and tensor
    checked first; BadInputError naming the file for anything wrong."""
    cfg, sd = read_ours(path)
    return SAE.from_checked(cfg, sd, device)


def _raw_weights(sae: SAE) -> dict:
    """Weights with the scale constants folded in (raw-unit SAE, same function)."""
    c = sae.cfg
    s_in, s_out = c.scale_in, c.scale_out
    if c.b_dec_in and s_in != s_out:
        raise ValueError("cannot fold different input/output scales with apply_b_dec_to_input")
    out = {"W_enc": sae.W_enc.detach() * s_in, "b_enc": sae.b_enc.detach().clone(),
           "W_dec": sae.W_dec.detach() / s_out, "b_dec": sae.b_dec.detach() / s_out}
    # b_dec_in: z = (s x - b) W^T + b_enc = (x - b/s)(s W)^T + b_enc; out = f (W/s) + b/s
    th = sae.threshold_vec
    if th is not None:
        out["threshold"] = th.detach().clone()
    return out


def export_saelens(sae: SAE, path: PathLike) -> Path:
    """Write ``sae`` as a SAELens folder (cfg.json + sae_weights.safetensors)."""
    c = sae.cfg
    if c.transcoder:
        raise ValueError("export_saelens: transcoders have their own SAELens class; export "
                         "autoencoders only (or save with SAE.save)")
    w = _raw_weights(sae)
    arch = {"relu": "standard", "topk": "topk", "jumprelu": "jumprelu", "batchtopk": "jumprelu"}[c.arch]
    tensors = {"W_enc": w["W_enc"].T.contiguous(), "W_dec": w["W_dec"], "b_enc": w["b_enc"],
               "b_dec": w["b_dec"]}
    if arch == "jumprelu":
        tensors["threshold"] = w["threshold"]
    cfg = {"architecture": arch, "d_in": c.d_in, "d_sae": c.n_latents,
           "dtype": str(sae.W_enc.dtype).replace("torch.", ""), "device": "cpu",
           "apply_b_dec_to_input": bool(c.b_dec_in), "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"model_name": c.model or None, "hook_name": c.site or None,
                        "exported_by": "mindscope", "mindscope_arch": c.arch}}
    if arch == "topk":
        cfg["k"] = c.k
    path = Path(path)
    atomic_save_tensors(path / "sae_weights.safetensors", tensors)
    atomic_write_json(path / "cfg.json", cfg)
    return path


def import_saelens(path: PathLike) -> SAE:
    """Read a SAELens folder (v6 or older ``activation_fn_str`` configs), checked first."""
    path = _folder(path, "SAELens")
    cfg_p, w_p = path / "cfg.json", path / "sae_weights.safetensors"
    if not cfg_p.exists() or not w_p.exists():
        raise FileNotFoundError(f"{path}: a SAELens folder needs cfg.json and sae_weights.safetensors")
    cfg_p, d = _read_cfg(path, "SAELens")
    meta = d.get("metadata") or d.get("meta") or {}
    if not isinstance(meta, dict):
        raise BadInputError(cfg_p, f"'metadata' should be a JSON object, got {type(meta).__name__}")
    arch = _opt(d, "architecture", str, cfg_p, "standard")
    fn_kw = _opt(d, "activation_fn_kwargs", dict, cfg_p, {})
    k = _opt(d, "k", int, cfg_p) or (need_int(fn_kw, "k", cfg_p, 1, _MAX_N, "activation_fn_kwargs")
                                     if fn_kw.get("k") is not None else None)
    if arch == "standard" and d.get("activation_fn_str") == "topk":
        arch = "topk"
    ours = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}.get(arch)
    if ours is None:
        raise BadInputError(cfg_p, f"SAELens architecture {arch!r:.40} is not supported "
                                   "(supported: standard, topk, jumprelu)")
    norm = d.get("normalize_activations", "none")
    if norm not in ("none", None, "expected_average_only_in"):
        raise BadInputError(cfg_p, f"normalize_activations={norm!r:.40} (per-token rescaling) "
                                   "cannot be represented; supported: none")
    if norm == "expected_average_only_in":
        log.warning("%s: normalize_activations=expected_average_only_in; the scaling factor is not "
                    "stored in the folder, so inputs are used unscaled (fold it in first)", cfg_p)
    d_in, n = need_int(d, "d_in", cfg_p, 1, _MAX_D), need_int(d, "d_sae", cfg_p, 1, _MAX_N)
    names = [meta.get("model_name"), d.get("model_name"), meta.get("hook_name"), d.get("hook_name")]
    if any(v is not None and not isinstance(v, str) for v in names):
        raise BadInputError(cfg_p, "model_name / hook_name should be strings")
    b_in = _opt(d, "apply_b_dec_to_input", bool, cfg_p, True)
    cfg = _config(cfg_p, arch=ours, d_in=d_in, n_latents=n, k=int(k or 32),
                  model=names[0] or names[1] or "", site=names[2] or names[3] or "",
                  apply_b_dec_to_input=b_in, meta={"imported_from": "saelens", "source": str(path)})
    sd = _weights(w_p, {"W_enc": (d_in, n), "W_dec": (n, d_in), "b_enc": (n,), "b_dec": (d_in,)},
                  {"threshold": (n,), "log_threshold": (n,), "scaling_factor": (n,)}, "SAELens")
    if "log_threshold" in sd and "threshold" not in sd:
        sd["threshold"] = sd["log_threshold"].exp()
    if ours == "jumprelu" and "threshold" not in sd:
        raise BadInputError(w_p, "jumprelu SAE without a 'threshold' tensor", _FIX)
    sae = SAE(cfg, dtype=sd["W_enc"].dtype)
    W_dec = sd["W_dec"]
    if "scaling_factor" in sd:               # old finetuning scale: f -> f * s_i
        W_dec = W_dec * sd["scaling_factor"][:, None]
    with torch.no_grad():
        sae.W_enc.copy_(sd["W_enc"].T)
        sae.b_enc.copy_(sd["b_enc"])
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(sd["b_dec"])
        if ours == "jumprelu":
            sae.log_threshold.copy_(sd["threshold"].clamp_min(1e-30).log())
    return sae


def export_sparsify(sae: SAE, path: PathLike) -> Path:
    """Write a TopK autoencoder in sparsify's layout (cfg.json + sae.safetensors)."""
    c = sae.cfg
    if c.arch != "topk" or not c.b_dec_in or c.transcoder:
        raise ValueError("export_sparsify: only topk autoencoders with apply_b_dec_to_input")
    w = _raw_weights(sae)
    tensors = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}
    path = Path(path)
    atomic_save_tensors(path / "sae.safetensors", tensors)
    atomic_write_json(path / "cfg.json", {"activation": "topk", "expansion_factor": c.n_latents // c.d_in,
                                          "normalize_decoder": True, "num_latents": c.n_latents,
                                          "k": c.k, "multi_topk": False, "skip_connection": False,
                                          "transcode": False, "d_in": c.d_in})
    return path


def import_sparsify(path: PathLike) -> SAE:
    """Read a sparsify folder (TopK SAE or transcoder, no skip connection), checked first."""
    path = _folder(path, "sparsify")
    cfg_p, w_p = path / "cfg.json", path / "sae.safetensors"
    if not cfg_p.exists() or not w_p.exists():
        raise FileNotFoundError(f"{path}: a sparsify folder needs cfg.json and sae.safetensors")
    cfg_p, d = _read_cfg(path, "sparsify")
    if _opt(d, "activation", str, cfg_p, "topk") != "topk":
        raise BadInputError(cfg_p, f"activation={d.get('activation')!r:.40} is not supported "
                                   "(topk only)")
    if _opt(d, "skip_connection", bool, cfg_p, False):
        raise BadInputError(cfg_p, "skip connections are not supported")
    d_in = need_int(d, "d_in", cfg_p, 1, _MAX_D)
    n = _opt(d, "num_latents", int, cfg_p) or d_in * (_opt(d, "expansion_factor", int, cfg_p) or 32)
    if not 1 <= n <= _MAX_N:
        raise BadInputError(cfg_p, f"{n} latents is out of range [1, {_MAX_N}]")
    k = need_int(d, "k", cfg_p, 1, n)
    transcode = _opt(d, "transcode", bool, cfg_p, False)
    header, _ = safetensors_header(w_p, "sparsify SAE weights", _FIX)
    if "encoder.weight" not in header:
        raise BadInputError(w_p, "has no 'encoder.weight'; not a sparsify SAE", _FIX)
    if "W_skip" in header:
        raise BadInputError(w_p, "skip connections (W_skip) are not supported")
    dec = header.get("W_dec", (None, []))[1]
    d_out = dec[1] if len(dec) == 2 and dec[1] > 0 else d_in
    sd = _weights(w_p, {"encoder.weight": (n, d_in), "encoder.bias": (n,), "W_dec": (n, d_out),
                        "b_dec": (d_out,)}, kind="sparsify")
    cfg = _config(cfg_p, arch="topk", d_in=d_in, n_latents=n, k=k, d_out=d_out,
                  apply_b_dec_to_input=not transcode,
                  meta={"imported_from": "sparsify", "source": str(path), "transcode": transcode})
    sae = SAE(cfg, dtype=sd["encoder.weight"].dtype)
    with torch.no_grad():
        sae.W_enc.copy_(sd["encoder.weight"])
        sae.b_enc.copy_(sd["encoder.bias"])
        sae.W_dec.copy_(sd["W_dec"])
        sae.b_dec.copy_(sd["b_dec"])
    return sae


def load_any(path: PathLike, device: str = "cpu") -> SAE:
    """Load a mindscope, SAELens or sparsify SAE folder, detected from its files; every file is
    checked (BadInputError naming it) before anything is allocated."""
    path = _folder(path, "")
    if (path / "sae_weights.safetensors").exists():
        return import_saelens(path).to(device)
    cfg_p = path / "cfg.json"
    if not cfg_p.exists():
        raise FileNotFoundError(f"{path}: no cfg.json; not an SAE folder")
    if _read_cfg(path, "SAE")[1].get("format") == "mindscope-sae":
        return load_ours(path, device)
    return import_sparsify(path).to(device)
