"""``mindscope introspect <protocol>``: the introspection protocols (detection, thoughts, prefill,
control, mechanisms, or all) and ``introspect grader`` (agreement with the hand-labelled set).
Thin: the logic is in ``mindscope.experiments.introspection``. Re-running a command with the same
settings into the same ``--out`` folder resumes a killed run."""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ._experiment import print_summary
from ._common import renamed

console = Console()
app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Introspection experiments: injected-thought detection and friends.")
PROTOCOLS = ("detection", "thoughts", "prefill", "control", "mechanisms", "all")


def _floats(s: str) -> tuple:
    out = []
    for x in s.split(","):
        x = x.strip()
        if "/" in x:
            a, b = x.split("/")
            out.append(float(a) / float(b))
        elif x:
            out.append(int(x) if x.lstrip("-").isdigit() else float(x))
    return tuple(out)


def _layer(s: Optional[str]):
    return None if s is None else _floats(s)[0]


def _words(path: Optional[Path]) -> Optional[list]:
    if path is None:
        return None
    if not path.is_file():
        raise typer.BadParameter(f"{path} does not exist", param_hint="word file")
    return [w.strip() for w in path.read_text().splitlines() if w.strip()]


@app.command("run")
def run_cmd(
    protocol: str = typer.Argument("all", help=f"one of {', '.join(PROTOCOLS)}"),
    out: Path = typer.Option(Path("runs/introspection"), "--out", "-o",
                             help="run folder (re-run into it to resume)"),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m"),
    quick: bool = typer.Option(False, "--quick", help="tiny config (4 concepts, 2 layers, 2 "
                               "strengths, 16 tokens)"),
    layers: Optional[str] = typer.Option(None, "--layers", help="e.g. '2/3,0.5,12' (fractions "
                                         "or block indices)"),
    strengths: Optional[str] = typer.Option(None, "--strengths", help="e.g. '1,2,4,8'"),
    n_concepts: Optional[int] = typer.Option(None, "--n-concepts"),
    n_baseline: Optional[int] = typer.Option(None, "--n-baseline"),
    concepts: Optional[Path] = typer.Option(None, "--concepts", help="file, one word per line"),
    baseline: Optional[Path] = typer.Option(None, "--baseline", help="file, one word per line"),
    max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
    probe_max_new_tokens: Optional[int] = typer.Option(
        None, "--probe-max-new-tokens", help="response length for thoughts/prefill/control"),
    samples: Optional[int] = typer.Option(None, "--samples"),
    n_controls: Optional[int] = typer.Option(None, "--n-controls",
                                             help="control (no-injection) trials"),
    n_sentences: Optional[int] = typer.Option(None, "--n-sentences"),
    probe_strength: Optional[float] = typer.Option(None, "--probe-strength"),
    mech_layer: Optional[str] = typer.Option(None, "--mech-layer"),
    mech_strength: Optional[float] = typer.Option(None, "--mech-strength"),
    bias_steps: Optional[int] = typer.Option(None, "--bias-steps"),
    bias_batch: Optional[int] = typer.Option(None, "--bias-batch"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    grader: str = typer.Option("rule", "--judge", help="rule | lm | http://host:port/v1"),
    grader_old: Optional[str] = typer.Option(None, "--grader", hidden=True),
    judge_model: str = typer.Option("default", "--judge-model"),
    dtype: str = typer.Option("float32", "--dtype"),
):
    """Run one protocol (or all) and write run_config.json, results.json, report.html."""
    import mindscope as ms
    from mindscope.experiments import introspection as I

    grader = renamed(grader_old, grader, "--grader", "--judge")

    if protocol not in PROTOCOLS:
        raise typer.BadParameter(f"choose from {', '.join(PROTOCOLS)}", param_hint="protocol")
    over = {"protocols": I.PROTOCOLS if protocol == "all" else (protocol,), "grader": grader,
            "judge_model": judge_model}
    for k, v in (("layers", layers and _floats(layers)), ("strengths", strengths and
                 tuple(float(x) for x in _floats(strengths))), ("n_concepts", n_concepts),
                 ("n_baseline", n_baseline), ("concepts", _words(concepts)),
                 ("baseline_words", _words(baseline)), ("max_new_tokens", max_new_tokens),
                 ("probe_max_new_tokens", probe_max_new_tokens), ("samples", samples),
                 ("n_controls", n_controls), ("n_sentences", n_sentences),
                 ("probe_strength", probe_strength), ("mech_layer", _layer(mech_layer)),
                 ("mech_strength", mech_strength), ("bias_steps", bias_steps),
                 ("bias_batch", bias_batch), ("temperature", temperature), ("seed", seed),
                 ("batch_size", batch_size)):
        if v is not None:
            over[k] = v
    try:
        cfg = I.Config.quick(**over) if quick else I.Config(**over)
        lm = ms.load(model, dtype=dtype)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from None
    res = I.run(lm, cfg, out)
    print_summary(res, console, title=f"introspection: {lm.name}")
    console.print(f"report: {res.out_dir / 'report.html'}")


def _protocol_cmd(name: str):
    """``introspect <name>``: ``run <name>`` with the same options (default folder per name)."""
    sig = inspect.signature(run_cmd, eval_str=True)  # real types, not the future-import strings
    params = []
    for p in list(sig.parameters.values())[1:]:
        if p.name == "out":
            p = p.replace(default=typer.Option(Path(f"runs/introspection-{name}"), "--out", "-o",
                                               help="run folder (re-run into it to resume)"))
        params.append(p)

    def cmd(**kw):
        run_cmd(name, **kw)
    cmd.__signature__ = sig.replace(parameters=params)
    cmd.__annotations__ = {p.name: p.annotation for p in params}
    cmd.__doc__ = f"The {name} protocol (options as for `introspect run`)."
    return cmd


for _p in PROTOCOLS[:-1]:
    app.command(_p)(_protocol_cmd(_p))


@app.command("grader")
def grader_cmd(grader: str = typer.Option("rule", "--judge", help="rule | http://host/v1"),
               grader_old: Optional[str] = typer.Option(None, "--grader", hidden=True),
               judge_model: str = typer.Option("default", "--judge-model")):
    """Agreement of a grader with the shipped hand-labelled responses."""
    from mindscope.experiments import introspection as I

    grader = renamed(grader_old, grader, "--grader", "--judge")

    a = I.agreement(I.make_grader(grader, model=judge_model))
    console.print_json(json.dumps({k: a[k] for k in ("grader", "n", "claims", "identifies")}))
    for d in a["disagreements"]:
        console.print(f"[yellow]disagree[/] {d['concept']}: {d['response']!r} label={d['label']} "
                      f"graded={d['graded']}")
