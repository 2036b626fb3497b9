"""The SAE architecture registry: one ``Arch`` object per architecture, one file each.

An architecture says how pre-activations become codes (``encode``), what it adds to the
training loss (``codes`` / ``penalty`` / ``extra_loss`` / ``after_step``), its defaults (LR,
encoder init norm, unit-norm decoder, b_dec subtracted from the input) and its names in the
SAELens / sparsify formats. ``SAE``, ``TrainConfig``, the trainer and the format readers ask the
registry instead of comparing ``cfg.arch`` strings, so a new architecture is one file here
(subclass ``Arch``, decorate with ``@register``, import it at the bottom of this module).

>>> get("topk").uses_k, get("relu").sparsity, names()[:4]
(True, 'l1_coef', ('relu', 'topk', 'batchtopk', 'jumprelu'))
"""
from __future__ import annotations

from ._base import Arch, TrainState

_REGISTRY: dict[str, Arch] = {}


def register(cls: type) -> type:
    """Class decorator: add one instance of an ``Arch`` subclass under ``cls.name``."""
    if not cls.name or cls.name in _REGISTRY:
        raise ValueError(f"architecture name {cls.name!r} is empty or already registered")
    _REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Arch:
    """The registered architecture ``name``; ValueError listing the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown SAE architecture {name!r}; known: {', '.join(_REGISTRY)}") from None


def names() -> tuple:
    """Registered architecture names, in registration order."""
    return tuple(_REGISTRY)


def from_saelens(architecture: str):
    """Our architecture for a SAELens ``architecture`` string, or None if none reads it."""
    for a in _REGISTRY.values():
        if architecture in a.saelens_reads:
            return a
    return None


from . import relu, topk, batchtopk, jumprelu, matryoshka  # noqa: E402,F401  (order = ARCHS)

__all__ = ["Arch", "TrainState", "register", "get", "names", "from_saelens"]
