"""Shared parts of the experiment commands: the group, common options, and the tail (build the
config, load the model, run, print)."""
from __future__ import annotations

import logging
from pathlib import Path

import typer

MODEL = typer.Option("smollm2-135m-instruct", help="Model spec for ms.load.")
QUICK = typer.Option(False, "--quick", help="Config.quick() (small demo run).")


def out_option(default: str):
    """The ``--out/-o`` option of a command that writes a run folder (default ``default``)."""
    return typer.Option(Path(default), "--out", "-o", help="Output folder.")


def group(name: str, help: str, doc: str) -> typer.Typer:
    """A sub-command group with ``help``; its callback (docstring ``doc``) keeps a lone command
    a sub-command (``mindscope persona run``, not ``mindscope persona``)."""
    app = typer.Typer(name=name, no_args_is_help=True, add_completion=False, help=help)

    def callback() -> None:
        pass

    callback.__doc__ = doc
    app.callback()(callback)
    return app


def run_and_print(module, over: dict, quick: bool, model: str, out: Path):
    """``module.Config(**over)`` (or ``.quick``), ``module.run(lm, cfg, out)``, then print
    ``Result.summary_rows()`` and where the report is. Bad settings -> a CLI usage error."""
    from rich.console import Console

    import mindscope as ms

    try:
        cfg = module.Config.quick(**over) if quick else module.Config(**over)
        lm = ms.load(model)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from None
    logging.getLogger("mindscope").setLevel(logging.INFO)
    res = module.run(lm, cfg, out)
    con = Console()
    print_summary(res, con, title=f"{module.__name__.rsplit('.', 1)[-1]}: {lm.name}")
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
