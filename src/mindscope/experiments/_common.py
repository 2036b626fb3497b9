"""Config checks and shipped data shared by the protocols (run folders, statistics and pages
live in ``mindscope.runs``).

>>> choose("gap", ("gap", "verbal"), "protocol")
('gap',)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

__all__ = ["choose", "one_of", "at_least_one", "shipped_json"]
DATA = Path(__file__).resolve().parent.parent / "data"


def choose(value, allowed: Sequence[str], noun: str, allow_empty: bool = True) -> tuple:
    """A config field naming parts/protocols: a str or a sequence -> a validated tuple.

    >>> choose("gap", ("gap", "verbal"), "protocol")
    ('gap',)
    """
    picked = tuple([value] if isinstance(value, str) else value)
    bad = [p for p in picked if p not in allowed]
    if bad or (not picked and not allow_empty):
        raise ValueError(f"unknown {noun}(s) {bad}; choose from {tuple(allowed)}")
    return picked


def one_of(name: str, value, allowed: Sequence) -> None:
    """Raise ValueError unless config field ``name`` holds one of ``allowed``.

    >>> one_of("role_filter", "x", ("rule", "none"))
    Traceback (most recent call last):
    ValueError: role_filter must be 'rule' or 'none'; got 'x'
    """
    if value not in allowed:
        opts = [repr(a) for a in allowed]
        opts = ", ".join(opts[:-1]) + " or " + opts[-1] if len(opts) > 1 else opts[0]
        raise ValueError(f"{name} must be {opts}; got {value!r}")


def at_least_one(cfg, names: Sequence[str]) -> None:
    """Raise ValueError naming the first field of ``names`` on ``cfg`` that is below 1."""
    for name in names:
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be >= 1; got {getattr(cfg, name)}")


def shipped_json(folder: str, name: str) -> Any:
    """A JSON file shipped with the package (``mindscope/data/<folder>/<name>``)."""
    path = DATA / folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"shipped file {path} is missing; reinstall mindscope") from None
