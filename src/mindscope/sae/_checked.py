"""Checked reading of SAE folders: every reader (ours in ``_sae``, SAELens / sparsify in
``_formats``) goes through these, so a damaged or hostile folder fails with a BadInputError
naming the file before anything is allocated. Imports neither ``_sae`` nor ``_formats``."""
from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Union

from ..core import (BadInputError, check_finite, load_safetensors, need, need_int, read_json,
                    safetensors_header)
from ._config import SAEConfig

PathLike = Union[str, os.PathLike]
log = logging.getLogger(__name__)
_FLOATS = ("F32", "F16", "BF16", "F64")
_FIX = "the folder is damaged or incomplete: save, export or download the SAE again"
_MAX_D, _MAX_N = 1 << 20, 1 << 26


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


def read_ours(path: PathLike) -> tuple[SAEConfig, dict]:
    """The config and tensors of a folder written by ``SAE.save`` (cfg.json + sae.safetensors),
    every field and tensor checked first; BadInputError naming the file for anything wrong."""
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
    sd = _weights(w_p, want, kind="mindscope")
    extra = sorted(set(sd) - set(want))
    if extra:
        raise BadInputError(w_p, f"holds unexpected tensor(s) {extra[:5]} for a {cfg.arch} SAE",
                            _FIX)
    return cfg, sd
