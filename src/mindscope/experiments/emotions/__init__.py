"""Emotion concepts (issue 10): emotion vectors from stories, their validation and causal effects.

Steps of ``run(lm, cfg, out_dir)`` (``cfg.parts`` selects the optional ones):

* vectors    - stories per emotion (shipped originals, model-written, or a JSONL file); mean over
               story tokens at ``site`` (default 2/3 depth), minus the mean over emotions, top
               PCs of neutral text projected out, unit norm -> ``emotion_vectors.safetensors``.
* classify   - leave-one-story-out classification of held-out stories (accuracy vs chance).
* geometry   - PCA of the vectors: Pearson r of PC1 with valence and PC2 with arousal.
* intensity  - scenarios of rising intensity (a dose growing to dangerous): Spearman rho of the
               target emotion's projection with the rank.
* tracking   - every token of a conversation projected on every vector (heatmap PNG), and the
               quantitative test: held-out passages (story context and, cross-context, user
               dialogue) - macro AUC of the projection for the operative emotion, with a
               bootstrap interval, and top-1 accuracy vs chance.
* preferences- pairwise activity choices -> Elo; steering on one option's tokens shifts its
               Elo; probe-preference correlation vs steering effect across emotions.
* misaligned - rate of choosing the sycophantic/dishonest option in shipped scenarios under
               steering with each emotion vector.

>>> # import mindscope as ms; from mindscope.experiments import emotions
>>> # res = emotions.run(ms.load(), emotions.Config.quick(), "runs/emotions"); res.report()
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ...core import atomic_save_tensors
from ...runs import RunDir, save_html, save_png, weights_note

from .._common import at_least_one, choose
from .._protocol import protocol, ResultDisplay
from .data import load_story_jsonl, load_table, load_tasks, model_stories, shipped_stories
from .prefs import misaligned_choices, preferences
from .tracking import passage_tracking
from .report import (build_report, plot_geometry, plot_intensity, plot_misaligned,
                     plot_preferences, plot_tracking)
from .vectors import (classify_heldout, geometry, intensity, neutral_acts, story_means,
                      track_tokens, vectors_from_means)
from .control import (GatedWrite, configure_extraction, detect_recovery, plant_feature,  # noqa: E402
                      planted_direction, recovery_stats)

log = logging.getLogger(__name__)
PARTS = ("classify", "geometry", "intensity", "tracking", "preferences", "misaligned")


@dataclass
class Config:
    """Settings of an emotion-concepts run. Defaults: the documented default-model run."""

    site: Optional[str] = None
    """Where vectors are read and steering is applied; None = resid_post at 2/3 depth
    (resid_post.20 for 30 layers)."""
    emotions: Optional[tuple] = None
    """Emotions to use (names from the shipped table); None = all 30."""
    story_source: str = "shipped"
    """``shipped`` (3 original stories per emotion), ``model`` (the model writes them) or a path
    to a JSONL file of {"emotion", "text"} (e.g. a stronger model's stories)."""
    stories_per_emotion: int = 3
    """Stories per emotion the model writes (story_source='model'); shipped/JSONL use all."""
    story_tokens: int = 64
    """Tokens per model-written story."""
    variance: float = 0.5
    """Project out the fewest neutral-text PCs explaining this fraction of its variance."""
    skip_first: int = 1
    """Leading tokens of each text left out of the means (the attention-sink token)."""
    parts: tuple = PARTS
    """Analyses to run after extracting the vectors (any of PARTS)."""
    steer_emotions: tuple = ("happy", "calm", "loving", "afraid", "angry", "sad", "desperate",
                             "bored")
    """Emotions steered in the preference and misaligned-choice experiments."""
    strength: float = 0.5
    """Steering strength as a fraction of the mean residual norm at ``site``."""
    n_activities: int = 20
    """Activities in the preference tournament (all pairs, both orders)."""
    n_pairs: int = 24
    """Pairs whose options are steered (each side, both orders: 4 rows per pair per emotion)."""
    batch_size: int = 16
    """Rows per forward pass."""
    seed: int = 0
    """Seed for sampling stories and pairs and the Elo order."""

    def __post_init__(self):
        self.parts = choose(self.parts, PARTS, "part")
        if self.emotions is not None:
            self.emotions = tuple(self.emotions)
            if len(self.emotions) < 3:
                raise ValueError("give at least 3 emotions (PCA and classification need them)")
        if not 0 < self.variance < 1:
            raise ValueError(f"variance must be in (0, 1); got {self.variance}")
        if self.story_source not in ("shipped", "model") and not Path(self.story_source).suffix:
            raise ValueError(f"story_source must be 'shipped', 'model' or a .jsonl path; got "
                             f"{self.story_source!r}")
        at_least_one(self, ("stories_per_emotion", "story_tokens", "n_activities", "n_pairs",
                            "batch_size"))
        if self.n_activities < 3:
            raise ValueError("n_activities must be >= 3")
        self.steer_emotions = tuple(self.steer_emotions)

    @classmethod
    def quick(cls, **over) -> "Config":
        """A small run: 12 emotions, 8 activities, 3 steered emotions (about a minute on SmolLM2)."""
        base = dict(emotions=("happy", "joyful", "calm", "content", "proud", "excited", "sad",
                              "afraid", "angry", "bored", "lonely", "anxious"),
                    steer_emotions=("happy", "afraid", "sad"), n_activities=8, n_pairs=6)
        return cls(**{**base, **over})


@dataclass(repr=False)
class Result(ResultDisplay):
    """What a run measured. ``results`` is what ``results.json`` holds."""

    config: Config
    out_dir: Path
    vectors: object = None
    """The emotion vectors (``ms.VectorSet``, unit rows)."""
    results: dict = field(default_factory=dict)
    plots: dict = field(default_factory=dict)

    def summary_rows(self) -> list[dict]:
        r, rows = self.results, []
        c = r.get("classify")
        if c:
            rows.append({"metric": "held-out story classification accuracy (chance "
                                   f"{c['chance']:.3f})", "value": c["accuracy"]})
        g = r.get("geometry")
        if g:
            rows.append({"metric": "PC1 vs valence (author ratings), Pearson r",
                         "value": g["pc1_valence"]["r"]})
            if g.get("pc2_arousal"):
                rows.append({"metric": "PC2 vs arousal (author ratings), Pearson r",
                             "value": g["pc2_arousal"]["r"]})
        for ctx, t in (r.get("tracking_test") or {}).items():
            if isinstance(t, dict) and "macro_auc" in t:
                rows.append({"metric": f"tracking, held-out {ctx} passages: macro AUC "
                             f"[{t['auc_ci'][0]:.2f}, {t['auc_ci'][1]:.2f}] (n={t['n_passages']})",
                             "value": t["macro_auc"]})
            rows.append({"metric": "PC with the largest |r| with valence", "value": g["best_valence_pc"]})
        for s in r.get("intensity", []):
            rows.append({"metric": f"intensity '{s['name']}' ({s['emotion']}): Spearman rho",
                         "value": s["spearman_rho"]})
        p = r.get("preferences")
        if p:
            rows.append({"metric": "probe-preference r vs steering effect (across emotions)",
                         "value": p["r_probe_vs_steering"]["r"]})
        m = r.get("misaligned")
        if m:
            for k, v in m["rates"].items():
                rows.append({"metric": f"misaligned choice rate, steer {k}", "value": v})
        return rows

    def report(self) -> Path:
        """Write ``report.html`` and return its path."""
        return save_html(self.out_dir / "report.html", build_report(self))


def default_site(lm) -> str:
    return f"resid_post.{round(2 * lm.n_layers / 3)}"


def get_stories(lm, cfg: Config, names: list[str], topics: list[str]) -> dict[str, list[str]]:
    if cfg.story_source == "shipped":
        s = shipped_stories()
        return {e: s[e] for e in names}
    if cfg.story_source == "model":
        return model_stories(lm, names, topics, cfg.stories_per_emotion, cfg.story_tokens,
                             seed=cfg.seed, batch_size=cfg.batch_size)
    return load_story_jsonl(cfg.story_source, names)


@protocol("emotions")
def run(lm, cfg: Optional[Config] = None, out_dir="runs/emotions") -> Result:
    """Extract the vectors, run ``cfg.parts``, write the run folder (vectors, results.json,
    PNGs, report.html) and return the Result."""
    cfg = cfg or Config()
    out = Path(out_dir)
    t0 = time.perf_counter()
    site = cfg.site or default_site(lm)
    lm.expand_sites(site)
    table = load_table()
    rows = {e["name"]: e for e in table["emotions"]}
    names = list(cfg.emotions or rows)
    unknown = [e for e in names if e not in rows]
    if unknown:
        raise ValueError(f"unknown emotion(s) {unknown}; the shipped table has {sorted(rows)}")
    run_dir = RunDir(out, cfg, lm, experiment="emotions")
    stories = get_stories(lm, cfg, names, table["topics"])
    names = list(stories)
    X, labels, names = story_means(lm, stories, site, cfg.skip_first, cfg.batch_size)
    neutral = neutral_acts(lm, table["neutral"], site, cfg.skip_first, cfg.batch_size)
    vs = vectors_from_means(X, labels, names, neutral, cfg.variance, site, lm.name)
    vs.meta.update({"story_source": cfg.story_source})
    vs.save(out / "emotion_vectors.safetensors")
    # what the vectors were computed from, so they can be re-derived and bootstrapped over
    # stories (the positive control reads it): per-story means, labels, neutral-token activations
    atomic_save_tensors(out / "story_means.safetensors",
                        {"story_means": X, "labels": torch.as_tensor(labels, dtype=torch.int64),
                         "neutral": neutral}, metadata={"names": json.dumps(names), "site": site})
    res = Result(cfg, out, vs)
    val = [rows[e]["valence"] for e in names]
    aro = [rows[e]["arousal"] for e in names]
    R = res.results
    R.update({"model": lm.name, "chat_format": lm.chat_format, "weights": weights_note(lm), "seed": cfg.seed, "site": site, "n_emotions": len(names), "n_stories": len(labels),
              "story_source": cfg.story_source, "projected_out": vs.meta.get("projected_out"),
              "ratings_source": table["source"],
              "ratings_are": "author ratings (written by the mindscope authors, not a published "
                             "norm set; no published valence/arousal norms ship offline)",
              "emotions": names})
    tasks = load_tasks()
    if "classify" in cfg.parts:
        R["classify"] = classify_heldout(X, labels, names, neutral, cfg.variance)
    if "geometry" in cfg.parts:
        R["geometry"] = geometry(vs, val, aro)
        res.plots["geometry"] = save_png(out / "geometry.png", plot_geometry(R["geometry"], val))
    if "intensity" in cfg.parts:
        R["intensity"] = intensity(lm, vs, tasks["intensity"], site, cfg.batch_size)
        if R["intensity"]:
            res.plots["intensity"] = save_png(out / "intensity.png", plot_intensity(R["intensity"]))
    if "tracking" in cfg.parts:
        R["tracking"] = track_tokens(lm, vs, tasks["conversation"], site, cfg.skip_first)
        R["tracking_test"] = passage_tracking(lm, vs, site, cfg.skip_first, cfg.batch_size,
                                              cfg.seed)
        res.plots["tracking"] = save_png(out / "tracking.png", plot_tracking(R["tracking"]))
    steer = [e for e in cfg.steer_emotions if e in names]
    if "preferences" in cfg.parts:
        R["preferences"] = preferences(lm, vs, tasks["activities"][:cfg.n_activities], steer,
                                       site, cfg.strength, cfg.n_pairs, cfg.seed, cfg.batch_size)
        res.plots["preferences"] = save_png(out / "preferences.png",
                                            plot_preferences(R["preferences"]))
    if "misaligned" in cfg.parts:
        R["misaligned"] = misaligned_choices(lm, vs, tasks["choices"], steer, site, cfg.strength,
                                             cfg.seed, cfg.batch_size)
        res.plots["misaligned"] = save_png(out / "misaligned.png", plot_misaligned(R["misaligned"]))
    R["seconds"] = time.perf_counter() - t0
    run_dir.save_results(R)
    res.report()
    log.info("emotion concepts done in %.0fs -> %s", R["seconds"], out)
    return res
