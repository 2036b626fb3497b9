"""The protocol commands: ``mindscope NAME`` (and ``mindscope run NAME``) for every registered
protocol, its options built from the protocol's ``Config`` fields (type and default from the
dataclass, help from the docstring under each field) by one builder, ``protocol_command``.

The commands are lazy: ``mindscope --help`` and ``mindscope run --help`` read the protocol names
and one-line descriptions from the source of ``experiments/<name>/__init__.py`` (the
``@protocol("name")`` decorator and the package docstring) without importing anything heavy;
``experiments.protocols()`` (torch) is imported only when one protocol's command is built.
Old spellings (``mindscope introspect detection``, ``persona run --part drift``) are rewritten
by ``_aliases`` before the generated command parses the line.
"""
from __future__ import annotations

import ast
import functools
import inspect
import re
import importlib.util
from fractions import Fraction
from pathlib import Path
from typing import Any, List, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from . import _aliases
from ._common import ErrorsGroup

# Config field -> option spelling where the agreed vocabulary (docs/cli.md) names it differently
# (``control`` would clash with the positive-control flag every protocol command has).
RENAMED = {"grader": "judge", "control": "control-probe"}
# Short forms from the agreed vocabulary.
SHORT = {"max_new_tokens": "-n"}
# Config fields a common option fills (-m, -o, --quick, -q).
COMMON = ("model", "out", "quick", "progress")
_NONE = "none"  # an Optional field given as "none" is set to None


_DOC = re.compile(r'\s*[rRuU]?("""|\'\'\')(.*?)\1', re.S)  # the module docstring
_DECORATOR = re.compile(r'^@protocol\(\s*["\'](\w+)["\']', re.M)


def _experiments_dir() -> Path:
    spec = importlib.util.find_spec("mindscope")  # finds the package without importing it
    return Path(spec.origin).parent / "experiments"


@functools.lru_cache(maxsize=1)
def protocol_names() -> dict[str, str]:
    """``{name: one-line description}`` of the protocols under ``experiments/``, read from
    their source (the ``@protocol("name")`` decorator and the package docstring) with two
    regular expressions: no import, no parse (``mindscope --help`` stays fast)."""
    out: dict[str, str] = {}
    for init in sorted(_experiments_dir().glob("[!_]*/__init__.py")):
        src = init.read_text(encoding="utf-8")
        m = _DOC.match(src)
        doc = " ".join(ast.literal_eval(m.group(0).strip()).strip().split("\n\n")[0].split()) if m else ""
        for name in _DECORATOR.findall(src):
            out[name] = doc
    return dict(sorted(out.items()))


def _first_sentence(doc: str) -> str:
    return re.split(r"(?<=[.?!])\s", doc, maxsplit=1)[0]


# ---- values ---------------------------------------------------------------------------------
def _number(x: str, kind: Optional[type] = None) -> Any:
    """``"18"`` -> 18, ``"0.5"`` -> 0.5, ``"2/3"`` -> 0.666..; ``kind`` int/float casts.
    ValueError if ``x`` is not a number (or not whole for ``kind=int``)."""
    x = x.strip()
    v: Any = Fraction(x) if "/" in x else (int(x) if re.fullmatch(r"[-+]?\d+", x) else float(x))
    if kind is int:
        if v != int(v):
            raise ValueError(x)
        return int(v)
    return float(v) if kind is float or isinstance(v, Fraction) else v


def _numbers(flag: str, kind: Optional[type]):
    """Parser of one occurrence of a numeric list option: ``1,2,4``, ``2/3,0.5``, ranges
    ``18:25`` (integers, end excluded, like site ranges) -> a tuple; ``none`` passes (for an
    Optional field)."""
    def parse(text: Any) -> tuple:
        if isinstance(text, tuple):
            return text
        if str(text).strip().lower() == _NONE:
            return (_NONE,)
        out: list = []
        for piece in filter(None, (p.strip() for p in str(text).split(","))):
            try:
                if ":" in piece:
                    a, b = (int(x) for x in piece.split(":"))
                    out += range(a, b)
                else:
                    out.append(_number(piece, kind))
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise typer.BadParameter(f"{piece!r} is not {what}: give numbers (1,2,4; "
                                         "fractions 2/3; integer ranges a:b)",
                                         param_hint=flag) from None
        return tuple(out)
    return parse


