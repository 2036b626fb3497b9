"""The main job: one study of a model, end to end, resumable step by step.

Steps (each writes its outputs under ``out/<step>/`` and, when done, ``out/steps/<step>.json``;
a rerun into the same folder with the same settings skips finished steps and resumes the
harvest and the SAE training where they stopped):

1. ``harvest``   activations at a middle layer from the default corpus
2. ``sae``       a TopK SAE trained on them
3. ``evaluate``  FVU, L0, dead %, CE-loss increase / KL / CE recovered on held-out text
4. ``features``  the streaming feature analysis, explanations and scores for the top latents,
                 the static feature browser
5. ``steering``  an SAE feature clamped and a concept vector added: unsteered vs steered text,
                 with a measured effect for each
6. ``introspection``  concept injection with controls (quick config)
7. ``entropy_gap``    on-policy recognition through output entropy (quick config)
8. ``controls``  each registered positive control (an effect planted in the model, the protocol
                 run unchanged) read from its run folder, or run here for ``run_controls``
9. ``report``    ``report.html`` tying it together, each control beside the real result
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ..core import guard_settings
from ..experiments import protocols
from ..runs import to_jsonable, write_json

log = logging.getLogger(__name__)



def demo_protocols() -> dict[str, str]:
    """``{protocol: demo step}``: the registered protocols the demo runs, read from the registry
    (``@protocol(name, demo_step=...)``); each step is ``_steps.step_<step>``."""
    return {n: p.demo_step for n, p in protocols().items() if p.demo_step}


def registered_controls() -> dict:
    """``{protocol: ControlSpec}`` of the registered positive controls (``experiments.controls``)."""
    from ..experiments import controls

    return controls()


STEPS = ("harvest", "sae", "evaluate", "features", "steering", *demo_protocols().values(),
         "controls", "report")


@dataclass
class DemoConfig:
    """Settings of one demo study. Defaults: the full study (~7 min on 2 idle CPU cores);
    ``DemoConfig.quick()``: the same steps at toy sizes (~2 min)."""

    model: str = "smollm2-135m-instruct"
    """Model alias, folder or .gguf (anything ``ms.load`` takes)."""
    layer: Optional[int] = None
    """Block whose output (resid_post) is studied; None: the middle block (n_layers // 2)."""
    n_tokens: int = 200_000
    """Tokens to harvest from the default corpus (window 128, BOS and specials dropped)."""
    n_latents: int = 4608
    """SAE width (8x d_model for SmolLM2)."""
    k: int = 32
    """Active latents per token (TopK)."""
    train_tokens: int = 800_000
    """Tokens of SAE training (several passes over the harvest when larger than it)."""
    batch_size: int = 4096
    """SAE batch size in tokens."""
    ce_texts: int = 24
    """Held-out documents for the CE-loss / KL evaluation (text past the harvested prefix)."""
    n_explain: int = 24
    """Latents explained and scored (the most frequent live ones, density <= 5%)."""
    judge: str = "offline"
    """Feature judge: 'offline', 'lm' (the studied model) or an OpenAI-compatible URL."""
    steer_prompts: int = 4
    """Neutral prompts for the steering step."""
    steer_tokens: int = 40
    """New tokens per steered generation."""
    feature_multiple: float = 4.0
    """SAE feature clamp value as a multiple of the feature's max activation."""
    concept: str = "ocean"
    """Word whose concept vector is added in the steering step."""
    concept_strength: float = 0.5
    """Relative strength of the concept vector (fraction of the site's mean residual norm)."""
    introspection: dict = field(default_factory=dict)
    """Overrides of ``introspection.Config.quick()``."""
    entropy_gap: dict = field(default_factory=dict)
    """Overrides of ``onpolicy.Config.quick()``."""
    seed: int = 0
    """Seed of SAE training and sampling."""
    controls_dir: str = "runs/controls"
    """Where finished positive controls are read from: ``<dir>/<protocol>/control.json``, as
    ``python -m mindscope.experiments.positive_control PROTOCOL -o runs/controls/PROTOCOL`` writes them."""
    run_controls: tuple = ("emotions",)
    """Protocols whose positive control the demo runs itself (quick config, this seed, the
    control's strengths) when ``controls_dir`` has none and one is registered; () runs none.
    Default: the emotions control, the cheapest (extraction only, well under a minute)."""

    def __post_init__(self):
        for name in ("n_tokens", "n_latents", "k", "train_tokens", "batch_size", "ce_texts",
                     "n_explain", "steer_prompts", "steer_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"DemoConfig.{name} must be a positive integer, got {v!r}")
        if self.k > self.n_latents:
            raise ValueError(f"DemoConfig.k ({self.k}) must be <= n_latents ({self.n_latents})")
        if self.n_tokens < 2 * 128:
            raise ValueError("DemoConfig.n_tokens must be at least two windows (256)")
        self.run_controls = tuple(self.run_controls)
        bad = [n for n in self.run_controls if n not in protocols()]
        if bad:
            raise ValueError(f"DemoConfig.run_controls: {bad} not protocols; choose from "
                             f"{', '.join(protocols())}")

    @classmethod
    def quick(cls, **over) -> "DemoConfig":
        """Toy sizes: every step runs, nothing is meant to be good (~2 min on SmolLM2)."""
        kw = dict(n_tokens=16_384, n_latents=1152, k=16, train_tokens=65_536, batch_size=1024,
                  ce_texts=4, n_explain=6, steer_prompts=2, steer_tokens=16,
                  introspection=dict(n_concepts=2, n_baseline=8, layers=(2 / 3,), strengths=(8.0,),
                                     max_new_tokens=8, n_sentences=1, protocols=("detection",)),
                  entropy_gap=dict(n_prompts=3, max_new_tokens=12, n_boot=100))
        return cls(**{**kw, **over})

    def to_dict(self) -> dict:
        return to_jsonable(dataclasses.asdict(self))


class DemoState:
    """The run folder: settings in ``demo.json``, one ``steps/<step>.json`` per finished step."""

    def __init__(self, out, cfg: DemoConfig, restart: bool = False):
        self.out, self.cfg = Path(out), cfg
        self.out.mkdir(parents=True, exist_ok=True)
        rec = self.out / "demo.json"
        if restart and (self.out / "steps").exists():
            shutil.rmtree(self.out / "steps")
        if not restart:
            guard_settings(rec, cfg.to_dict(), "config", "a demo run",
                           "use another --out, or --restart to redo it here")
        write_json(rec, {"config": cfg.to_dict(), "steps": list(STEPS)})
        (self.out / "steps").mkdir(exist_ok=True)

    def dir(self, step: str) -> Path:
        d = self.out / step
        d.mkdir(parents=True, exist_ok=True)
        return d

    def done(self, step: str) -> Optional[dict]:
        p = self.out / "steps" / f"{step}.json"
        if not p.exists():
            return None
        try:
            return json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s is unreadable; running step %s again", p, step)
            return None

    def finish(self, step: str, result: dict, seconds: float) -> dict:
        rec = {"step": step, "seconds": round(seconds, 2), **result}
        write_json(self.out / "steps" / f"{step}.json", rec)
        return rec

    def results(self) -> dict:
        return {s: r for s in STEPS if (r := self.done(s)) is not None}


def run_demo(out="runs/demo", cfg: Optional[DemoConfig] = None, lm=None, restart: bool = False,
             steps: Optional[tuple] = None, on_step: Optional[Callable[[str, dict], None]] = None
             ) -> dict:
    """Run (or resume) the study into ``out``; returns {step: result} of every finished step.
    ``lm``: an already loaded model (else ``cfg.model`` is loaded). ``steps``: a subset to run
    (the others must already be done if a later step needs them)."""
    from . import _steps

    cfg = cfg or DemoConfig()
    state = DemoState(out, cfg, restart=restart)
    todo = [s for s in STEPS if steps is None or s in steps]
    unknown = [s for s in (steps or ()) if s not in STEPS]
    if unknown:
        raise ValueError(f"unknown demo step(s) {unknown}; choose from {STEPS}")
    t_all = time.perf_counter()
    ctx = _steps.Context(state=state, cfg=cfg, lm=lm)
    for step in todo:
        prev = state.done(step)
        if prev is not None:
            log.info("demo: %s already done (%.0f s); skipping", step, prev.get("seconds", 0))
            if on_step:
                on_step(step, {**prev, "skipped": True})
            continue
        t = time.perf_counter()
        torch.manual_seed(cfg.seed)
        result = getattr(_steps, f"step_{step}")(ctx)
        rec = state.finish(step, result, time.perf_counter() - t)
        if on_step:
            on_step(step, rec)
    res = state.results()
    write_json(state.out / "timing.json", {"total_seconds_this_call": round(
        time.perf_counter() - t_all, 1), "steps": {s: r.get("seconds") for s, r in res.items()}})
    return res
