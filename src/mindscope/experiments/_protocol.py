"""The protocol interface and its registry.

A protocol is one package under ``experiments/`` whose ``__init__`` defines

- ``Config``: a dataclass with a docstring under every field (it becomes ``--help`` text) and a
  ``quick(**over)`` classmethod (tiny settings for a smoke run);
- ``run(lm, cfg, out_dir) -> Result``, registered with ``@protocol("name")``;
- ``Result`` with ``summary_rows() -> [{"metric", "value"}]`` and ``report() -> Path``.

``protocols()`` imports every protocol package once and returns the registry, so the CLI and
the demo list protocols from here instead of a hand-written table.

>>> sorted(protocols())
['binding', 'emotions', 'introspection', 'onpolicy', 'persona']
>>> config_fields(protocols()["persona"].config)[0].name
'n_roles'
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import pkgutil
import sys
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

__all__ = ["protocol", "protocols", "ProtocolSpec", "ConfigField", "config_fields",
           "format_value", "ProtocolConfig", "ProtocolResult", "ResultDisplay"]


class ProtocolConfig(Protocol):
    """What every protocol's ``Config`` offers (a dataclass; ``quick`` for a smoke run)."""

    @classmethod
    def quick(cls, **over: Any) -> "ProtocolConfig": ...


class ProtocolResult(Protocol):
    """What every protocol's ``Result`` offers."""

    def summary_rows(self) -> list[dict]: ...

    def report(self) -> Any: ...


class ResultDisplay:
    """A short ``repr`` and a notebook table for a protocol's ``Result``, both from its
    ``summary_rows()`` (never a dump of its arrays). Use with ``@dataclass(repr=False)``."""

    def _name(self) -> str:
        return type(self).__module__.rsplit(".", 1)[-1]

    def _rows(self) -> list[tuple[str, str]]:
        try:
            return [(str(r.get("metric", "")), format_value(r.get("value"))) for r in self.summary_rows()]
        except (KeyError, TypeError, ValueError, AttributeError) as e:  # a partial result
            return [("summary unavailable", f"{type(e).__name__}: {e}")]

    def __repr__(self) -> str:
        rows = self._rows()
        head = "; ".join(f"{m} = {v}" for m, v in rows[:3])
        more = f"; ... {len(rows) - 3} more" if len(rows) > 3 else ""
        return f"{self._name()}.Result({head}{more})"

    def _repr_html_(self) -> str:
        from html import escape

        body = "".join(f"<tr><td>{escape(m)}</td><td>{escape(v)}</td></tr>" for m, v in self._rows())
        return (f"<div><b>{escape(self._name())}</b> result<table><tr><th>measure</th>"
                f"<th>value</th></tr>{body}</table><small>.report() writes report.html"
                "</small></div>")


@dataclass(frozen=True)
class ProtocolSpec:
    """One registered protocol."""

    name: str
    run: Callable
    """``run(lm, cfg, out_dir) -> Result``."""
    config: type
    """Its ``Config`` dataclass."""
    module: str
    doc: str
    """First paragraph of the protocol package's docstring."""
    demo_step: Optional[str] = None
    """The ``mindscope demo`` step that runs this protocol (quick config); None: not in the demo."""


_REGISTRY: dict[str, ProtocolSpec] = {}


def protocol(name: str, config: Optional[type] = None, demo_step: Optional[str] = None):
    """Register ``run`` as protocol ``name`` (``config`` defaults to its module's ``Config``;
    ``demo_step``: the demo step that runs it, which the demo then lists)."""
    def deco(run: Callable) -> Callable:
        mod = sys.modules[run.__module__]
        cfg = config or getattr(mod, "Config")
        doc = " ".join((mod.__doc__ or "").strip().split("\n\n")[0].split())
        _REGISTRY[name] = ProtocolSpec(name, run, cfg, run.__module__, doc, demo_step)
        return run
    return deco


def protocols() -> dict[str, ProtocolSpec]:
    """The registry, after importing every protocol package under ``experiments/``."""
    pkg = importlib.import_module(__package__)
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.ispkg and not m.name.startswith("_"):
            importlib.import_module(f"{__package__}.{m.name}")
    return dict(sorted(_REGISTRY.items()))


@dataclass(frozen=True)
class ConfigField:
    name: str
    type: str
    default: Any
    doc: str


def config_fields(cls: type) -> list[ConfigField]:
    """The fields of a Config dataclass with the docstring written under each (``""`` if none)."""
    docs: dict[str, str] = {}
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        body = tree.body[0].body
        for a, b in zip(body, body[1:]):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name)
                    and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                    and isinstance(b.value.value, str)):
                docs[a.target.id] = " ".join(b.value.value.split())
    except (OSError, TypeError, SyntaxError):  # no source (frozen app): fields without docs
        pass
    out = []
    for f in dataclasses.fields(cls):
        default = (f.default if f.default is not dataclasses.MISSING else
                   f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        t = (f.type if isinstance(f.type, str) else f.type.__name__ if isinstance(f.type, type)
             else str(f.type).replace("typing.", ""))  # Optional[tuple], not "Optional"
        out.append(ConfigField(f.name, t, default, docs.get(f.name, "")))
    return out


def _n(x: Any, digits: int) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if isinstance(x, float) else str(x)


def format_value(v: Any, digits: int = 3) -> str:
    """One summary value as short text: numbers rounded, intervals as ``est [lo, hi]``
    (``wilson``/``mean_ci`` dicts, ``{"mean"|"ratio"|"auc", "ci": [lo, hi]}``, ``[lo, hi]``)."""
    if isinstance(v, dict):
        if "rate" in v and "lo" in v:
            return "–" if v["rate"] is None else (
                f"{v['rate']:.{digits}f} [{v['lo']:.{digits}f}, {v['hi']:.{digits}f}]")
        for k in ("mean", "ratio", "auc", "value"):
            if k in v:
                if "ci" in v:
                    lo, hi = v["ci"]
                elif "lo" in v:
                    lo, hi = v["lo"], v["hi"]
                else:
                    return _n(v[k], digits)
                return f"{_n(v[k], digits)} [{_n(lo, digits)}, {_n(hi, digits)}]"
        return ", ".join(f"{k} {format_value(x, digits)}" for k, x in v.items())
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{_n(v[0], digits)}, {_n(v[1], digits)}]"
    if isinstance(v, bool):
        return str(v)
    return _n(v, digits)


def summary_rows_of(pairs: Sequence[tuple]) -> list[dict]:
    """``[(metric, value), ...]`` -> ``[{"metric", "value"}, ...]``."""
    return [{"metric": k, "value": v} for k, v in pairs]
