"""``mindscope persona run``: persona space and the Assistant axis (experiments.persona)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._experiment import MODEL, QUICK, group, out_option, run_and_print

app = group("persona", "Persona space and the Assistant axis: role vectors, PCA, steering along "
            "the axis, drift over conversations, activation capping.",
            "Persona-space experiments.")


@app.command("run")
def run_cmd(
    out: Path = out_option("runs/persona"),
    model: str = MODEL,
    n_roles: int = typer.Option(50, help="Roles from the shipped list (52)."),
    prompts_per_role: int = typer.Option(2, help="System prompts per role (up to 3)."),
    n_questions: int = typer.Option(2, help="Extraction questions per system prompt (the same "
                                    "questions for every role and the default assistant)."),
    max_new_tokens: int = typer.Option(32, help="Tokens per role/default response."),
    role_filter: str = typer.Option("rule", help="rule | judge | none: keep role responses "
                                    "scored 3/3 for playing the role (rule: offline rules; judge: "
                                    "--judge)."),
    judge: Optional[str] = typer.Option(None, help="lm (the loaded model as a logit judge) or an "
                                        "OpenAI-compatible base URL: role filter with "
                                        "--role-filter judge, and the second opinion."),
    layer: Optional[int] = typer.Option(None, help="Analysis/steering layer (default 2/3 depth)."),
    cap_layers: Optional[str] = typer.Option(None, help="Capped layers a:b (default 0.6-0.8 "
                                             "depth, 18:25 for 30 layers)."),
    part: List[str] = typer.Option([], "--part", help="steering, drift, jailbreak, capability "
                                   "(default all)."),
    eval_items: int = typer.Option(8, help="HLE-sample items for the capability check."),
    quick: bool = QUICK,
    batch_size: int = typer.Option(32, help="Rows per batch."),
    seed: int = typer.Option(0, help="Sampling seed."),
):
    """Run the protocol; write report.html, results.json, PNGs, assistant_axis.safetensors."""
    from ..experiments import persona

    over = dict(role_filter=role_filter, judge=judge, layer=layer, batch_size=batch_size,
                seed=seed)
    if not quick:
        over.update(n_roles=n_roles, prompts_per_role=prompts_per_role, n_questions=n_questions,
                    max_new_tokens=max_new_tokens, eval_items=eval_items)
    if cap_layers:
        try:
            a, b = (int(x) for x in cap_layers.split(":"))
        except ValueError:
            raise typer.BadParameter(f"--cap-layers takes a:b, got {cap_layers!r}") from None
        over["cap_layers"] = tuple(range(a, b))
    if part:
        over["parts"] = tuple(part)
    run_and_print(persona, over, quick, model, out)
