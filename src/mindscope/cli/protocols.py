"""``mindscope protocols``: the registered protocols (``experiments.protocols()``), each with its
Config fields, defaults and the field docstrings (the text the options' help comes from)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table


def protocols_cmd(name: Optional[str] = typer.Argument(
        None, help="A protocol to show its settings; none: list the protocols.")) -> None:
    """List the registered protocols, or show one protocol's settings."""
    from ..experiments import config_fields, controls, protocols

    reg, ctrl = protocols(), controls()
    con = Console()
    if name is None:
        t = Table(title="protocols (`mindscope NAME`; --control runs the positive control)")
        t.add_column("name")
        t.add_column("what it measures")
        t.add_column("positive control")
        for p in reg.values():
            t.add_row(p.name, p.doc, "yes" if p.name in ctrl else "-")
        con.print(t)
        return
    if name not in reg:
        raise typer.BadParameter(f"unknown protocol {name!r}; choose from {', '.join(reg)}",
                                 param_hint="NAME")
    t = Table(title=f"{name}: Config settings (Config.quick() for a smoke run)")
    for c in ("setting", "default", "meaning"):
        t.add_column(c)
    for f in config_fields(reg[name].config):
        t.add_row(f.name, repr(f.default), f.doc)
    con.print(t)


def controls_cmd(
        out: Path = typer.Option(Path("runs/controls"), "--out", "-o",
                                 help="Suite folder: one folder per control (resumed), logs/, "
                                      "suite.json and suite.md."),
        jobs: int = typer.Option(2, "--jobs", min=1, help="Controls run at once, each in its own "
                                                           "process (cpu_count // jobs threads)."),
        only: Optional[List[str]] = typer.Option(None, "--only", help="Run only this control "
                                                                       "(repeatable)."),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                                  help="The model every control plants into.")) -> None:
    """Run every positive control with its documented settings; verdicts and minutes."""
    from ..core import BadInputError
    from ..experiments.control_suite import run_suite

    try:
        s = run_suite(out, jobs, only or None, model)
    except BadInputError as e:
        raise typer.BadParameter(str(e), param_hint="--only") from None
    typer.echo((Path(out) / "suite.md").read_text(encoding="utf-8"))
    if s["passed"] != len(s["controls"]):
        raise typer.Exit(1)
