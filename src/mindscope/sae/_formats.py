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
import re
from pathlib import Path

import torch

from ..core import (BadInputError, atomic_save_tensors, atomic_write_json, need, need_int,
                    safetensors_header)
from ._checked import (_FIX, _MAX_D, _MAX_N, PathLike, _config, _folder, _opt, _read_cfg,
                       _weights, read_ours)
from . import archs
from ._interop import (SAELENS_OLD_KEYS, SAELENS_V6_KEYS, SAELENS_VERSION, hook_from_site,
                       site_from_hook)
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
    arch = c.spec.saelens
    if not arch:
        raise ValueError(f"export_saelens: a {c.arch} SAE has no SAELens equivalent")
    tensors = {"W_enc": w["W_enc"].T.contiguous(), "W_dec": w["W_dec"], "b_enc": w["b_enc"],
               "b_dec": w["b_dec"]}
    if arch == "jumprelu":
        tensors["threshold"] = w["threshold"]
    hook, hf = hook_from_site(c.site)
    cfg = {"architecture": arch, "d_in": c.d_in, "d_sae": c.n_latents,
           "dtype": str(sae.W_enc.dtype).replace("torch.", ""), "device": "cpu",
           "apply_b_dec_to_input": bool(c.b_dec_in), "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"sae_lens_version": SAELENS_VERSION, "model_name": c.model or None,
                        "hook_name": hook or None, "hf_hook_name": hf,
                        "exported_by": "mindscope", "mindscope_arch": c.arch,
                        "mindscope_site": c.site or None}}
    if arch == "topk":
        cfg["k"] = c.k
        cfg["rescale_acts_by_decoder_norm"] = False
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
    version = str(meta.get("sae_lens_version") or d.get("sae_lens_version") or "0")
    v6 = int(re.match(r"\d*", version).group() or 0) >= 6     # what sae_lens itself checks
    unknown = sorted(set(d) - SAELENS_V6_KEYS - ({"meta"} if v6 else SAELENS_OLD_KEYS | {"meta"}))
    if unknown:
        raise BadInputError(cfg_p, f"unknown SAELens config key(s) {unknown[:5]}: mindscope cannot "
                                   "tell whether they change encode/decode, so it refuses rather "
                                   "than drop them", "load it with sae_lens and fold them into the "
                                   "weights, or remove keys you know to be training-only")
    if d.get("hook_head_index") is not None or d.get("reshape_activations", "none") not in ("none", None):
        raise BadInputError(cfg_p, "per-head SAEs (hook_head_index / reshape_activations=hook_z) "
                                   "are not supported")
    arch = _opt(d, "architecture", str, cfg_p, "standard")
    fn_kw = _opt(d, "activation_fn_kwargs", dict, cfg_p, {})
    k = _opt(d, "k", int, cfg_p) or (need_int(fn_kw, "k", cfg_p, 1, _MAX_N, "activation_fn_kwargs")
                                     if fn_kw.get("k") is not None else None)
    if arch == "standard" and d.get("activation_fn_str") == "topk":
        arch = "topk"
    spec = archs.from_saelens(arch)
    if spec is None:
        known = [a for n in archs.names() for a in archs.get(n).saelens_reads]
        raise BadInputError(cfg_p, f"SAELens architecture {arch!r:.40} is not supported "
                                   f"(supported: {', '.join(known)})")
    ours = spec.name
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
                  model=names[0] or names[1] or "",
                  site=meta.get("mindscope_site") or site_from_hook(names[2] or names[3]) or "",
                  apply_b_dec_to_input=b_in, meta={"imported_from": "saelens", "source": str(path)})
    sd = _weights(w_p, {"W_enc": (d_in, n), "W_dec": (n, d_in), "b_enc": (n,), "b_dec": (d_in,)},
                  {"threshold": (n,), "log_threshold": (n,), "scaling_factor": (n,)}, "SAELens")
    if "log_threshold" in sd and "threshold" not in sd:
        sd["threshold"] = sd["log_threshold"].exp()
    if ours == "jumprelu" and "threshold" not in sd:
        raise BadInputError(w_p, "jumprelu SAE without a 'threshold' tensor", _FIX)
    sae = SAE(cfg, dtype=sd["W_enc"].dtype)
    W_enc, b_enc, W_dec = sd["W_enc"], sd["b_enc"], sd["W_dec"]
    if "scaling_factor" in sd:               # old finetuning scale: f -> f * s_i
        W_dec = W_dec * sd["scaling_factor"][:, None]
    if _opt(d, "rescale_acts_by_decoder_norm", bool, cfg_p, False):
        if ours != "topk":
            raise BadInputError(cfg_p, f"rescale_acts_by_decoder_norm with architecture {arch!r} "
                                       "is not supported (topk only)")
        # sae_lens TopKSAE: z = (pre @ W_enc + b_enc) * |W_dec_i|, decode (f / |W_dec_i|) @ W_dec.
        # Folding the norms into the encoder gives the same codes and the same reconstruction.
        nrm = W_dec.norm(dim=-1)                                             # (n,)
        if not bool((nrm > 0).all()):
            raise BadInputError(w_p, "rescale_acts_by_decoder_norm with a zero decoder row "
                                     "(the SAELens code divides by it)", _FIX)
        W_enc, b_enc, W_dec = W_enc * nrm, b_enc * nrm, W_dec / nrm[:, None]
    with torch.no_grad():
        sae.W_enc.copy_(W_enc.T)
        sae.b_enc.copy_(b_enc)
        sae.W_dec.copy_(W_dec)
        sae.b_dec.copy_(sd["b_dec"])
    if sae.threshold_vec is not None:
        spec.set_threshold(sae, sd["threshold"])
    return sae


