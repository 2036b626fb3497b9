"""Provenance of a run: library versions, the git commit, and fingerprints of the model and the
data (one of each for every package that records where a result came from)."""
from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional

from ..core import data_hash

__all__ = ["versions", "git_hash", "model_hash", "data_hash"]


def git_hash(path=None) -> Optional[str]:
    """HEAD commit of the repository holding ``path`` (default: this package), or None."""
    where = Path(path or __file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict:
    """Python, platform and the versions of mindscope and the libraries its numbers depend on
    (read from package metadata: nothing is imported; a missing package is left out)."""
    import torch

    from .. import __version__
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "mindscope": __version__, "torch": torch.__version__}
    for dist in ("transformers", "numpy", "scikit-learn"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:  # optional
            pass
    return out


def model_hash(lm, sample: int = 4096) -> str:
    """A cheap fingerprint of a model: sha256 over its config and, per parameter, its name,
    shape, dtype and ``sample`` evenly strided values (not every weight: fast on big models)."""
    h = hashlib.sha256()
    cfg = getattr(lm.model, "config", None)
    h.update((cfg.to_json_string(use_diff=False) if cfg is not None else "").encode())
    for name, p in lm.model.named_parameters():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // sample)
        h.update(f"{name}{tuple(p.shape)}{p.dtype}".encode())
        h.update(flat[::step][:sample].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
