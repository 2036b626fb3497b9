"""Export to (and read back) llama.cpp's control-vector GGUF layout.

The layout (llama.cpp ``common_control_vector_load_one`` and ``llama_adapter_cvec``):

- ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (string),
  ``controlvector.layer_count`` (uint32);
- one F32 1-D tensor of length n_embd per steered layer, named ``direction.{N}``, N >= 1.

Layer convention, verified in llama.cpp's source: ``direction.N`` is copied into the buffer at
``(N-1) * n_embd``; ``apply`` copies buffer offset ``(il-1) * n_embd`` into ``tensors[il]``; and
every model graph calls ``build_cvec(cur, il)`` on the *output* of block ``il`` (0-based, after
its MLP residual add). So ``direction.N`` is added to the output of block N, i.e. mindscope's
``resid_post.N`` (== ``resid_pre.(N+1)``); N = 0 is rejected by the loader, so block 0's output
cannot be steered, and only N < n_layer is applied. llama.cpp multiplies by the strength given
with ``--control-vector-scaled FILE S`` (1.0 for ``--control-vector``), so the scale is baked
into the stored tensors here.

>>> # export_control_vector({"resid_post.15": v}, "concept.gguf", model_hint="llama", scale=4)
>>> # llama-cli -m SmolLM2-135M-Instruct.Q4_1.gguf --control-vector concept.gguf
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..core import BadInputError, atomic_write, check_finite
from ..core import Vector, VectorSet

log = logging.getLogger(__name__)
ARCH = "controlvector"


def site_to_cvec_layer(site: str) -> int:
    """mindscope site -> llama.cpp control-vector index N (``direction.N``)."""
    kind, _, num = site.partition(".")
    if kind not in ("resid_post", "resid_pre") or not num.isdigit():
        raise ValueError(f"llama.cpp control vectors are added to block outputs; {site!r} is not "
                         "a resid_post.L / resid_pre.L site")
    n = int(num) if kind == "resid_post" else int(num) - 1
    if n < 1:
        raise ValueError(f"{site} maps to llama.cpp layer {n}, but llama.cpp never applies a "
                         "control vector to block 0's output (direction.0 is rejected); "
                         "steer at resid_post.1 or later")
    return n


def cvec_layer_to_site(n: int) -> str:
    return f"resid_post.{int(n)}"


def _as_mapping(vectors) -> dict[str, torch.Tensor]:
    if isinstance(vectors, Vector):
        if not vectors.site:
            raise ValueError("the vector records no site; pass {site: vector}")
        return {vectors.site: vectors.data}
    if isinstance(vectors, VectorSet):
        if any(not s for s in vectors.sites) or len(set(vectors.sites)) != len(vectors):
            raise ValueError("a VectorSet to export needs one distinct site per row (e.g. from "
                             "mean_difference over many sites)")
        return dict(zip(vectors.sites, vectors.data))
    return {s: getattr(v, "data", v) for s, v in dict(vectors).items()}


def export_control_vector(vectors: Union[Vector, VectorSet, dict], path: Union[str, os.PathLike],
                          model_hint: str = "llama", scale: float = 1.0,
                          n_layers: int | None = None) -> Path:
    """Write a llama.cpp control vector: ``scale * v`` for each site as ``direction.N`` (see the
    module docstring for the layer mapping). ``model_hint`` is llama.cpp's architecture name
    (``llama`` for SmolLM2). Written atomically."""
    import gguf

    rows: dict[int, np.ndarray] = {}
    for site, v in _as_mapping(vectors).items():
        n = site_to_cvec_layer(site)
        if n_layers is not None and n >= n_layers:
            raise ValueError(f"{site} is past the model's last block ({n_layers} blocks)")
        arr = (torch.as_tensor(v).detach().float().cpu() * float(scale)).numpy().astype(np.float32)
        if arr.ndim != 1:
            raise ValueError(f"{site}: a control vector direction must be 1-D; got {arr.shape}")
        rows[n] = rows.get(n, 0) + arr
    if not rows:
        raise ValueError("nothing to export")
    dims = {a.shape[0] for a in rows.values()}
    if len(dims) != 1:
        raise ValueError(f"directions have different dimensions {sorted(dims)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    def write(tmp: str) -> None:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_string(f"{ARCH}.model_hint", model_hint)
        w.add_uint32(f"{ARCH}.layer_count", len(rows))
        for n in sorted(rows):
            w.add_tensor(f"direction.{n}", rows[n])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    atomic_write(path, write)
    log.info("wrote %s: llama.cpp layers %s", path, sorted(rows))
    return path


def read_control_vector(path: Union[str, os.PathLike]) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a control-vector GGUF back -> ({mindscope site: (d,)}, {model_hint, layer_count}).
    Validates it the way llama.cpp does (names, F32, 1-D, equal lengths, N >= 1) and refuses
    NaN/Inf; anything wrong is a BadInputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"control vector {path} does not exist")
    try:
        return _read_cvec(path)
    except BadInputError:
        raise
    except Exception as e:  # noqa: BLE001 - gguf's reader fails in many ways on bad bytes
        raise BadInputError(path, f"is not a readable GGUF control vector ({type(e).__name__}: "
                                  f"{str(e)[:160]})", "export it again") from None


def _read_cvec(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    import gguf

    r = gguf.GGUFReader(str(path))

    def field(name):
        f = r.get_field(name)
        return None if f is None else f.contents()

    if field("general.architecture") != ARCH:
        raise BadInputError(path, f"is not a control vector (architecture "
                                  f"{str(field('general.architecture'))[:40]!r})")
    out, n_embd = {}, None
    for t in r.tensors:
        prefix, _, num = t.name.partition(".")
        if prefix != "direction" or not num.isdigit() or int(num) == 0:
            raise BadInputError(path, f"invalid direction tensor name {t.name[:40]!r}")
        if t.tensor_type != gguf.GGMLQuantizationType.F32:
            raise BadInputError(path, f"{t.name} is not F32")
        arr = np.asarray(t.data, dtype=np.float32).reshape(-1)
        if n_embd is not None and arr.shape[0] != n_embd:
            raise BadInputError(path, f"{t.name} does not match the other directions' length")
        if arr.shape[0] == 0:
            raise BadInputError(path, f"{t.name} is empty")
        n_embd = arr.shape[0]
        site = cvec_layer_to_site(int(num))
        if site in out:
            raise BadInputError(path, f"{t.name} appears twice")
        out[site] = torch.from_numpy(arr.copy())
        check_finite(out[site], path, t.name, "export it again from a finite vector")
    if not out:
        raise BadInputError(path, "holds no direction tensors", "export it again")
    return out, {"model_hint": field(f"{ARCH}.model_hint"),
                 "layer_count": field(f"{ARCH}.layer_count")}
