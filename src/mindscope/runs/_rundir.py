"""The run folder: ``run_config.json`` (every setting, library versions, git hash, model and
data hashes), ``results.json`` (metrics with CIs) and ``report.html``. Writes are atomic
(through ``core``'s file writers).

>>> to_jsonable({"x": float("nan"), "p": Path("a")})
{'x': None, 'p': 'a'}
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..core import atomic_write_bytes, run_lock
from ._provenance import git_hash, model_hash, versions

__all__ = ["RunDir", "to_jsonable", "write_json", "write_text", "save_html", "save_png",
           "weights_note", "chat_format_of"]


def to_jsonable(x: Any) -> Any:
    """Dataclasses, tensors, numpy values, tuples, paths and floats (nan -> None) made
    JSON-ready."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return to_jsonable(x.tolist())
    if isinstance(x, np.generic):  # numpy scalars: np.int64, np.float32, np.bool_
        return to_jsonable(x.item())
    if isinstance(x, float):
        return None if math.isnan(x) or math.isinf(x) else x
    if isinstance(x, Path):
        return str(x)
    if x is None or isinstance(x, (str, int, bool)):
        return x
    return repr(x)


def write_json(path, obj: Any) -> Path:
    """Atomic JSON write of ``to_jsonable(obj)``; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(to_jsonable(obj), indent=1) + "\n").encode())
    return path


def save_html(path, page) -> Path:
    """Atomic write of ``page`` (a ``Page``) as one HTML file; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, page.render().encode())
    return path


def write_text(path, text: str) -> Path:
    """Atomic text write (UTF-8)."""
    path = Path(path)
    atomic_write_bytes(path, text.encode())
    return path


def weights_note(lm_or_name) -> Optional[str]:
    """How the model's weights were made, where it matters for the numbers: the bundled
    SmolLM2 is a Q4_1 GGUF dequantized to float, not the original bf16 checkpoint.

    >>> "Q4_1" in weights_note("smollm2-135m-instruct")
    True
    """
    from ..core import ALIASES

    name = str(getattr(lm_or_name, "name", lm_or_name) or "")
    if name in ALIASES:
        return ALIASES[name].note
    if name.lower().endswith(".gguf") or "q4" in name.lower():
        return f"{name}: weights from a quantized GGUF, dequantized to float"
    return None


def chat_format_of(lm) -> Optional[str]:
    """How ``lm``'s chat prompts are rendered (``LM.chat_format``: "chat template" or "plain
    transcript (no chat template)"); None without a model.

    >>> chat_format_of(None) is None
    True
    """
    return None if lm is None else getattr(lm, "chat_format", None)


def _seeds(settings: Any) -> Optional[list]:
    d = to_jsonable(settings)
    if not isinstance(d, dict):
        return None
    if d.get("seeds") is not None:
        return list(d["seeds"])
    return [d["seed"]] if d.get("seed") is not None else None


def save_png(path, data: bytes) -> str:
    """Atomic write of PNG bytes; returns the path as a string (what ``Result.plots`` keeps)."""
    atomic_write_bytes(Path(path), data)
    return str(path)


class RunDir:
    """A run folder. ``RunDir(out, settings, lm)`` writes ``run_config.json`` at once;
    ``save_results`` and ``save_report`` write the rest atomically."""

    def __init__(self, path, settings: Any, lm=None, data_hash: Optional[str] = None,
                 experiment: str = ""):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock = run_lock(self.path, f"experiment {experiment}".strip()).acquire()
        """Held while this object lives: another process writing here gets RunLockedError."""
        self.started = time.time()
        self.config = {"experiment": experiment, "settings": to_jsonable(settings),
                       "versions": versions(), "git": git_hash(),
                       "model": None if lm is None else {"name": lm.name, "family": lm.family,
                                                         "n_layers": lm.n_layers,
                                                         "d_model": lm.d_model,
                                                         "dtype": str(lm.dtype),
                                                         "hash": model_hash(lm),
                                                         "weights": weights_note(lm)},
                       "chat_format": chat_format_of(lm),
                       "seeds": _seeds(settings),
                       "data_hash": data_hash,
                       "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_json(self.path / "run_config.json", self.config)

    def elapsed(self) -> float:
        return time.time() - self.started

    def save_results(self, results: dict) -> Path:
        """Write ``results.json``; ``results`` gets the run's ``chat_format`` (how chat prompts
        were rendered) where it has none, so reports built from it can say so."""
        if self.config["chat_format"] is not None and isinstance(results, dict):
            results.setdefault("chat_format", self.config["chat_format"])
        return write_json(self.path / "results.json", results)

    def save_report(self, page, name: str = "report.html") -> Path:
        return save_html(self.path / name, page)
