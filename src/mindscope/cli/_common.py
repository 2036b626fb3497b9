"""Helpers shared by the CLI commands: one-line errors (``--debug`` for the traceback), checks
that run before a model loads, model loading that obeys ``-q``, and small summary tables.

Nothing here imports torch at module level: ``mindscope --help`` must stay fast.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import typer
from typer.core import TyperGroup

_HINT = "(rerun with --debug for the traceback)"
_state = {"debug": False}


def debug_enabled() -> bool:
    return _state["debug"] or os.environ.get("MINDSCOPE_DEBUG", "") not in ("", "0")


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, KeyError):  # str(KeyError('x')) is "'x'": say what it is
        msg = f"missing key {msg}"
    return msg if len(msg) <= 600 else msg[:600] + " ..."


def report_error(e: BaseException) -> int:
    """Print ``e`` as one or two lines on stderr; returns the exit code (2 bad input, 1 other)."""
    user = isinstance(e, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                          PermissionError, KeyError)) or type(e).__name__ == "RunLockedError"
    if user:
        typer.echo(f"error: {_one_line(e)}", err=True)
        typer.echo(f"       {_HINT}", err=True)
        return 2
    typer.echo(f"error: {type(e).__name__}: {_one_line(e)}", err=True)
    typer.echo("       unexpected: rerun with --debug for the traceback and report it", err=True)
    return 1


class ErrorsGroup(TyperGroup):
    """The root group: ``--debug`` is accepted anywhere on the line; any exception a command
    raises becomes a one- or two-line message (click's own usage errors pass through)."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        end = args.index("--") if "--" in args else len(args)
        _state["debug"] = "--debug" in args[:end]
        args = [a for i, a in enumerate(args) if not (a == "--debug" and i < end)]
        return super().parse_args(ctx, args)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                                standalone_mode=False, **extra)
        try:  # non-standalone: an Exit raised by a command comes back as its code
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except typer.BadParameter as e:  # one line naming the option, one pointing to --help
            path = e.ctx.command_path if e.ctx is not None else "mindscope"
            typer.echo(f"error: {' '.join(e.format_message().split())}", err=True)
            typer.echo(f"       (see `{path} --help`)", err=True)
            sys.exit(e.exit_code)
        except typer.TyperException as e:  # other usage errors: click's plain rendering
            e.show()
            sys.exit(getattr(e, "exit_code", 2))
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (typer.TyperException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - turned into a one-line message
            if debug_enabled():
                raise
            raise typer.Exit(report_error(e)) from None
        finally:
            _bars_back()


# ---- checks that run before any model loads ------------------------------------------------
def bad(message: str, option: Optional[str] = None):
    """Raise a usage error naming ``option``."""
    raise typer.BadParameter(message, param_hint=option)


def positive(value: Optional[float], option: str, allow_zero: bool = False):
    """``value`` > 0 (or >= 0); None passes (meaning 'default')."""
    if value is None:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        bad(f"{value} is not a finite number", option)
    if value < 0 or (value == 0 and not allow_zero):
        bad(f"must be {'>= 0' if allow_zero else '> 0'}, got {value:g}", option)
    return value


def need_path(path: Optional[Path], option: str, kind: str = "file", fix: str = "") -> Optional[Path]:
    """``path`` exists and is a ``kind`` ('file', 'folder' or 'any'); None passes."""
    if path is None:
        return None
    p = Path(path)
    tail = f"; {fix}" if fix else ""
    if not p.exists():
        bad(f"{p}: no such {'file or folder' if kind == 'any' else kind}{tail}", option)
    if kind == "file" and not p.is_file():
        bad(f"{p} is a folder, expected a file{tail}", option)
    if kind == "folder" and not p.is_dir():
        bad(f"{p} is a file, expected a folder{tail}", option)
    return p


def model_layers(model: Optional[str]) -> Optional[int]:
    """Number of blocks of ``model`` without loading it (alias table or config.json), else None."""
    if not model:
        model = "smollm2-135m-instruct"
    try:
        from mindscope.core import ALIASES  # core is imported by every model command anyway

        if model in ALIASES:
            return ALIASES[model].layers
        cfg = Path(model) / "config.json"
        if cfg.is_file():
            c = json.loads(cfg.read_text())
            c = c.get("text_config", c)
            return int(c.get("num_hidden_layers") or c.get("n_layer") or 0) or None
    except (OSError, ValueError, TypeError):
        return None
    return None


def check_sites(spec: Optional[str], model: Optional[str], option: str = "--sites") -> None:
    """Refuse a site whose layer index is beyond the model's blocks, before the model loads.
    The full check (names, patterns) is ``LM.expand_sites`` once the model is there."""
    import re

    if not spec:
        return
    n = model_layers(model)
    for s in (x.strip() for x in spec.split(",")):
        m = re.match(r"^([a-z_]+)\.(\d+)$", s)
        if not s or (m is None and re.match(r"^[\w:.*?\[\]-]+$", s) is None):
            bad(f"{s!r} is not a site name; sites look like resid_post.15, resid_post.* or "
                "resid_post.10:20", option)
        if m and n is not None and int(m[2]) >= n:
            bad(f"{s!r}: {model or 'the model'} has {n} blocks (layers 0..{n - 1})", option)


def load_model(model: Optional[str], dtype: str = "float32", device: Optional[str] = None,
               quiet: bool = False):
    """``ms.load`` with a clear error naming --model; ``quiet`` hides the weight-loading bar."""
    import mindscope as ms

    if quiet:
        silence_bars()
    kw = {"dtype": dtype}
    if device not in (None, "auto"):
        kw["device"] = device
    try:
        with quiet_loading(quiet):
            return ms.load(model, **kw) if model else ms.load(**kw)
    except (FileNotFoundError, ValueError) as e:
        bad(str(e), "--model")


_TQDM_INIT: list = []


def silence_bars() -> None:
    """Disable every tqdm bar until the command ends (``-q``); ErrorsGroup restores them."""
    if _TQDM_INIT:
        return
    from tqdm import std

    orig = std.tqdm.__init__

    def init(self, *a, **k):
        k["disable"] = True
        orig(self, *a, **k)

    _TQDM_INIT.append(orig)
    std.tqdm.__init__ = init


def _bars_back() -> None:
    if _TQDM_INIT:
        from tqdm import std

        std.tqdm.__init__ = _TQDM_INIT.pop()


class quiet_loading:
    """Silence transformers' "Loading weights" progress bar (and its info logs) inside."""

    def __init__(self, quiet: bool):
        self.quiet = quiet

    def __enter__(self):
        if not self.quiet:
            return self
        from transformers.utils import logging as hf_logging

        self._bars = hf_logging.is_progress_bar_enabled()
        self._level = hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        return self

    def __exit__(self, *exc):
        if not self.quiet:
            return False
        from transformers.utils import logging as hf_logging

        if self._bars:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(self._level)
        return False


# ---- output --------------------------------------------------------------------------------
def fmt(v: Any) -> str:
    """A table cell: 4 significant digits for floats, lists shortened, dicts as k=v."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        s = ", ".join(fmt(x) for x in v[:6])
        return f"[{s}{', ...' if len(v) > 6 else ''}]"
    return str(v)


def print_table(rows: Sequence[dict], title: Optional[str] = None,
                columns: Optional[Iterable[str]] = None) -> None:
    """Rows of dicts as a rich table on stdout (wide enough never to cut cells)."""
    from rich.console import Console
    from rich.table import Table

    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    t = Table(*cols, title=title)
    for r in rows:
        t.add_row(*(fmt(r.get(c, "")) for c in cols))
    console().print(t)


def print_fields(d: dict, title: Optional[str] = None) -> None:
    """One dict as a two-column table (nested dicts flattened to dotted keys)."""
    flat: dict = {}

    def walk(prefix: str, x: Any) -> None:
        if isinstance(x, dict) and x:
            for k, v in x.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = x

    walk("", d)
    print_table([{"metric": k, "value": v} for k, v in flat.items()], title=title)


def console():
    """A rich console that does not wrap or cut long lines when stdout is not a terminal."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200, soft_wrap=not sys.stdout.isatty())


# ---- old spellings (hidden aliases, kept for one release) -----------------------------------
def note_renamed(old: str, new: str) -> None:
    """The one-line note an old spelling prints (on stderr)."""
    typer.echo(f"note: {old} is now {new}; the old spelling goes away in the next release",
               err=True)


def renamed(old_value: Any, value: Any, old: str, new: str) -> Any:
    """The value of a hidden old spelling if it was given (with a one-line note), else ``value``."""
    if old_value is None or old_value == [] or old_value is False:
        return value
    note_renamed(old, new)
    return old_value


def pick_sae(sae: Optional[str], old: Optional[Any], what: str = "--sae") -> str:
    """The ``--sae`` value, or the old positional folder (hidden alias, with a note)."""
    val = renamed(str(old) if old is not None else None, sae, "the positional SAE folder", what)
    if not val:
        bad("give the SAE folder or a registered name (mindscope sae list)", what)
    return val


def sae_folder(spec: str, option: str = "--sae") -> Path:
    """A folder from ``--sae`` (a path or a registry name), or a clear usage error."""
    from mindscope.sae import resolve_sae

    try:
        return resolve_sae(spec)
    except FileNotFoundError as e:
        bad(str(e), option)
