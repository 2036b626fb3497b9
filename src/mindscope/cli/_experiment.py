"""Shared parts of the experiment commands: the group, and the tail of a protocol command
(build the config, load the model, run the protocol or its positive control, print)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer


def group(name: str, help: str, doc: str) -> typer.Typer:
    """A sub-command group with ``help``; its callback (docstring ``doc``) keeps a lone command
    a sub-command (``mindscope organism build``, not ``mindscope organism``)."""
    app = typer.Typer(name=name, no_args_is_help=True, add_completion=False, help=help)

    def callback() -> None:
        pass

    callback.__doc__ = doc
    app.callback()(callback)
    return app


def run_and_print(spec, over: dict, quick: bool, model: str, out: Path,
                  load: Optional[dict] = None, quiet: bool = False, control: bool = False,
                  control_strengths: Optional[tuple] = None):
    """``spec.config(**over)`` (or ``.quick``), then ``spec.run(lm, cfg, out)`` (``spec`` a
    registered ``ProtocolSpec``) or, with ``control``, ``experiments.run_control`` (its
    positive control); print ``summary_rows()`` and where the report is. Bad settings (and a
    protocol without a control) -> a CLI usage error before the model loads."""
    from rich.console import Console

    from ._common import quiet_loading, silence_bars

    try:
        cfg = spec.config.quick(**over) if quick else spec.config(**over)
    except (ValueError, TypeError) as e:
        raise typer.BadParameter(str(e)) from None
    if control:
        from ..experiments import controls

        if spec.name not in controls():
            have = ", ".join(controls()) or "none yet"
            raise typer.BadParameter(f"protocol {spec.name!r} has no registered positive "
                                     f"control (protocols with one: {have})",
                                     param_hint="--control")
    import mindscope as ms

    if quiet:
        silence_bars()
    try:
        with quiet_loading(quiet):
            lm = ms.load(model, **(load or {}))
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="--model") from None
    logging.getLogger("mindscope").setLevel(logging.WARNING if quiet else logging.INFO)
    con = Console()
    if control:
        from ..experiments import run_control

        res = run_control(spec.name, lm, cfg, out, strengths=control_strengths)
        print_summary(res, con, title=f"{spec.name} positive control: {lm.name}")
    else:
        res = spec.run(lm, cfg, out)
        print_summary(res, con, title=f"{spec.name}: {lm.name}")
    con.print(f"report: {out / 'report.html'}")
    return res


def print_summary(res, console=None, title: str = "") -> None:
    """``res.summary_rows()`` as a two-column rich table, numbers rounded, intervals as
    ``est [lo, hi]``."""
    from rich.console import Console
    from rich.table import Table

    from ..experiments import format_value

    t = Table(title=title or None)
    t.add_column("measure")
    t.add_column("value", justify="right")
    for row in res.summary_rows():
        t.add_row(str(row["metric"]), format_value(row["value"]))
    (console or Console()).print(t)
