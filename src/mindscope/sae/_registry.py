"""A local registry of named SAEs: ``SAE.load("smollm2-135m-instruct/resid_post.15/topk-4608")``.

The registry is a folder, ``$MINDSCOPE_SAE_REGISTRY`` (default ``$MINDSCOPE_CACHE/saes``, i.e.
``~/.cache/mindscope/saes``). A name is a path inside it, ``MODEL/SITE/ARCH-N`` by default; its
folder holds ``release.json``: where the SAE folder is (``path``, a link: nothing is copied) and
the metadata a SAELens release carries (release, sae_id, model, hook_name, d_in, d_sae,
architecture, l0, variance_explained, neuronpedia_id, ...). Nothing is ever downloaded: a
hub-looking name that is not registered is refused with the way to register it.

>>> # name = register("runs/demo/sae/topk")          # -> 'smollm2-135m-instruct/resid_post.15/topk-4608'
>>> # sae = SAE.load(name); [r["name"] for r in list_saes()]
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Optional, Union

from ..core import BadInputError, atomic_write_json, read_json

PathLike = Union[str, os.PathLike]
_NAME = re.compile(r"^[\w.+-]+(/[\w.+-]+)*$")


def registry_dir(registry: Optional[PathLike] = None) -> Path:
    """The registry folder: ``registry``, else ``$MINDSCOPE_SAE_REGISTRY``, else
    ``$MINDSCOPE_CACHE/saes`` (``~/.cache/mindscope/saes``)."""
    if registry is not None:
        return Path(registry)
    if os.environ.get("MINDSCOPE_SAE_REGISTRY"):
        return Path(os.environ["MINDSCOPE_SAE_REGISTRY"])
    cache = os.environ.get("MINDSCOPE_CACHE") or Path.home() / ".cache" / "mindscope"
    return Path(cache) / "saes"


def default_name(cfg) -> str:
    """``MODEL/SITE/ARCH-N`` from an SAE config (model path shortened to its last part)."""
    model = Path(str(cfg.model or "unknown-model")).name.removesuffix(".gguf") or "unknown-model"
    return f"{model}/{cfg.site or 'unknown-site'}/{cfg.arch}-{cfg.n_latents}"


def _check_name(name: str) -> str:
    if not _NAME.match(name) or any(p in ("..", ".") for p in name.split("/")):
        raise BadInputError(f"SAE name {name!r}: use letters, digits, '.', '-', '_', '+' and '/' "
                            "(e.g. smollm2-135m-instruct/resid_post.15/topk-4608)")
    return name


def register(folder: PathLike, name: Optional[str] = None, registry: Optional[PathLike] = None,
             release: str = "local", metrics: Optional[dict] = None, overwrite: bool = True) -> str:
    """Register the SAE folder ``folder`` (any layout ``load_any`` reads) under ``name``; returns
    the name. The registry entry links to the folder (absolute path) with its metadata."""
    from ._formats import load_any

    folder = Path(folder).resolve()
    sae = load_any(folder)  # checks the folder before anything is written
    c = sae.cfg
    name = _check_name(name or default_name(c))
    entry = registry_dir(registry) / name
    if (entry / "release.json").exists() and not overwrite:
        raise BadInputError(f"SAE name {name!r} is already registered; pick another --name")
    m = metrics
    if m is None and (folder / "metrics.json").is_file():
        try:
            m = read_json(folder / "metrics.json", expect=dict)
        except ValueError:
            m = None
    m = m or {}
    fvu = m.get("fvu")
    meta = {
        "name": name, "release": release, "sae_id": name, "path": str(folder),
        "model": c.model, "hook_name": c.site, "site": c.site, "d_in": c.d_in,
        "d_sae": c.n_latents, "architecture": c.arch, "k": c.k,
        "l0": m.get("l0"), "variance_explained": None if fvu is None else 1.0 - float(fvu),
        "fvu": fvu, "dead_fraction": m.get("dead_fraction"), "neuronpedia_id": None,
        "repo_id": None, "registered": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "format": "mindscope-sae-registry/1",
    }
    atomic_write_json(entry / "release.json", meta)
    return name


def list_saes(registry: Optional[PathLike] = None) -> list[dict]:
    """Every entry's metadata (``release.json``), sorted by name; ``exists`` says whether the
    linked folder is still there."""
    root = registry_dir(registry)
    out = []
    if not root.is_dir():
        return out
    for p in sorted(root.rglob("release.json")):
        try:
            meta = read_json(p, expect=dict, what="SAE registry entry")
        except ValueError:
            continue
        meta["name"] = p.parent.relative_to(root).as_posix()
        meta["exists"] = Path(str(meta.get("path", ""))).is_dir()
        out.append(meta)
    return out


def _looks_like_hub(spec: str) -> bool:
    s = spec.lower()
    return (s.startswith(("hf://", "http://", "https://")) or "huggingface" in s
            or s.startswith(("gemma-scope", "google/", "eleutherai/", "jbloom/", "openai/"))
            or (s.count("/") == 1 and not Path(spec).exists()))


def resolve_sae(spec: PathLike, registry: Optional[PathLike] = None) -> Path:
    """An SAE folder from a path or a registered name (else a clear offline error)."""
    p = Path(spec)
    if p.exists():  # a folder (or a file, which the loader then names as such)
        return p
    text = str(spec)
    root = registry_dir(registry)
    entry = root / text / "release.json"
    if _NAME.match(text) and entry.is_file():
        meta = read_json(entry, expect=dict, what="SAE registry entry")
        folder = Path(str(meta.get("path", "")))
        if not folder.is_dir():
            raise FileNotFoundError(f"SAE {text!r} is registered at {folder}, which no longer "
                                    f"exists; register it again (mindscope sae register --sae FOLDER "
                                    f"--name {text})")
        return folder
    known = [r["name"] for r in list_saes(registry)]
    hint = f"registered: {', '.join(known[:5])}{' ...' if len(known) > 5 else ''}" if known \
        else f"the registry {root} is empty"
    if _looks_like_hub(text):
        raise FileNotFoundError(
            f"{text!r} looks like a hub SAE; mindscope works offline and never downloads. Fetch "
            f"it on a machine with network access, then `mindscope sae register --sae FOLDER --name "
            f"{text}` ({hint})")
    raise FileNotFoundError(f"{text}: no such SAE folder (cfg.json + sae.safetensors) and no "
                            f"registered SAE of that name "
                            f"({hint}; see `mindscope sae list`)")
