"""``mindscope binding run``: the multi-slot entity binding protocol (experiments.binding)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import typer

from ._experiment import print_summary

from ._experiment import MODEL, group, out_option

app = group("binding", "Multi-slot entity binding: current/prior entity probes, slot geometry, "
            "slot ablations, double binding.", "Multi-slot entity binding experiments.")


@app.command("run")
def run_cmd(
    out: Path = out_option("runs/binding"),
    model: str = MODEL,
    n_stories: int = typer.Option(120, help="Stories for probe training/testing."),
    min_entities: int = typer.Option(3, help="Fewest entities per story."),
    max_entities: int = typer.Option(5, help="Most entities per story."),
    n_names: int = typer.Option(8, help="Name pool size (entity-probe classes)."),
    n_adjectives: int = typer.Option(8, help="Adjective pool size (attribute-probe classes)."),
    layers: str = typer.Option("0:30:3", help="Layers to probe: all | a:b:step | 3,9,15."),
    probe_kind: str = typer.Option("ridge", help="ridge | multinomial | logistic."),
    c: float = typer.Option(0.01, "--C", help="Inverse regularisation strength."),
    control: str = typer.Option("task", help="Control probe: task | shuffle | none."),
    ablate_layers: str = typer.Option("auto", help="Layers to ablate slots at (swept layers)."),
    slot_rank: Optional[int] = typer.Option(None, help="Dims per slot subspace to ablate."),
    n_items: int = typer.Option(16, help="Prompts per causal task / binding condition."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
    seed: int = typer.Option(0, help="Random seed."),
    data_dir: Optional[Path] = typer.Option(None, help="Folder with names/attributes/templates JSON."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """Run the protocol and write report.html, results.json, run_config.json, plots, probes/."""
    from rich.console import Console

    from ..experiments import binding

    try:
        cfg = binding.Config(model=model, n_stories=n_stories, min_entities=min_entities,
                             max_entities=max_entities, n_names=n_names,
                             n_adjectives=n_adjectives, layers=layers, probe_kind=probe_kind,
                             C=c, control=None if control == "none" else control,
                             ablate_layers=ablate_layers, slot_rank=slot_rank, n_items=n_items,
                             batch_size=batch_size, seed=seed,
                             data_dir=str(data_dir) if data_dir else None, progress=not quiet)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    logging.getLogger("mindscope").setLevel(logging.INFO if not quiet else logging.WARNING)
    res = binding.run(None, cfg, out)
    con = Console()
    print_summary(res, con, title=f"binding: {res.model}")
    con.print(f"report: {out / 'report.html'}")
