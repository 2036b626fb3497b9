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
    for row in res.summary_rows():
        v = row["value"]
        v = f"{v['rate']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" if isinstance(v, dict) else v
        con.print(f"{row['metric']}: {v:.3f}" if isinstance(v, float) else f"{row['metric']}: {v}")
    con.print(f"report: {out / 'report.html'}")
    return res
