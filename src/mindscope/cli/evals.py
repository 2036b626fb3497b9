"""``mindscope eval``: HLE-format benchmark runs, steered vs baseline side by side. Thin: the
work is in ``mindscope.evals``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(name="evals", no_args_is_help=True, add_completion=False,
                  help="Benchmark runs with judge grading and calibration (HLE format).")

TASKS = ("hle",)


def _show(results: dict, out: Path) -> None:
    from rich.table import Table

    from ._common import console

    t = Table(title=f"HLE-format evaluation ({out})")
    for col in ("variant", "n", "accuracy %", "± 95%", "calib. err. (official)",
                "calib. err. (corrected)", "no answer", "no conf.", "judge err."):
        t.add_column(col, justify="right" if col != "variant" else "left")
    f = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    for name, r in results.items():
        m = r.metrics
        t.add_row(name, str(m["n"]), f(m["accuracy"]), f(m["half_width"]),
                  f(m["calibration_error_official"]), f(m["calibration_error_corrected"]),
                  str(m["answer_missing"]), str(m["confidence_missing"] + m["confidence_malformed"]),
                  str(m["judge_errors"]))
    console().print(t)


def eval_cmd(
    file: str = typer.Argument("sample", help="Items: .jsonl / .parquet (the official HLE parquet "
                               "works), or 'sample' for the bundled 40-item sample."),
    task: str = typer.Option("hle", help="Task format (only 'hle')."),
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Model for ms.load (alias, folder, .gguf)."),
    model_url: Optional[str] = typer.Option(None, help="Answer with an OpenAI-compatible endpoint "
                                            "instead (base URL; --model names the model there)."),
    steer: List[str] = typer.Option([], help="FILE[@SITE]:SCALE - add a vector (repeatable; the site may come from the vector file)."),
    cap: List[str] = typer.Option([], help="FILE[@SITE]:MIN[:MAX] - cap the projection (repeatable)."),
    ablate: List[str] = typer.Option([], help="FILE[@SITE] - project a direction out (repeatable)."),
    baseline: bool = typer.Option(True, help="Also run the model without interventions."),
    judge: str = typer.Option("rule", help="'rule' (offline, default; deviates from the official "
                              "LLM judge), 'rule-lenient' (also grades replies without an "
                              "Answer: line), 'lm' (the model itself), or an http(s):// base URL."),
    judge_model: str = typer.Option("default", help="Judge model name at the --judge URL."),
    out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Run folder (resumable with the same settings; other settings are refused)."),
    limit: Optional[int] = typer.Option(None, min=1, help="Use only the first N items."),
    category: List[str] = typer.Option([], help="Keep only these categories (repeatable)."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", min=1, help="Tokens per answer."),
    batch_size: int = typer.Option(8, min=1, help="Generation batch size."),
    workers: int = typer.Option(8, min=1, help="Concurrent judge / endpoint requests."),
    prompt_style: str = typer.Option("per_type", help="'per_type' or 'single' (official repo now)."),
    corrected_calibration: bool = typer.Option(False, help="Headline calibration error includes the "
                                               "remainder bin (official loop drops it)."),
    dtype: str = typer.Option("float32", help="Model dtype."),
    images: bool = typer.Option(False, "--images", help="Keep image items (for a vision-language "
                                "model); by default they are skipped and counted."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Evaluate a model on HLE-format items; with interventions, baseline and steered side by side."""
    from mindscope import evals
    from mindscope.core import spec_interventions

    if task not in TASKS:
        raise typer.BadParameter(f"unknown task {task!r}; available: {', '.join(TASKS)}")
    items = evals.load_items(file, categories=category or None, limit=limit, images=images)
    from ._core import steer_specs

    steer_specs(steer), steer_specs(cap, "--cap", "cap"), steer_specs(ablate, "--ablate", "ablate")
    cfg = evals.EvalConfig(batch_size=batch_size, workers=workers, prompt_style=prompt_style,
                           corrected_calibration=corrected_calibration)
    if model_url:
        if steer or cap or ablate:
            raise typer.BadParameter("interventions need an in-process model; drop --model-url")
        jd = evals.make_judge(judge, model=judge_model) if judge != "lm" else None
        if jd is None:
            raise typer.BadParameter("--judge lm needs an in-process model")
        resp = evals.HTTPResponder(model_url, model, max_tokens=max_new_tokens, workers=workers)
        results = {"baseline": evals.run_eval(resp, items, jd, out / "baseline", config=cfg,
                                              variant="baseline")}
    else:
        from ._common import load_model

        lm = load_model(model, dtype=dtype, quiet=quiet)
        ivs = spec_interventions(lm, steer, cap, ablate)
        variants = {}
        if baseline or not ivs:
            variants["baseline"] = []
        if ivs:
            variants["steered"] = ivs
        jd = evals.make_judge(judge, lm=lm, model=judge_model)
        results = evals.compare_variants(lm, items, variants, jd, out, config=cfg,
                                         max_new_tokens=max_new_tokens, progress=not quiet)
    _show(results, out)
    typer.echo(f"per-item records and results.json under {out}")


app.command("run", hidden=True)(eval_cmd)  # old spelling of `mindscope eval`, kept one release


@app.command("grade")
def grade_cmd(
    predictions: Path = typer.Argument(..., help="Saved responses: JSON {id: text} or the official "
                                       "{id: {'response': text, ...}} file."),
    items_file: str = typer.Option("sample", "--items", help="Items (.jsonl / .parquet / 'sample')."),
    judge: str = typer.Option("rule", help="'rule', 'rule-lenient' or an http(s):// base URL."),
    judge_model: str = typer.Option("default", help="Judge model name at the --judge URL."),
    out: Path = typer.Option(Path("runs/eval-grade"), "--out", "-o", help="Run folder (resumable)."),
    workers: int = typer.Option(8, min=1, help="Concurrent judge requests."),
    corrected_calibration: bool = typer.Option(False, help="Include the remainder bin."),
) -> None:
    """Grade saved responses (no model needed)."""
    from mindscope import evals

    if not predictions.exists():
        raise typer.BadParameter(f"{predictions}: no such file")
    try:
        data = json.loads(predictions.read_text())
    except json.JSONDecodeError as e:
        raise typer.BadParameter(f"{predictions}: not JSON ({e.msg})") from None
    items = evals.load_items(items_file)
    res = evals.run_eval(evals.StaticResponder(data, name=predictions.stem), items,
                         evals.make_judge(judge, model=judge_model), out, variant="saved",
                         config=evals.EvalConfig(workers=workers,
                                                 corrected_calibration=corrected_calibration))
    _show({"saved": res}, out)


@app.command("judge-agreement")
def judge_agreement_cmd(
        judge: str = typer.Option("rule", "--judge", help="rule | lm | http://host:port/v1"),
        judge_model: str = typer.Option("default", "--judge-model",
                                        help="Judge model name at the --judge URL.")) -> None:
    """Agreement of a judge with the introspection protocol's hand-labelled responses."""
    from rich.console import Console

    from mindscope.experiments import introspection as I

    con = Console()
    a = I.agreement(I.make_grader(judge, model=judge_model))
    con.print_json(json.dumps({k: a[k] for k in ("grader", "n", "claims", "identifies")}))
    for d in a["disagreements"]:
        con.print(f"[yellow]disagree[/] {d['concept']}: {d['response']!r} label={d['label']} "
                  f"graded={d['graded']}")
