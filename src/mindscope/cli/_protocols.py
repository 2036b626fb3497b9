"""``mindscope run PROTOCOL``: one command per registered protocol, its options built from the
protocol's ``Config`` fields (type and default from the dataclass, help from the docstring
under each field) by one builder, ``protocol_command``.

The group is lazy: ``mindscope --help`` and ``mindscope run --help`` read the protocol names
and one-line descriptions from the source of ``experiments/<name>/__init__.py`` (the
``@protocol("name")`` decorator and the package docstring) without importing anything heavy;
``experiments.protocols()`` (torch) is imported only when one protocol's command is built.
"""
from __future__ import annotations

import ast
import inspect
import re
import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any, List, Optional

import typer
from typer.core import TyperGroup

# Config field -> option spelling where the agreed vocabulary (docs/cli.md) names it differently.
RENAMED = {"grader": "judge"}
# Options every protocol command has; a Config field of the same name is filled from them.
COMMON = ("model", "out", "quick")


def _experiments_dir() -> Path:
    spec = importlib.util.find_spec("mindscope")  # finds the package without importing it
    return Path(spec.origin).parent / "experiments"


def protocol_names() -> dict[str, str]:
    """``{name: one-line description}`` of the protocols under ``experiments/``, read from
    their source (the ``@protocol("name")`` decorator and the package docstring)."""
    out: dict[str, str] = {}
    for init in sorted(_experiments_dir().glob("[!_]*/__init__.py")):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        doc = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
        for node in ast.walk(tree):
            for d in getattr(node, "decorator_list", ()):
                if (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "protocol"
                        and d.args and isinstance(d.args[0], ast.Constant)):
                    out[d.args[0].value] = doc
    return dict(sorted(out.items()))


def _first_sentence(doc: str) -> str:
    return re.split(r"(?<=[.?!])\s", doc, maxsplit=1)[0]


def _number(x: Any) -> Any:
    """An item of a tuple field with no element type (``cap_layers: Optional[tuple] = None``):
    ``"18"`` -> 18, ``"0.5"`` -> 0.5, other text as written."""
    if not isinstance(x, str):
        return x
    for t in (int, float):
        try:
            return t(x)
        except ValueError:
            pass
    return x


_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _parameter(f) -> Optional[inspect.Parameter]:
    """One ``--option`` for a Config field (``ConfigField``): type from the annotation (a
    tuple/list field takes the option several times), help from the field docstring, default
    None (= keep the Config's, shown in the help); None for a field a common option fills."""
    if f.name in COMMON:
        return None
    flag = "--" + RENAMED.get(f.name, f.name).replace("_", "-")
    t = f.type.replace("Optional[", "").replace("]", "").strip()
    base = t.split("[")[0].lower()
    shown = None if f.default is None else str(f.default)
    if base in ("tuple", "list", "sequence"):
        inner = t.split("[", 1)[1].split(",")[0].strip() if "[" in t else ""
        seq = f.default if isinstance(f.default, (list, tuple)) else ()
        typ: Any = List[_SCALARS.get(inner) or (type(seq[0]) if seq else str)]
        shown = ", ".join(map(str, seq)) or None
    elif base == "bool":
        typ, flag = Optional[bool], f"{flag}/--no-{flag[2:]}"
    else:
        typ = Optional[_SCALARS.get(base, str)]
    opt = typer.Option(None, flag, help=f.doc or None, show_default=shown or False)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ)


def protocol_app(spec) -> typer.Typer:
    """A one-command Typer for one registered protocol (``ProtocolSpec``): ``-m/--model``,
    ``-o/--out``, ``--quick`` and one option per Config field. Only the options given on the
    line override ``Config()`` (or ``Config.quick()``)."""
    from ..experiments import config_fields

    fields = config_fields(spec.config)
    names = {f.name for f in fields}
    common = [
        inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                          default=typer.Option("smollm2-135m-instruct", "-m", "--model",
                                               help="Model spec for ms.load.")),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                          default=typer.Option(Path("runs") / spec.name, "-o", "--out",
                                               help="Output folder.")),
        inspect.Parameter("quick", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                          default=typer.Option(False, "--quick",
                                               help="Config.quick() (small demo run).")),
    ]

    def command(model: str, out: Path, quick: bool, **kw: Any) -> None:
        from ._experiment import run_and_print

        over = {k: (tuple(map(_number, v)) if isinstance(v, (list, tuple)) else v)
                for k, v in kw.items() if v is not None and v != [] and v != ()}
        if "model" in names:
            over["model"] = model
        module = SimpleNamespace(Config=spec.config, run=spec.run, __name__=spec.module)
        run_and_print(module, over, quick, model, out)

    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        common + [p for p in map(_parameter, fields) if p is not None])
    command.__doc__ = spec.doc
    one = typer.Typer(add_completion=False)
    one.command(spec.name)(command)
    return one


def protocol_command(spec):
    """The click command of one registered protocol (``protocol_app``)."""
    return typer.main.get_command(protocol_app(spec))


class ProtocolGroup(TyperGroup):
    """``mindscope run``: lists the protocols from their source; builds a command on use."""

    def list_commands(self, ctx) -> list[str]:
        return list(protocol_names())

    def get_command(self, ctx, name: str):
        if name not in protocol_names():
            return None
        from ..experiments import protocols

        return protocol_command(protocols()[name])

    def format_commands(self, ctx, formatter) -> None:
        rows = [(n, _first_sentence(d)) for n, d in protocol_names().items()]
        with formatter.section("Protocols"):
            formatter.write_dl(rows)


run_app = typer.Typer(cls=ProtocolGroup, no_args_is_help=True, add_completion=False)


@run_app.callback()
def _run_callback() -> None:
    """Run a registered protocol (experiments/<name>/, @protocol); its options come from the
    protocol's Config fields (``mindscope protocols NAME`` lists them)."""
