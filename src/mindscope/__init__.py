"""mindscope: look inside language models and change what they do from the inside.

>>> import mindscope as ms
>>> # lm = ms.load()                                   # SmolLM2-135M-Instruct, offline
>>> # cap = lm.capture(["Hello"], sites="resid_post.15", positions="last")
>>> # with lm.intervene(ms.Add("resid_post.15", v, scale=4.0)): lm.generate(["Tell me a story"])

The names below come from ``mindscope.core`` and are imported on first use (PEP 562), so that
``import mindscope.cli`` (and ``mindscope --help``) does not pay for torch and transformers.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"
__all__ = ["load", "list_models", "ALIASES", "LM", "Batch", "Captured", "Monitor", "ChatPrompt",
           "Generation", "Intervention", "Add", "Ablate", "Clamp", "Cap", "Replace", "Splice",
           "span", "role", "Vector", "VectorSet", "load_vector", "__version__"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .core import (ALIASES, LM, Ablate, Add, Batch, Cap, Captured, ChatPrompt, Clamp,
                       Generation, Intervention, Monitor, Replace, Splice, Vector, VectorSet,
                       list_models, load, load_vector, role, span)


def __getattr__(name: str):
    if name in __all__ and name != "__version__":
        value = getattr(importlib.import_module(".core", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f".{name}", __name__)  # e.g. ``mindscope.sae``
    raise AttributeError(f"module 'mindscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
