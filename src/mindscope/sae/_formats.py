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

import dataclasses
import logging
from pathlib import Path

import torch

from ..core._files import (BadInputError, atomic_save_tensors, atomic_write_json, check_finite,
                           load_safetensors, need, need_int, read_json, safetensors_header)
from ._config import SAEConfig
from ._sae import KEY_PREFIX, SAE, PathLike

log = logging.getLogger(__name__)
_FLOATS = ("F32", "F16", "BF16", "F64")
_FIX = "the folder is damaged or incomplete: save, export or download the SAE again"
_MAX_D, _MAX_N = 1 << 20, 1 << 26


# ---- checked reading (every reader below goes through these) ---------------------------------

def _folder(path: PathLike, kind: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such {kind + ' ' if kind else ''}SAE folder")
    if not path.is_dir():
        raise BadInputError(path, f"is a file, not a {kind + ' ' if kind else ''}SAE folder "
                                  "(cfg.json + weights)")
    return path


def _read_cfg(path: Path, kind: str) -> tuple[Path, dict]:
    cfg_p = path / "cfg.json"
    return cfg_p, read_json(cfg_p, max_bytes=16 << 20, expect=dict, what=f"{kind} SAE config",
                            fix=_FIX)


def _opt(d: dict, key: str, kinds, where, default=None):
    """d[key] if present and not None, type-checked; else default."""
    if d.get(key) is None:
        return default
    if kinds is int:
        return need_int(d, key, where, 0, 1 << 40)
    return need(d, key, kinds, where)


def _config(cfg_p: Path, **kw) -> SAEConfig:
    try:
        return SAEConfig(**kw)
    except (TypeError, ValueError) as e:
        raise BadInputError(cfg_p, f"not a valid SAE config: {e}", _FIX) from None


def _weights(w_p: Path, want: dict, optional: dict = None, kind: str = "SAE") -> dict:
    """Tensors of ``w_p`` after checking, from the header alone, that every ``want`` tensor is
    there with its shape (None = any) and a float dtype; then loaded and checked for NaN/Inf.
    A hostile config can therefore never make us allocate more than the file holds."""
    optional = optional or {}
    header, _ = safetensors_header(w_p, f"{kind} SAE weights", _FIX)
    missing = [k for k in want if k not in header]
    if missing:
        raise BadInputError(w_p, f"has no tensor(s) {missing}; it holds {sorted(header)[:10]}",
                            _FIX)
    for name, (dt, shape) in header.items():
        if name not in want and name not in optional:
            continue
        exp = want.get(name, optional.get(name))
        if dt not in _FLOATS:
            raise BadInputError(w_p, f"tensor {name!r} has dtype {dt}; SAE weights are floats "
                                     f"({', '.join(_FLOATS)})", _FIX)
        if exp is not None and tuple(shape) != tuple(exp):
            raise BadInputError(w_p, f"tensor {name!r} has shape {tuple(shape)}, the config "
                                     f"(cfg.json) needs {tuple(exp)}", _FIX)
    sd = load_safetensors(w_p, f"{kind} SAE weights", _FIX)
    for name in [k for k in sd if k in want or k in optional]:
        check_finite(sd[name], w_p, f"tensor {name!r}")
    return sd


# Type checks of cfg.json fields; which fields may appear is SAEConfig's own list (a field added
# there loads even before it gets a check here).
_OURS = {"arch": str, "d_in": int, "n_latents": int, "k": int, "d_out": int, "model": str,
         "site": str, "out_site": str, "scale_in": (int, float), "scale_out": (int, float),
         "apply_b_dec_to_input": bool, "threshold_init": (int, float),
         "bandwidth": (int, float), "excluded_rows": str, "meta": dict}


def load_ours(path: PathLike, device: str = "cpu") -> SAE:
    """A folder written by ``SAE.save`` (cfg.json + sae.safetensors), every field and tensor
    checked first; BadInputError naming the file for anything wrong."""
    path = _folder(path, "mindscope")
    cfg_p, d = _read_cfg(path, "mindscope")
    if d.pop("format", None) != "mindscope-sae":
        raise BadInputError(cfg_p, "is not a mindscope SAE config (no format='mindscope-sae')",
                            "for SAELens/sparsify folders use mindscope.sae.load_any(path)")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(SAEConfig)})
    if unknown:
        raise BadInputError(cfg_p, f"unknown SAE config field(s) {unknown[:5]}", _FIX)
    for key, kinds in _OURS.items():
        if key in ("d_in", "n_latents"):
            need_int(d, key, cfg_p, 1, _MAX_D if key == "d_in" else _MAX_N)
        elif d.get(key) is not None:
            if kinds is int:
                need_int(d, key, cfg_p, 1, _MAX_N)
            else:
                need(d, key, kinds, cfg_p)
    cfg = _config(cfg_p, **d)
    n, d_in, d_out = cfg.n_latents, cfg.d_in, cfg.out_dim
    want = {"W_enc": (n, d_in), "b_enc": (n,), "W_dec": (n, d_out), "b_dec": (d_out,)}
    if cfg.arch == "jumprelu":
        want["log_threshold"] = (n,)
    if cfg.arch == "batchtopk":
        want["threshold"] = (n,)
    w_p = path / "sae.safetensors"
    pre = KEY_PREFIX if any(k.startswith(KEY_PREFIX) for k in
                            safetensors_header(w_p, "mindscope SAE weights", _FIX)[0]) else ""
    sd = {k[len(pre):] if k.startswith(pre) else k: v for k, v in
          _weights(w_p, {pre + k: s for k, s in want.items()}, kind="mindscope").items()}
    extra = sorted(set(sd) - set(want))
    if extra:
        raise BadInputError(w_p, f"holds unexpected tensor(s) {extra[:5]} for a {cfg.arch} SAE",
                            _FIX)
    sae = SAE(cfg, dtype=sd["W_enc"].dtype)
    sae.load_state_dict(sd)
    return sae.to(device)


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
