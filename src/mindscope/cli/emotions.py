"""``mindscope emotions run``: the emotion-concepts protocol (experiments.emotions)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._experiment import MODEL, QUICK, group, out_option, run_and_print

app = group("emotions", "Emotion concepts: emotion vectors from stories, validation "
            "(classification, valence/arousal geometry, intensity), per-token tracking, "
            "preference steering, misaligned choices.", "Emotion-concept experiments.")


@app.command("run")
def run_cmd(
    out: Path = out_option("runs/emotions"),
    model: str = MODEL,
    site: Optional[str] = typer.Option(None, help="Site, e.g. resid_post.20 (default: 2/3 depth)."),
    emotion: List[str] = typer.Option([], "--emotion", "-e", help="Emotions to use (default all 30)."),
    stories: str = typer.Option("shipped", help="shipped | model | path to a JSONL of "
                                "{emotion, text} stories."),
    part: List[str] = typer.Option([], "--part", help="Analyses to run (default all): classify, "
                                   "geometry, intensity, tracking, preferences, misaligned."),
    steer: List[str] = typer.Option([], "--steer", help="Emotions steered (preferences/misaligned)."),
    strength: float = typer.Option(0.5, help="Steering strength x mean residual norm."),
    n_activities: int = typer.Option(20, help="Activities in the preference tournament."),
    n_pairs: int = typer.Option(24, help="Pairs whose options are steered."),
    quick: bool = QUICK,
    batch_size: int = typer.Option(16, help="Rows per forward pass."),
    seed: int = typer.Option(0, help="Random seed."),
):
    """Run the protocol; write report.html, results.json, PNGs and emotion_vectors.safetensors."""
    from ..experiments import emotions

    over = dict(site=site, story_source=stories, strength=strength, batch_size=batch_size,
                seed=seed)
    if not quick:
        over.update(n_activities=n_activities, n_pairs=n_pairs)
    if emotion:
        over["emotions"] = tuple(emotion)
    if part:
        over["parts"] = tuple(part)
    if steer:
        over["steer_emotions"] = tuple(steer)
    run_and_print(emotions, over, quick, model, out)
