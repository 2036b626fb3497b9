"""Probe weights as direction files (``VectorSet`` safetensors + JSON sidecar) for steering
or ablation, and back.

>>> # save_probe(probe, "runs/x/cur_probe", site="resid_post.12", model=lm.name)
>>> # vs = VectorSet.load("runs/x/cur_probe")   # (k, d) rows named by class
>>> # with lm.intervene(ms.Ablate("resid_post.12", vs.data, subspace=True)): ...
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..core import VectorSet
from ._linear import LinearProbe


def _row_names(p: LinearProbe) -> list[str]:
    if p.classes is None:
        return ["value"]
    if p.weight.shape[0] == 1:
        return [f"{p.classes[1]} vs {p.classes[0]}"]
    return [str(c) for c in p.classes]


def probe_to_vectors(probe: LinearProbe, site: str = "", model: str = "",
                     data_hash: str = "") -> VectorSet:
    """The probe's raw-space weight rows (k, d) as a ``VectorSet`` (method ``probe``); the bias,
    classes, kind and C travel in ``meta`` so ``vectors_to_probe`` restores the probe."""
    site = site or probe.meta.get("site", "")
    meta = {"probe_kind": probe.kind, "bias": [float(b) for b in probe.bias],
            "classes": probe.classes, "C": probe.C, "probe_meta": probe.meta}
    return VectorSet(probe.weight.float(), names=_row_names(probe), site=site, model=model,
                     method="probe", data_hash=data_hash, normalisation="none", meta=meta)


def vectors_to_probe(vs: VectorSet) -> LinearProbe:
    m = vs.meta
    if "probe_kind" not in m:
        raise ValueError("this VectorSet was not exported from a probe (no 'probe_kind' in its "
                         "metadata); use VectorSet.load for plain directions")
    return LinearProbe(m["probe_kind"], vs.data.float(), torch.tensor(m["bias"], dtype=torch.float64),
                       m["classes"], float(m["C"]), dict(m.get("probe_meta", {})))


def save_probe(probe: LinearProbe, path, site: str = "", model: str = "",
               data_hash: str = "") -> Path:
    """Write ``path.safetensors`` + ``path.json`` atomically; returns the tensor path."""
    return probe_to_vectors(probe, site, model, data_hash).save(path)


def load_probe(path) -> LinearProbe:
    return vectors_to_probe(VectorSet.load(path))
