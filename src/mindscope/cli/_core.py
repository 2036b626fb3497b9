"""Core commands: ``models``, ``generate``."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table

from ._common import console as _console

console = _console()


def steer_specs(specs: List[str], option: str = "--steer", kind: str = "steer") -> list:
    """Parse and read each ``FILE[#KEY][@SITE]:SCALE`` spec now, before any model loads."""
    from mindscope.core import parse_vector_spec

    out = []
    for spec in specs:
        try:
            s = parse_vector_spec(spec, kind)
            s.read()  # file, key and (if no @SITE) the recorded site
        except (FileNotFoundError, ValueError) as e:
            raise typer.BadParameter(str(e), param_hint=option) from None
        out.append(s)
    return out


def parse_steer(spec: str, lm):
    """``FILE[#KEY][@SITE]:SCALE`` -> an ``Add`` intervention (the one grammar in core)."""
    from mindscope.core import spec_interventions

    try:
        return spec_interventions(lm, steer=[spec])[0]
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="--steer") from None


def register(app: typer.Typer) -> None:
    @app.command()
    def models(as_json: bool = typer.Option(False, "--json", help="print JSON")):
        """List model aliases, whether each is installed, layers and d_model."""
        from mindscope.core import list_models

        rows = list_models()
        if as_json:
            console.print_json(json.dumps(rows))
            return
        t = Table("alias", "installed", "layers", "d_model", "note")
        for r in rows:
            t.add_row(r["alias"], "yes" if r["installed"] else "no", str(r["layers"]),
                      str(r["d_model"]), r["note"])
        console.print(t)
        for r in rows:  # plain lines: a command is never cut or wrapped by the table
            if not r["installed"]:
                typer.echo(f"install {r['alias']}: {r['install']}")

    @app.command()
    def generate(
        prompt: List[str] = typer.Option(..., "--prompt", "-p", help="prompt (repeatable)"),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                                  help="alias, folder, .gguf or cached hub id"),
        chat: bool = typer.Option(True, "--chat/--no-chat", help="render with the chat template"),
        steer: List[str] = typer.Option([], "--steer",
                                        help="FILE[@SITE]:SCALE (the site may come from the "
                                             "vector file), e.g. v.safetensors@resid_post.15:4"),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1),
        temperature: float = typer.Option(0.0, "--temperature", min=0.0),
        temperature_old: Optional[float] = typer.Option(None, "-t", hidden=True, min=0.0),
        seed: int = typer.Option(0, "--seed"),
        compare: bool = typer.Option(True, "--compare/--no-compare",
                                     help="with --steer, also show the unsteered output"),
        dtype: str = typer.Option("float32", "--dtype"),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    ):
        """Generate text, optionally steered by vectors added at sites."""
        from ._common import load_model, renamed

        temperature = renamed(temperature_old, temperature, "-t", "--temperature")
        specs = steer_specs(steer)  # vector files and sites checked before the model loads
        lm = load_model(model, dtype=dtype, quiet=quiet)
        ivs = [parse_steer(s.text, lm) for s in specs]
        outs = lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat,
                           temperature=temperature, seed=seed, interventions=ivs,
                           progress=not quiet)
        base = (lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat,
                            temperature=temperature, seed=seed, progress=not quiet)
                if compare and ivs else None)
        for i, (p, o) in enumerate(zip(prompt, outs)):
            console.rule(f"prompt {i}: {p[:60]}")
            if base is not None:
                console.print("[bold]unsteered:[/bold] " + base[i].text)
                console.print("[bold]steered:[/bold]   " + o.text)
            else:
                console.print(o.text)


def register_demo(app: typer.Typer) -> None:
    @app.command()
    def demo(model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                                       help="model alias, folder or .gguf"),
             out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="run folder (resumable)"),
             quick: bool = typer.Option(False, "--quick", help="toy sizes, about 2 minutes"),
             restart: bool = typer.Option(False, "--restart",
                                          help="redo every step (keeps harvest/SAE files)"),
             step: Optional[List[str]] = typer.Option(None, "--step",
                                                      help="run only these steps (repeatable)"),
             judge: str = typer.Option("offline", "--judge",
                                       help="feature judge: offline, lm, or an OpenAI-compatible URL")):
        """The main job: a full study of MODEL (harvest, TopK SAE, evaluation, features, steering,
        introspection, entropy gap, the positive controls beside them) ending in OUT/report.html.
        Rerun to resume."""
        from mindscope.demo import STEPS, DemoConfig, run_demo

        cfg = (DemoConfig.quick if quick else DemoConfig)(model=model, judge=judge)
        t0 = time.perf_counter()

        def shown(name: str, rec: dict) -> None:
            tag = "skipped (done)" if rec.get("skipped") else f"{rec.get('seconds', 0):.0f} s"
            console.print(f"[bold green]✓[/bold green] {name} [dim]{tag}[/dim]")

        try:
            res = run_demo(out, cfg, restart=restart, steps=tuple(step) if step else None,
                           on_step=shown)
        except (ValueError, FileNotFoundError) as e:
            console.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2)
        missing = [s for s in STEPS if s not in res]
        console.print(f"done in {time.perf_counter() - t0:.0f} s"
                      + (f"; not run: {missing}" if missing else ""))
        if "report" in res:
            console.print(f"report: {res['report']['report']}")
            console.print(f"browser: mindscope serve --sae {out / 'sae' / 'topk'} --model {model}")
            reg = (res.get("evaluate") or {}).get("registered")
            if reg:
                console.print(f"registered SAE: {reg} (mindscope sae list)")
