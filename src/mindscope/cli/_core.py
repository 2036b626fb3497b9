"""Core commands: ``models``, ``generate``."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()
_STEER_RE = re.compile(r"^(?P<file>.+)@(?P<site>[\w.]+):(?P<scale>[-+0-9.eE]+)$")


def parse_steer(spec: str, lm):
    """``FILE@SITE:SCALE`` -> an ``Add`` intervention. FILE is a safetensors vector file."""
    import mindscope as ms

    m = _STEER_RE.match(spec)
    if not m:
        raise typer.BadParameter(f"--steer {spec!r}: expected FILE@SITE:SCALE, e.g. "
                                 "vec.safetensors@resid_post.15:4")
    path = Path(m["file"])
    if not path.is_file():
        raise typer.BadParameter(f"--steer: vector file {path} does not exist")
    vec = _load_vector(path)
    try:
        lm.expand_sites(m["site"])
    except ValueError as e:
        raise typer.BadParameter(f"--steer: {e}") from None
    if vec.shape[-1] != lm.d_model:
        raise typer.BadParameter(f"--steer: {path} has dimension {vec.shape[-1]} but "
                                 f"{lm.name} has d_model {lm.d_model}")
    return ms.Add(m["site"], vec, scale=float(m["scale"]))


def _load_vector(path: Path):
    from mindscope.core import load_safetensors

    try:  # the header is checked before any tensor is read; never pickle
        tensors = load_safetensors(path, "vector file")
    except (OSError, ValueError) as e:  # BadInputError is a ValueError
        raise typer.BadParameter(f"{path} is not a readable safetensors file ({e})") from None
    if len(tensors) != 1 and "vector" not in tensors:
        raise typer.BadParameter(f"{path} holds {sorted(tensors)}; expected one tensor or 'vector'")
    v = tensors.get("vector", next(iter(tensors.values())))
    if v.dim() != 1:
        raise typer.BadParameter(f"{path}: expected a 1-D vector, got shape {tuple(v.shape)}")
    return v.float()


def register(app: typer.Typer) -> None:
    @app.command()
    def models(as_json: bool = typer.Option(False, "--json", help="print JSON")):
        """List model aliases, whether each is installed, layers and d_model."""
        from mindscope.core import list_models

        rows = list_models()
        if as_json:
            console.print_json(json.dumps(rows))
            return
        t = Table("alias", "installed", "layers", "d_model", "install / note")
        for r in rows:
            t.add_row(r["alias"], "yes" if r["installed"] else "no", str(r["layers"]),
                      str(r["d_model"]), r["note"] if r["installed"] else r["install"])
        console.print(t)

    @app.command()
    def generate(
        prompt: List[str] = typer.Option(..., "--prompt", "-p", help="prompt (repeatable)"),
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                                  help="alias, folder, .gguf or cached hub id"),
        chat: bool = typer.Option(True, "--chat/--no-chat", help="render with the chat template"),
        steer: List[str] = typer.Option([], "--steer",
                                        help="FILE@SITE:SCALE, e.g. v.safetensors@resid_post.15:4"),
        max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1),
        temperature: float = typer.Option(0.0, "--temperature", "-t", min=0.0),
        seed: int = typer.Option(0, "--seed"),
        compare: bool = typer.Option(False, "--compare", help="also show the unsteered output"),
        dtype: str = typer.Option("float32", "--dtype"),
    ):
        """Generate text, optionally steered by vectors added at sites."""
        import mindscope as ms

        try:
            lm = ms.load(model, dtype=dtype)
        except (FileNotFoundError, ValueError) as e:
            raise typer.BadParameter(str(e), param_hint="--model") from None
        ivs = [parse_steer(s, lm) for s in steer]
        outs = lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat,
                           temperature=temperature, seed=seed, interventions=ivs)
        base = (lm.generate(prompt, max_new_tokens=max_new_tokens, chat=chat,
                            temperature=temperature, seed=seed) if compare and ivs else None)
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
             out: Path = typer.Option(Path("runs/demo"), "--out", help="run folder (resumable)"),
             quick: bool = typer.Option(False, "--quick", help="toy sizes, about 2 minutes"),
             restart: bool = typer.Option(False, "--restart",
                                          help="redo every step (keeps harvest/SAE files)"),
             step: Optional[List[str]] = typer.Option(None, "--step",
                                                      help="run only these steps (repeatable)"),
             judge: str = typer.Option("offline", "--judge",
                                       help="feature judge: offline, lm, or an OpenAI-compatible URL")):
        """The main job: a full study of MODEL (harvest, TopK SAE, evaluation, features, steering,
        introspection, entropy gap) ending in OUT/report.html. Rerun to resume."""
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
            console.print(f"browser: mindscope serve {out / 'sae' / 'topk'} --model {model}")
