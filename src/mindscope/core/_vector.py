"""``Vector`` / ``VectorSet``: directions in a model's activation space + where they came from.

A vector file is ``name.safetensors`` (tensor ``vector`` (d,) or ``vectors`` (k, d)) plus a JSON
sidecar ``name.json`` holding the metadata and the SHA-256 of the tensor bytes, so a truncated
file or a sidecar that belongs to another file is caught on load. Both are written atomically.

>>> import torch
>>> v = Vector(torch.tensor([3.0, 4.0]), site="resid_post.1", model="tiny")
>>> float(v.norm), (2 * v).data.tolist(), round(v.cosine(Vector(torch.tensor([4.0, 3.0]))), 2)
(5.0, [6.0, 8.0], 0.96)
>>> s = VectorSet(torch.eye(2), names=["a", "b"])
>>> s["b"].data.tolist(), s.cosine_matrix().tolist()
([0.0, 1.0], [[1.0, 0.0], [0.0, 1.0]])
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import torch

from ._files import (BadInputError, atomic_write, atomic_write_text, check_finite, load_safetensors,
                     read_json)

log = logging.getLogger(__name__)

LAYER_CONVENTION = ("mindscope: L counts blocks from 0; resid_post.L is the output of block L "
                    "== HF hidden_states[L+1]; resid_pre.L == resid_post.(L-1)")
FORMAT_VERSION = 1
PathLike = Union[str, os.PathLike]


def data_hash(*items) -> str:
    """A short, stable SHA-256 of the data a vector was made from (texts, words, settings)."""
    blob = json.dumps(items, sort_keys=True, default=str, ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _tensor_sha(t: torch.Tensor) -> str:
    t = t.detach().cpu().contiguous()
    raw = t.view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)
    return hashlib.sha256(raw.numpy().tobytes()).hexdigest()


def _paths(path: PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".json":
        p = p.with_suffix(".safetensors")
    elif p.suffix != ".safetensors":
        p = p.with_name(p.name + ".safetensors")
    return p, p.with_suffix(".json")


def _save(path: PathLike, key: str, data: torch.Tensor, meta: dict) -> Path:
    from safetensors.torch import save_file

    st, side = _paths(path)
    data = data.detach().cpu().contiguous()
    meta = {**meta, "format": "mindscope-vector", "format_version": FORMAT_VERSION,
            "tensor": key, "shape": list(data.shape), "dtype": str(data.dtype).replace("torch.", ""),
            "sha256": _tensor_sha(data), "file": st.name}
    atomic_write(st, lambda tmp: save_file({key: data}, tmp, metadata={"mindscope": "vector"}))
    atomic_write_text(side, json.dumps(meta, indent=2) + "\n")
    return st


def _load(path: PathLike, require_sidecar: bool) -> tuple[dict[str, torch.Tensor], dict]:
    st, side = _paths(path)
    if not st.is_file():
        raise FileNotFoundError(f"vector file {st} does not exist")
    fix = "Re-create it (Vector.save / mindscope vector extract)"
    tensors = load_safetensors(st, "vector file", fix)
    if not tensors:
        raise BadInputError(st, "holds no tensor", fix)
    if not side.is_file():
        if require_sidecar:
            raise FileNotFoundError(f"{st} has no JSON sidecar {side.name}; a mindscope vector is "
                                    "saved as a .safetensors + .json pair. Pass "
                                    "require_sidecar=False to load the bare tensor without metadata.")
        return tensors, {}
    try:
        meta = read_json(side, max_bytes=16 << 20, expect=dict, what="vector sidecar")
    except BadInputError as e:
        raise BadInputError(f"sidecar {side} is not valid JSON or not a sidecar ({e.problem}); "
                            "restore it or re-save the vector") from None
    key = meta.get("tensor")
    if not isinstance(key, str) or key not in tensors:
        raise BadInputError(side, f"describes tensor {str(key)[:40]!r} but {st.name} holds "
                                  f"{sorted(tensors)[:5]}: the two files do not belong together")
    t = tensors[key]
    if list(t.shape) != meta.get("shape") or meta.get("sha256") != _tensor_sha(t):
        raise BadInputError(f"sidecar {side} does not match {st} (shape {list(t.shape)} vs "
                            f"{str(meta.get('shape'))[:40]}, or a different checksum): the "
                            "tensor file was modified or the sidecar belongs to another vector")
    for k in ("names", "sites"):
        if meta.get(k) is not None and not (isinstance(meta[k], list)
                                            and all(isinstance(x, str) for x in meta[k])):
            raise BadInputError(side, f"field {k!r} should be a list of strings")
    for k in _META_FIELDS + ("kind",):
        if meta.get(k) is not None and not isinstance(meta[k], str):
            raise BadInputError(side, f"field {k!r} should be a string, got {str(meta[k])[:40]!r}")
    if not isinstance(meta.get("meta", {}), dict):
        raise BadInputError(side, "field 'meta' should be a JSON object")
    return tensors, meta


def _checked(cls, where: Path, t: torch.Tensor, **kw):
    """Build a Vector / VectorSet from a loaded tensor; bad data -> BadInputError naming where."""
    check_finite(t, where, "the direction", "re-create the vector from good activations")
    if t.numel() == 0:
        raise BadInputError(where, f"holds an empty tensor {tuple(t.shape)}")
    try:
        return cls(t, **{k: v for k, v in kw.items() if v is not None})
    except (ValueError, TypeError) as e:
        raise BadInputError(where, str(e)) from None


_META_FIELDS = ("site", "model", "method", "data_hash", "normalisation", "layer_convention")


@dataclass(eq=False)
class _Base:
    site: str = ""
    """Site the vector was read at, e.g. ``resid_post.15`` (see LAYER_CONVENTION)."""
    model: str = ""
    """Name of the model it was made for (``lm.name``); checked when applied."""
    method: str = ""
    """How it was made: ``mean_diff``, ``concept``, ``pca_diff``, ``response_mean``, ``probe``..."""
    data_hash: str = ""
    """Hash of the data (texts, words, settings) it was made from."""
    normalisation: str = "none"
    """``none`` (raw activation units), ``unit`` (L2 norm 1), or a free description."""
    layer_convention: str = LAYER_CONVENTION
    """What the layer index in ``site`` means."""
    meta: dict = field(default_factory=dict)
    """Anything else (counts, positions, template, explained variance...), JSON-serialisable."""

    def _meta(self) -> dict:
        return {**{k: getattr(self, k) for k in _META_FIELDS}, "meta": self.meta}

    def _check_model(self, lm, site: Optional[str], allow_other_model: bool, what: str) -> None:
        d = self.data.shape[-1]
        made = f"made for {self.model or 'an unknown model'}" + (f" at {self.site}" if self.site else "")
        if d != lm.d_model:
            raise ValueError(f"{what} has dimension {d} ({made}) but {lm.name} has d_model "
                             f"{lm.d_model}: it was made for another model")
        if self.model and self.model != lm.name and not allow_other_model:
            raise ValueError(f"{what} was {made}, not for {lm.name}; pass allow_other_model=True "
                             "if the models share an activation space (e.g. a fine-tune)")
        if site is not None:
            names = lm.expand_sites(site)
            kinds = {n.split(".")[0] for n in names}
            mine = self.site.split(".")[0] if self.site else None
            resid = {"resid_pre", "resid_mid", "resid_post", "embed"}
            if mine and not (kinds <= {mine} or (mine in resid and kinds <= resid)):
                raise ValueError(f"{what} was read at {self.site} but is applied at {site}; "
                                 "a residual-stream vector belongs at a resid_* site "
                                 "(and an mlp_out/attn_out vector at its own kind)")
            if self.site and names != [self.site]:
                log.info("%s (read at %s) applied at %s", what, self.site, ", ".join(names))


@dataclass(eq=False)
class Vector(_Base):
    """One direction (d,) + metadata. Arithmetic keeps the left operand's metadata."""

    data: torch.Tensor = None  # (d,)

    def __init__(self, data, site: str = "", model: str = "", method: str = "", data_hash: str = "",
                 normalisation: str = "none", layer_convention: str = LAYER_CONVENTION,
                 meta: Optional[dict] = None):
        data = torch.as_tensor(data)
        if data.dim() != 1:
            raise ValueError(f"a Vector holds one direction (d,); got shape {tuple(data.shape)} "
                             "(use VectorSet for (k, d))")
        if not data.is_floating_point():
            data = data.float()
        super().__init__(site, model, method, data_hash, normalisation, layer_convention,
                         dict(meta or {}))
        self.data = data

    def __repr__(self) -> str:
        return (f"Vector(d={self.d}, norm={float(self.norm):.4g}, site={self.site!r}, "
                f"model={self.model!r}, method={self.method!r})")

    @property
    def d(self) -> int:
        return self.data.shape[0]

    @property
    def norm(self) -> torch.Tensor:
        return self.data.float().norm()

    @property
    def dtype(self) -> torch.dtype:
        return self.data.dtype

    def with_data(self, data: torch.Tensor, **changes) -> "Vector":
        out = replace(self, **changes) if changes else replace(self)
        out.data = data
        out.meta = dict(self.meta)
        return out

    def unit(self) -> "Vector":
        n = self.norm
        if float(n) == 0:
            raise ValueError("cannot normalise a zero vector")
        return self.with_data(self.data / n, normalisation="unit")

    def to(self, *args, **kw) -> "Vector":
        return self.with_data(self.data.to(*args, **kw))

    def cosine(self, other: "Vector | torch.Tensor") -> float:
        o = other.data if isinstance(other, Vector) else torch.as_tensor(other)
        return float(torch.nn.functional.cosine_similarity(self.data.float(), o.float(), dim=0))

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Projection of activations (…, d) on the unit direction -> (…)."""
        u = self.data.float() / self.norm
        return h.float() @ u

    # ---- arithmetic ---------------------------------------------------------------------
    def _other(self, o, op: str) -> torch.Tensor:
        if isinstance(o, Vector):
            if o.d != self.d:
                raise ValueError(f"cannot {op} vectors of dimension {self.d} and {o.d}")
            if self.model and o.model and self.model != o.model:
                raise ValueError(f"cannot {op} a vector of {self.model} and one of {o.model}")
            return o.data.to(self.data.dtype)
        return torch.as_tensor(o, dtype=self.data.dtype)

    def _method(self, op, o) -> str:
        other = o.method or "vector" if isinstance(o, Vector) else f"{float(o):g}"
        return f"({self.method or 'vector'}){op}({other})"

    def __add__(self, o):
        return self.with_data(self.data + self._other(o, "add"), method=self._method("+", o))

    def __sub__(self, o):
        return self.with_data(self.data - self._other(o, "subtract"), method=self._method("-", o))

    def __mul__(self, s):
        return self.with_data(self.data * float(s), normalisation="none"
                              if self.normalisation == "unit" else self.normalisation)

    __rmul__ = __mul__

    def __truediv__(self, s):
        return self * (1.0 / float(s))

    def __neg__(self):
        return self * -1.0

    # ---- use with a model ---------------------------------------------------------------
    def check(self, lm, site: Optional[str] = None, allow_other_model: bool = False) -> "Vector":
        """Raise a clear error if this vector does not fit ``lm`` (dimension, model, site kind)."""
        self._check_model(lm, site, allow_other_model, f"vector ({self.method or 'vector'})")
        return self

    def add(self, lm, scale=1.0, site: Optional[str] = None, positions="all",
            allow_other_model: bool = False):
        """An ``Add`` intervention ``h + scale * v`` at ``site`` (default: where it was read)."""
        from ._interventions import Add

        site = site or self.site
        if not site:
            raise ValueError("this vector records no site; pass site='resid_post.L'")
        self.check(lm, site, allow_other_model)
        return Add(site, self.data, scale=scale, positions=positions)

    # ---- files --------------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        """Write ``path`` (.safetensors) + ``.json`` sidecar atomically; returns the tensor path."""
        return _save(path, "vector", self.data, {"kind": "Vector", **self._meta()})

    @classmethod
    def load(cls, path: PathLike, require_sidecar: bool = True) -> "Vector":
        tensors, meta = _load(path, require_sidecar)
        st = _paths(path)[0]
        if meta and meta.get("kind") != "Vector":
            raise BadInputError(st, f"holds a {str(meta.get('kind'))[:30]}, not a Vector; use "
                                    "VectorSet.load")
        key = meta.get("tensor") or ("vector" if "vector" in tensors else None)
        if key is None:
            if len(tensors) != 1:
                raise BadInputError(st, f"holds {sorted(tensors)[:5]}; expected one tensor or "
                                        "'vector'")
            key = next(iter(tensors))
        return _checked(cls, st, tensors[key], **{k: meta[k] for k in _META_FIELDS if k in meta},
                        meta=meta.get("meta", {}))


@dataclass
class PCA:
    """Principal components of a set of vectors."""

    components: torch.Tensor
    """(n, d) unit principal directions, strongest first."""
    explained_variance: torch.Tensor
    """(n,) variance along each component."""
    explained_variance_ratio: torch.Tensor
    """(n,) fraction of the total variance along each component."""
    mean: torch.Tensor
    """(d,) the mean subtracted before the decomposition (zeros if not centred)."""

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean.to(x.device)) @ self.components.to(x.device).T  # (N, n)


def pca(x: torch.Tensor, n_components: Optional[int] = None, center: bool = True) -> PCA:
    """PCA of rows x (N, d) by SVD (float64), like scikit-learn's (sign: largest |loading| > 0)."""
    x = x.double()
    mean = x.mean(0) if center else torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    u, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    signs = torch.sign(vt.gather(1, vt.abs().argmax(1, keepdim=True))).squeeze(1)
    vt = vt * signs.unsqueeze(1)
    var = s ** 2 / max(x.shape[0] - 1, 1)
    total = var.sum() if center else ((x - mean) ** 2).sum() / max(x.shape[0] - 1, 1)
    n = n_components or vt.shape[0]
    return PCA(vt[:n].float(), var[:n].float(), (var[:n] / total.clamp(min=1e-30)).float(),
               mean.float())