def export_sparsify(sae: SAE, path: PathLike) -> Path:
    """Write a TopK autoencoder in sparsify's layout (cfg.json + sae.safetensors)."""
    c = sae.cfg
    if not c.spec.sparsify or not c.b_dec_in or c.transcoder:
        raise ValueError("export_sparsify: only topk autoencoders with apply_b_dec_to_input")
    w = _raw_weights(sae)
    # sparsify renormalises decoder rows to unit norm when normalize_decoder is true (at every
    # fine-tuning step), so rows must already be unit there. If all raw rows share one norm c
    # (our unit-norm decoder divided by the scale), c moves into the encoder: codes are
    # multiplied by c (a positive constant, so the top-k set is the same) and the decoder rows
    # divided by it, so the reconstruction is unchanged. Otherwise the rows are written as
    # they are with normalize_decoder false.
    nrm = w["W_dec"].norm(dim=1)                                                   # (n,)
    c0 = float(nrm.mean())
    unit = c0 > 0 and float((nrm - c0).abs().max()) <= 1e-4 * c0
    if unit:
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * c0, w["b_enc"] * c0, w["W_dec"] / nrm[:, None]
    tensors = {"encoder.weight": w["W_enc"], "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}
    path = Path(path)
    atomic_save_tensors(path / "sae.safetensors", tensors)
    atomic_write_json(path / "cfg.json", {"activation": "topk", "expansion_factor": c.n_latents // c.d_in,
                                          "normalize_decoder": unit, "num_latents": c.n_latents,
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
    site = site_from_hook(path.name)              # sparsify names folders by hookpoint: layers.12
    cfg = _config(cfg_p, arch="topk", d_in=d_in, n_latents=n, k=k, d_out=d_out,
                  apply_b_dec_to_input=not transcode, site=site if site != path.name else "",
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
    from ._registry import resolve_sae

    path = _folder(resolve_sae(path), "")
    if (path / "sae_weights.safetensors").exists():
        return import_saelens(path).to(device)
    cfg_p = path / "cfg.json"
    if not cfg_p.exists():
        raise FileNotFoundError(f"{path}: no cfg.json; not an SAE folder")
    if _read_cfg(path, "SAE")[1].get("format") == "mindscope-sae":
        return load_ours(path, device)
    return import_sparsify(path).to(device)
