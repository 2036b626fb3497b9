"""``mindscope protocols``: the registered protocols (``experiments.protocols()``), each with its
Config fields, defaults and the field docstrings (the text the options' help comes from)."""
from __future__ import annotations

from typing import Optional

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