def _scalar(flag: str, kind: type):
    def parse(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        try:
            return _number(text, kind)
        except ValueError:
            raise typer.BadParameter(f"{text!r} is not {'an integer' if kind is int else 'a number'}",
                                     param_hint=flag) from None
    return parse


def _texts(flag: str):
    """One occurrence of a text list option: the value, or ``@FILE``: its non-empty lines."""
    def parse(text: Any) -> tuple:
        if isinstance(text, tuple):
            return text
        if str(text).startswith("@"):
            p = Path(str(text)[1:])
            if not p.is_file():
                raise typer.BadParameter(f"{p}: no such file (@FILE reads one item per line)",
                                         param_hint=flag)
            return tuple(w.strip() for w in p.read_text(encoding="utf-8").splitlines() if w.strip())
        return (str(text),)
    return parse


def _mixed(flag: str):
    """An item list of no declared type: numbers (as ``_numbers``) if the value reads as
    numbers, else ``@FILE``'s lines or the text as written."""
    nums, texts = _numbers(flag, None), _texts(flag)

    def parse(text: Any) -> tuple:
        try:
            return nums(text)
        except typer.BadParameter:
            return texts(text)
    return parse


def _shown(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


_SCALARS = {"int": int, "float": float, "str": str, "bool": bool}


def _parameter(f) -> Optional[inspect.Parameter]:
    """One ``--option`` for a Config field (``ConfigField``): type from the annotation (a
    tuple/list field takes the option several times, numbers also comma-separated), help from
    the field docstring, default None (= keep the Config's, shown in the help); None for a
    field a common option fills."""
    if f.name in COMMON:
        return None
    flag = "--" + RENAMED.get(f.name, f.name).replace("_", "-")
    decls = [flag, SHORT[f.name]] if f.name in SHORT else [flag]
    optional = f.type.startswith("Optional[")
    t = f.type.replace("Optional[", "").replace("]", "").strip()
    base = t.split("[")[0].lower()
    shown = None if f.default is None else _shown(f.default)
    extra: dict = {}
    if base in ("tuple", "list", "sequence"):
        inner = t.split("[", 1)[1].split(",")[0].strip() if "[" in t else ""
        seq = f.default if isinstance(f.default, (list, tuple)) else ()
        declared = _SCALARS.get(inner)
        kind = declared or (type(seq[0]) if seq else None)
        shown = ", ".join(map(_shown, seq)) or None
        typ: Any = List[str]
        if kind in (int, float):
            # a float default keeps an integer given as such (``layers``: ints are indices)
            extra = dict(parser=_numbers(flag, declared or (int if kind is int else None)),
                         metavar={int: "INT,.."}.get(kind, "NUMBER,.."))
        else:
            extra = dict(parser=_texts(flag) if kind is str else _mixed(flag),
                         metavar="TEXT|@FILE")
    elif base == "bool":
        typ, decls = Optional[bool], [f"{flag}/--no-{flag[2:]}"]
    elif base in ("int", "float"):
        typ = Optional[str]
        extra = dict(parser=_scalar(flag, _SCALARS[base]), metavar=base.upper())
    else:
        typ = Optional[str]
        extra = dict(metavar="TEXT|none" if optional else "TEXT")
    help_ = " ".join(x for x in (f.doc, shown and f"[default: {shown}]") if x) or None
    opt = typer.Option(None, *decls, help=help_, show_default=False, **extra)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=typ)


def _common(spec) -> list[inspect.Parameter]:
    """The options every protocol command has (parameter names prefixed ``cli_`` so that no
    Config field can clash with them)."""
    def p(name, annotation, default, *decls, help, **extra):
        return inspect.Parameter("cli_" + name, inspect.Parameter.KEYWORD_ONLY,
                                 annotation=annotation,
                                 default=typer.Option(default, *decls, help=help, **extra))
    return [
        p("model", str, "smollm2-135m-instruct", "-m", "--model", metavar="MODEL",
          help="Model alias, local folder or .gguf (ms.load)."),
        p("out", Path, Path("runs") / spec.name, "-o", "--out", metavar="DIR",
          help="Output folder (re-run into it to resume)."),
        p("quick", bool, False, "--quick", help="Config.quick() (small demo run)."),
        p("quiet", bool, False, "-q", "--quiet", help="No progress bars, fewer log lines."),
        p("device", Optional[str], None, "--device", metavar="DEVICE",
          help="cpu, cuda, cuda:1 or auto."),
        p("dtype", Optional[str], None, "--dtype", metavar="DTYPE", help="float32 or bfloat16."),
        p("control", bool, False, "--control",
          help="Run the protocol's positive control instead: plant a known effect, run the "
               "protocol unchanged on the planted and the untouched model."),
        p("control_strengths", List[str], None, "--control-strengths", metavar="NUMBER,..",
          parser=_numbers("--control-strengths", float),
          help="Strengths of the planted effect (with --control; default: the control's own)."),
    ]


class ProtocolCommand(TyperCommand):
    """A generated protocol command; old spellings (``_aliases``) are rewritten first."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        path = f"{ctx.parent.command_path} {self.name}" if ctx.parent else self.name
        return super().parse_args(ctx, _aliases.rewrite(self.name, args, path))


def protocol_app(spec) -> typer.Typer:
    """A one-command Typer for one registered protocol (``ProtocolSpec``): the common options
    (``-m/--model``, ``-o/--out``, ``--quick``, ``-q``, ``--device``, ``--dtype``,
    ``--control``) and one option per Config field. Only the options given on the line
    override ``Config()`` (or ``Config.quick()``)."""
    from ..experiments import config_fields

    fields = config_fields(spec.config)
    names = {f.name for f in fields}
    optional = {f.name for f in fields if f.type.startswith("Optional[")}

    def command(**kw: Any) -> None:
        from ._experiment import run_and_print

        model, out, quick, quiet, device, dtype, control, control_strengths = (
            kw.pop("cli_" + k) for k in ("model", "out", "quick", "quiet", "device", "dtype",
                                         "control", "control_strengths"))
        over: dict = {}
        for k, v in kw.items():
            if isinstance(v, list):  # one tuple per occurrence of a list option
                v = tuple(x for part in v for x in part) if v else None
            if v is None:
                continue
            over[k] = None if k in optional and v in (_NONE, (_NONE,)) else v
        if "model" in names:
            over["model"] = model
        if quiet and "progress" in names:
            over["progress"] = False
        strengths = tuple(x for part in control_strengths or () for x in part) or None
        if strengths and not control:
            raise typer.BadParameter("give --control too (the strengths are the control's)",
                                     param_hint="--control-strengths")
        if strengths and min(strengths) <= 0:
            raise typer.BadParameter(f"strengths must be > 0, got {min(strengths):g}",
                                     param_hint="--control-strengths")
        load = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        run_and_print(spec, over, quick, model, out, load=load, quiet=quiet,
                      control=control, control_strengths=strengths)

    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        _common(spec) + [p for p in map(_parameter, fields) if p is not None])
    command.__doc__ = spec.doc
    one = typer.Typer(add_completion=False, rich_markup_mode=None)
    one.command(spec.name, cls=ProtocolCommand)(command)
    return one


def protocol_command(spec, name: Optional[str] = None):
    """The click command of one registered protocol (``protocol_app``)."""
    cmd = typer.main.get_command(protocol_app(spec))
    if name:
        cmd.name = name
    return cmd


def _spec(name: str):
    from ..experiments import protocols

    return protocols()[name]


class ProtocolGroup(TyperGroup):
    """``mindscope run``: lists the protocols from their source; builds a command on use."""

    def list_commands(self, ctx) -> list[str]:
        return list(protocol_names())

    def get_command(self, ctx, name: str):
        if name not in protocol_names():
            return None
        return protocol_command(_spec(name))

    def format_commands(self, ctx, formatter) -> None:
        rows = [(n, _first_sentence(d)) for n, d in protocol_names().items()]
        with formatter.section("Protocols"):
            formatter.write_dl(rows)


class RootGroup(ErrorsGroup):
    """The ``mindscope`` group: the registered commands, plus one command per protocol
    (``mindscope NAME``, built on use) and the old protocol group names (hidden)."""

    _registered_only = False

    def list_commands(self, ctx) -> list[str]:
        own = super().list_commands(ctx)
        return own if self._registered_only else own + [n for n in protocol_names()
                                                        if n not in self.commands]

    def get_command(self, ctx, name: str):
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        if name in _aliases.GROUPS:
            new = _aliases.GROUPS[name]
            _aliases.note(f"`mindscope {name}`", f"`mindscope {new}`")
            return protocol_command(_spec(new), new)
        if name in protocol_names():
            return protocol_command(_spec(name))
        return None

    def resolve_command(self, ctx, args):
        # `introspect grader` (old) -> `evals judge-agreement`
        if len(args) > 1 and args[0] in ("introspect", "introspection") and args[1] == "grader":
            _aliases.note(f"`mindscope {args[0]} grader`", "`mindscope evals judge-agreement`")
            evals = super().get_command(ctx, "evals")
            return "judge-agreement", evals.get_command(ctx, "judge-agreement"), args[2:]
        return super().resolve_command(ctx, args)

    def format_commands(self, ctx, formatter) -> None:
        self._registered_only = True  # the registered commands, without building protocols
        try:
            super().format_commands(ctx, formatter)
        finally:
            self._registered_only = False
        rows = [(n, _first_sentence(d)) for n, d in protocol_names().items()]
        with formatter.section("Protocols (options from each Config; `mindscope NAME --help`)"):
            formatter.write_dl(rows)


run_app = typer.Typer(cls=ProtocolGroup, no_args_is_help=True, add_completion=False)


@run_app.callback()
def _run_callback() -> None:
    """Run a registered protocol (experiments/<name>/, @protocol); its options come from the
    protocol's Config fields (``mindscope protocols NAME`` lists them). ``mindscope NAME`` is
    the same command."""