@dataclass(eq=False)
class VectorSet(_Base):
    """k named directions (k, d) sharing metadata: concepts, emotions, roles, or one per layer
    (then ``sites`` names each row's site)."""

    data: torch.Tensor = None  # (k, d)
    names: list = field(default_factory=list)
    sites: list = field(default_factory=list)

    def __init__(self, data, names: Optional[Sequence[str]] = None,
                 sites: Optional[Sequence[str]] = None, site: str = "", model: str = "",
                 method: str = "", data_hash: str = "", normalisation: str = "none",
                 layer_convention: str = LAYER_CONVENTION, meta: Optional[dict] = None):
        data = torch.as_tensor(data)
        if data.dim() != 2:
            raise ValueError(f"a VectorSet holds (k, d) directions; got shape {tuple(data.shape)}")
        if not data.is_floating_point():
            data = data.float()
        k = data.shape[0]
        names = [str(n) for n in names] if names is not None else [str(i) for i in range(k)]
        sites = list(sites) if sites is not None else [site] * k
        if len(names) != k or len(sites) != k:
            raise ValueError(f"VectorSet of {k} rows got {len(names)} names and {len(sites)} sites")
        if len(set(names)) != k:
            raise ValueError("VectorSet names must be unique")
        super().__init__(site or (sites[0] if len(set(sites)) == 1 else ""), model, method,
                         data_hash, normalisation, layer_convention, dict(meta or {}))
        self.data, self.names, self.sites = data, names, sites

    @classmethod
    def from_vectors(cls, vectors: Sequence[Vector], names: Optional[Sequence[str]] = None,
                     **kw) -> "VectorSet":
        if not vectors:
            raise ValueError("no vectors given")
        v0 = vectors[0]
        base = {k: getattr(v0, k) for k in ("model", "method", "data_hash", "normalisation")}
        return cls(torch.stack([v.data for v in vectors]), names=names,
                   sites=[v.site for v in vectors], **{**base, **kw})

    def __repr__(self) -> str:
        return (f"VectorSet(k={len(self)}, d={self.d}, names={self.names[:6]}"
                f"{'...' if len(self) > 6 else ''}, model={self.model!r}, method={self.method!r})")

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def d(self) -> int:
        return self.data.shape[1]

    def __getitem__(self, key: Union[int, str]) -> Vector:
        if isinstance(key, str):
            if key not in self.names:
                raise KeyError(f"{key!r} not in this set; names: {self.names[:20]}")
            key = self.names.index(key)
        return Vector(self.data[key], site=self.sites[key], model=self.model,
                      method=self.method, data_hash=self.data_hash,
                      normalisation=self.normalisation, layer_convention=self.layer_convention,
                      meta={**self.meta, "name": self.names[key]})

    def __iter__(self) -> Iterator[Vector]:
        return (self[i] for i in range(len(self)))

    def check(self, lm, allow_other_model: bool = False) -> "VectorSet":
        self._check_model(lm, None, allow_other_model, f"vector set ({self.method or 'vectors'})")
        for s in set(self.sites) - {""}:
            lm.expand_sites(s)
        return self

    # ---- geometry -----------------------------------------------------------------------
    def norms(self) -> torch.Tensor:
        return self.data.float().norm(dim=1)  # (k,)

    def cosine_matrix(self) -> torch.Tensor:
        u = self.data.float() / self.norms().clamp(min=1e-12).unsqueeze(1)
        return u @ u.T  # (k, k)

    def pca(self, n_components: Optional[int] = None, center: bool = True) -> PCA:
        return pca(self.data, n_components, center)

    def mean(self) -> Vector:
        return Vector(self.data.float().mean(0), site=self.site, model=self.model,
                      method=f"mean({self.method})", data_hash=self.data_hash)

    def centered(self) -> "VectorSet":
        """Each row minus the mean over rows (the emotion-vector recipe)."""
        return self.with_data(self.data - self.data.mean(0, keepdim=True))

    def unit(self) -> "VectorSet":
        return self.with_data(self.data / self.norms().clamp(min=1e-12).unsqueeze(1).to(self.data),
                              normalisation="unit")

    def with_data(self, data: torch.Tensor, **changes) -> "VectorSet":
        kw = {k: getattr(self, k) for k in _META_FIELDS}
        kw.update(changes)
        return VectorSet(data, names=list(self.names), sites=list(self.sites),
                         meta=dict(self.meta), **kw)

    # ---- files --------------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        return _save(path, "vectors", self.data, {"kind": "VectorSet", "names": self.names,
                                                  "sites": self.sites, **self._meta()})

    @classmethod
    def load(cls, path: PathLike) -> "VectorSet":
        tensors, meta = _load(path, require_sidecar=True)
        st = _paths(path)[0]
        if meta.get("kind") != "VectorSet":
            raise BadInputError(st, f"holds a {str(meta.get('kind'))[:30]}, not a VectorSet; "
                                    "use Vector.load")
        return _checked(cls, st, tensors[meta["tensor"]], names=meta.get("names"),
                        sites=meta.get("sites"),
                        **{k: meta[k] for k in _META_FIELDS if k in meta and k != "site"},
                        meta=meta.get("meta", {}))


def load_vector(path: PathLike) -> Union[Vector, VectorSet]:
    """Load either kind, by the sidecar's ``kind``."""
    _, side = _paths(path)
    if side.is_file():
        try:
            kind = read_json(side, max_bytes=16 << 20, expect=dict).get("kind")
        except ValueError:  # BadInputError: Vector.load below names the problem
            kind = None
        if kind == "VectorSet":
            return VectorSet.load(path)
    return Vector.load(path)
