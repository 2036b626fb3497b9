"""``mindscope onpolicy <protocol>``: on-policy recognition (gap, surprise, intent, verbal, all).
Thin: the logic is in ``mindscope.experiments.onpolicy``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from ._experiment import print_summary

console = Console()
app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="On-policy recognition: entropy on own vs prefilled text, input surprise, "
                       "cached intention, verbal self-report.")


def _run(protocols: tuple, model: str, out: Path, quick: bool, n_prompts: Optional[int],
         max_new_tokens: Optional[int], temperature: Optional[float], seed: int,
         offpolicy_jsonl: Optional[Path], other_model: Optional[str],
         compare_model: Optional[str]) -> None:
    import mindscope as ms
    from mindscope.experiments import onpolicy

    over = {"protocols": protocols, "seed": seed}
    for k, v in (("n_prompts", n_prompts), ("max_new_tokens", max_new_tokens),
                 ("temperature", temperature), ("other_model", other_model),
                 ("compare_model", compare_model)):
        if v is not None:
            over[k] = v
    if offpolicy_jsonl is not None:
        if not offpolicy_jsonl.is_file():
            raise typer.BadParameter(f"{offpolicy_jsonl} does not exist", param_hint="--offpolicy-jsonl")
        over["offpolicy_jsonl"] = str(offpolicy_jsonl)
    try:
        cfg = onpolicy.Config.quick(**over) if quick else onpolicy.Config(**over)
        lm = ms.load(model)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None
    res = onpolicy.run(lm, cfg, out)
    print_summary(res, console, title=f"on-policy recognition: {lm.name}")
    console.print(f"wrote {out / 'results.json'} and {out / 'report.html'}")


def _command(name: str, protocols: tuple, doc: str):
    def cmd(
        model: str = typer.Option("smollm2-135m-instruct", "--model", "-m",
                                  help="model alias, local folder or .gguf"),
        out: Path = typer.Option(Path(f"runs/onpolicy-{name}"), "--out", "-o",
                                 help="run folder (results.json, report.html, plots)"),
        quick: bool = typer.Option(False, "--quick", help="tiny settings (Config.quick)"),
        n_prompts: Optional[int] = typer.Option(None, "--n-prompts", help="prompts (max 24)"),
        max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens",
                                                     help="own response length"),
        temperature: Optional[float] = typer.Option(None, "--temperature",
                                                    help="sampling temperature of own responses"),
        seed: int = typer.Option(0, "--seed"),
        offpolicy_jsonl: Optional[Path] = typer.Option(
            None, "--offpolicy-jsonl", help="another model's answers: JSONL of {prompt, response}"),
        other_model: Optional[str] = typer.Option(None, "--other-model",
                                                  help="a model that writes the off-policy answers"),
        compare_model: Optional[str] = typer.Option(
            None, "--compare-model", help="a second model (e.g. the base model) to measure too"),
    ):
        _run(protocols, model, out, quick, n_prompts, max_new_tokens, temperature, seed,
             offpolicy_jsonl, other_model, compare_model)
    cmd.__doc__ = doc
    app.command(name)(cmd)


_command("gap", ("gap",), "Entropy on own vs prefilled off-policy responses; off/on ratio + CIs.")
_command("surprise", ("surprise",), "Probe input surprisal by layer; steer along it (dose-response).")
_command("intent", ("intent",), "Cached intention: topic entropy, last-token probe, topic prefills.")
_command("verbal", ("verbal",), "Ask the model whether it wrote a turn; compare with entropy AUC.")
_command("all", ("gap", "surprise", "intent", "verbal"), "All four protocols.")
