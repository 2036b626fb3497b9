"""Introspection experiments: the protocols of "Emergent Introspective Awareness in Large
Language Models" (2025) and "Mechanisms of Introspective Awareness" (2026), on any loaded model.

Protocols (``Config.protocols``): ``detection`` (injected-thought detection, layer x strength,
controls, P(Yes) readout), ``thoughts`` (thoughts vs text), ``prefill`` (prefill detection with
retroactive injection), ``control`` (intentional control), ``mechanisms`` (refusal-direction
ablation and a trained additive bias).

>>> # import mindscope as ms
>>> # from mindscope.experiments import introspection as intro
>>> # res = intro.run(ms.load(), intro.Config.quick(), "runs/introspection")
>>> # res.metrics["detection"]["cells"][0]["tpr"], res.report()
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from safetensors.torch import save_file

from ...core import atomic_write_bytes
from ...runs import RunDir, to_jsonable, write_json
from .._protocol import protocol, ResultDisplay
from .cache import Stages, settings_key
from .detect import (PREAMBLE, QUESTION, TRIAL_QUESTIONS, concept_sets, injection_positions,
                     resolve_layers, run_detection, trial_messages, trial_prompt,
                     yes_no_logodds)
from .grade import (Grade, JudgeGrader, RuleGrader, agreement, apologizes,
                    load_grading_set, load_json, load_words, make_grader)
from ...judges import LogitJudge
from .. import graders as G
from .mech import refusal_direction, run_mechanisms, train_bias
from .probes import CONTROL_VARIANTS, run_control, run_prefill, run_thoughts
from .control import bias_split, configure_detection, detect_detection, plant_bias
from .detector import DetectorLoRA, plant_detector  # registers the control

log = logging.getLogger(__name__)
PROTOCOLS = ("detection", "thoughts", "prefill", "control", "mechanisms")

__all__ = ["Config", "Result", "run", "PROTOCOLS", "to_jsonable", "RuleGrader", "JudgeGrader", "Grade",
           "make_grader", "agreement", "load_words", "load_grading_set", "trial_messages",
           "trial_prompt", "injection_positions", "concept_sets", "resolve_layers",
           "run_detection", "yes_no_logodds", "refusal_direction", "train_bias", "apologizes",
           "PREAMBLE", "QUESTION", "TRIAL_QUESTIONS", "CONTROL_VARIANTS"]


@dataclass
class Config:
    """Settings of an introspection run (defaults follow the papers where the model allows)."""

    protocols: tuple = PROTOCOLS
    """Which protocols to run, from ``detection thoughts prefill control mechanisms``."""
    concepts: Optional[list] = None
    """Concept words to inject (default: the shipped 50)."""
    n_concepts: Optional[int] = None
    """Use only the first n concepts (None = all)."""
    baseline_words: Optional[list] = None
    """Words whose mean "Tell me about {word}" activation is subtracted (default: shipped 100)."""
    n_baseline: Optional[int] = None
    """Use only the first n baseline words (None = all)."""
    layers: tuple = (1 / 3, 1 / 2, 2 / 3, 5 / 6)
    """Injection layers: floats in (0, 1) are depth fractions, ints are block indices."""
    strengths: tuple = (1.0, 2.0, 4.0, 8.0)
    """Injection strengths s in h + s·v (v the unnormalised concept vector)."""
    samples: int = 1
    """Generations per (concept, layer, strength)."""
    n_controls: Optional[int] = None
    """Control trials (no injection) per detection condition (None = samples x n_concepts)."""
    max_new_tokens: int = 100
    """Response length in tokens (detection and mechanisms trials)."""
    probe_max_new_tokens: Optional[int] = None
    """Response length for the thoughts / prefill / control protocols, whose prompts ask for a
    short answer (None = ``max_new_tokens``)."""
    temperature: float = 1.0
    """Sampling temperature (the papers use 1)."""
    seed: int = 0
    """Sampling seed."""
    trial: int = 1
    """The N in "Trial N"."""
    trial_prompts: tuple = (0, 1, 2, 3, 4)
    """Which trial wordings (indices into ``TRIAL_QUESTIONS``; 0 = the papers') the detection
    rows cycle over; FPR and TPR are reported per wording (one prompt cannot support a
    0%-false-positive claim)."""
    grader: str = "rule"
    """``rule`` | ``lm`` (the loaded model judges itself) | an OpenAI-compatible base URL."""
    judge_model: str = "default"
    """Model name on the judge endpoint (HTTP grader)."""
    sentences: Optional[list] = None
    """Sentences for the thoughts / prefill / control protocols (default: shipped 10)."""
    n_sentences: Optional[int] = 4
    """Use only the first n sentences (None = all)."""
    probe_strength: float = 4.0
    """Injection strength for the thoughts-vs-text and prefill protocols (layer sweep)."""
    mech_layer: float = 2 / 3
    """Injection layer of the mechanisms protocol (fraction or index)."""
    mech_strength: float = 4.0
    """Injection strength of the mechanisms protocol."""
    refusal_layer: float = 0.6
    """Site of the refusal direction (resid_post, fraction or index)."""
    bias_layer: float = 0.5
    """The trained bias is added at mlp_out of this layer (fraction or index)."""
    bias_steps: int = 30
    """Adam steps for the trained bias."""
    bias_lr: float = 0.1
    """Adam learning rate for the bias."""
    bias_batch: int = 4
    """Injected rows per step (plus one control row)."""
    bias_train_frac: float = 0.5
    """Fraction of concepts used to train the bias; the rest are held out."""
    batch_size: int = 32
    """Rows per forward / generate batch."""
    second_opinion: bool = True
    """Also grade the detection and prefill transcripts with the loaded model as a logit judge
    (``judges.LogitJudge``) and report rule-vs-judge agreement (Cohen's kappa)."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self):
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if isinstance(self.protocols, str) or bad:
            raise ValueError(f"unknown protocol(s) {bad or self.protocols!r}; choose from {PROTOCOLS}")
        self.protocols = tuple(self.protocols)
        if not self.layers or not self.strengths:
            raise ValueError("layers and strengths must each name at least one value")
        if any(s < 0 for s in self.strengths):
            raise ValueError(f"strengths must be >= 0; got {self.strengths}")
        for name in ("samples", "max_new_tokens", "bias_batch", "n_controls",
                     "probe_max_new_tokens"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1; got {getattr(self, name)}")
        self.trial_prompts = tuple(int(w) for w in self.trial_prompts)
        if not self.trial_prompts or any(not 0 <= w < len(TRIAL_QUESTIONS)
                                         for w in self.trial_prompts):
            raise ValueError(f"trial_prompts must be indices 0..{len(TRIAL_QUESTIONS) - 1}; "
                             f"got {self.trial_prompts}")
        if not 0 < self.bias_train_frac < 1:
            raise ValueError(f"bias_train_frac must be in (0, 1); got {self.bias_train_frac}")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if self.n_concepts is not None and self.n_concepts < 2:
            raise ValueError("n_concepts must be >= 2 (the bias protocol holds concepts out)")

    @classmethod
    def quick(cls, **over) -> "Config":
        """Tiny: 4 concepts, 2 layers, 2 strengths, 16 tokens, 20 baseline words (for demos)."""
        kw = dict(n_concepts=4, n_baseline=20, layers=(1 / 2, 2 / 3), strengths=(4.0, 8.0),
                  max_new_tokens=16, n_sentences=2, bias_steps=4, bias_batch=2)
        return cls(**{**kw, **over})

    def words(self) -> tuple[list[str], list[str]]:
        c0, b0 = load_words()
        c = list(self.concepts or c0)[: self.n_concepts]
        b = list(self.baseline_words or b0)[: self.n_baseline]
        return c, b

    def sentence_list(self) -> list[str]:
        return list(self.sentences or load_json("prompts.json")["sentences"])[: self.n_sentences]


@dataclass(repr=False)
class Result(ResultDisplay):
    """Metrics per protocol (``metrics[protocol]``), transcripts, and where they were saved."""

    config: Config
    metrics: dict
    trials: dict = field(default_factory=dict)
    out_dir: Optional[Path] = None
    runtime_s: float = 0.0
    model: str = ""
    grader: dict = field(default_factory=dict)
    chat_format: str = ""
    """How the trial prompts were rendered (``LM.chat_format``)."""

    def summary(self) -> dict:
        """Best detection cell (by combined rate, then TPR) and headline numbers per protocol."""
        s: dict = {"model": self.model, "chat_format": self.chat_format,
                   "runtime_s": round(self.runtime_s, 1)}
        d = self.metrics.get("detection")
        if d:
            best = max(d["cells"], key=lambda c: ((c["combined"]["rate"] or 0), c["tpr"]["rate"] or 0,
                                                  c["yes_shift"]["mean"] or 0))
            s["detection_best"] = {k: best[k] for k in ("layer", "strength", "tpr", "combined",
                                                        "identification", "yes_shift")}
            s["fpr"] = d["control"]["fpr"]
        return s

    def summary_rows(self) -> list[dict]:
        """``summary()`` as ``[{"metric", "value"}]``: the best detection cell, its rates, the
        false-positive rate."""
        s = self.summary()
        rows = [{"metric": "model", "value": s["model"]},
                {"metric": "runtime (s)", "value": s["runtime_s"]}]
        b = s.get("detection_best")
        if b:
            rows.append({"metric": "best detection cell (layer, strength)",
                         "value": f"{b['layer']}, {b['strength']}"})
            rows += [{"metric": f"detection {k}", "value": b[k]}
                     for k in ("tpr", "combined", "identification", "yes_shift")]
            rows.append({"metric": "false-positive rate (controls)", "value": s["fpr"]})
        return rows

    def report(self, path=None) -> Path:
        """Write the HTML report (default: ``out_dir/report.html``) and return its path."""
        from .report import build_report

        path = Path(path) if path else Path(self.out_dir or ".") / "report.html"
        rep = build_report(self)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, rep.html().encode())
        return path

    @classmethod
    def load(cls, out_dir) -> "Result":
        out_dir = Path(out_dir)
        r = json.loads((out_dir / "results.json").read_text())
        cfg = Config(**{k: tuple(v) if k in ("protocols", "layers", "strengths", "trial_prompts")
                        else v
                        for k, v in r["config"].items() if k in Config.__dataclass_fields__})
        tr = out_dir / "trials.json"
        return cls(config=cfg, metrics=r["metrics"], out_dir=out_dir, runtime_s=r["runtime_s"],
                   model=r["model"], grader=r.get("grader", {}), chat_format=r.get("chat_format", ""),
                   trials=json.loads(tr.read_text()) if tr.exists() else {})


def second_opinion(lm, trials: dict, cfg, limit: int = 400) -> dict:
    """The loaded model as a logit judge on this run's own transcripts (up to ``limit`` per
    grader): rule-vs-judge agreement for detection claims and prefill apologies."""
    judge = LogitJudge(lm, batch_size=min(cfg.batch_size, 16))
    out = {"judge": judge.name}
    det = [t for t in trials.get("detection", []) if t.get("response")][:limit]
    if det:
        lab = judge.yes_no([G.claims_question({"response": t["response"]}) for t in det])
        out["claims"] = G.compare([t["claims"] for t in det], lab, cfg.seed)
    pre = [t for t in trials.get("prefill", []) if t.get("response")][:limit]
    if pre:
        lab = judge.yes_no([G.apology_question({"word": t["word"], "text": t["response"]})
                            for t in pre])
        out["apology"] = G.compare([t["apology"] for t in pre], lab, cfg.seed)
    return out


def _partial(rd, cfg, metrics, trials, lm, t0) -> None:
    """Save what is done so far (a killed run keeps its finished protocols)."""
    if rd:
        rd.save_results({"config": cfg, "metrics": metrics, "runtime_s": time.time() - t0,
                         "model": lm.name, "partial": True})
        write_json(rd.path / "trials.json", trials)


@protocol("introspection", demo_step="introspection")
def run(lm, config: Optional[Config] = None, out_dir=None, grader=None) -> Result:
    """Run ``config.protocols`` on ``lm``; with ``out_dir`` write run_config.json, results.json,
    trials.json, bias.safetensors (mechanisms) and report.html there.

    Resume: each finished generation / readout / training stage is saved under
    ``out_dir/stages/<settings hash>/``; running the same settings into the same folder again
    (after a kill) loads those and computes only what is missing."""
    cfg = config or Config()
    words, base = cfg.words()
    sentences = cfg.sentence_list()
    grader = make_grader(grader or cfg.grader, lm=lm, model=cfg.judge_model)
    layers = resolve_layers(lm, cfg.layers)
    mech_L, ref_L, bias_L = (resolve_layers(lm, [x])[0] for x in
                             (cfg.mech_layer, cfg.refusal_layer, cfg.bias_layer))
    need = set(layers) | ({mech_L} if "mechanisms" in cfg.protocols else set())
    if "control" in cfg.protocols:
        need |= set(range(lm.n_layers))
    rd = RunDir(out_dir, cfg, lm, experiment="introspection") if out_dir else None
    st = Stages(rd.path / "stages" / settings_key(cfg, lm) if rd else None)
    t0 = time.time()
    log.info("concept vectors for %d words at %d layers (%d baseline words)", len(words),
             len(need), len(base))
    vecs = concept_sets(lm, words, sorted(need), base, cfg.batch_size)
    metrics: dict = {"layers": layers, "concept_norms": {
        L: float(vecs[L].norms().mean()) for L in layers}}
    trials: dict = {}
    P = cfg.protocols
    if "detection" in P:
        d = run_detection(lm, cfg, vecs, words, grader, layers=layers, stages=st)
        trials["detection"] = d.pop("trials")
        metrics["detection"] = d
        _partial(rd, cfg, metrics, trials, lm, t0)
    if "thoughts" in P:
        d = run_thoughts(lm, cfg, vecs, words, sentences, layers, stages=st)
        trials["thoughts"] = d.pop("trials")
        metrics["thoughts"] = d
        _partial(rd, cfg, metrics, trials, lm, t0)
    if "prefill" in P:
        d = run_prefill(lm, cfg, vecs, words, sentences, layers, stages=st)
        trials["prefill"] = d.pop("trials")
        metrics["prefill"] = d
        _partial(rd, cfg, metrics, trials, lm, t0)
    if "control" in P:
        d = run_control(lm, cfg, vecs, words, sentences, stages=st)
        trials["control"] = d.pop("trials")
        metrics["control"] = d
        _partial(rd, cfg, metrics, trials, lm, t0)
    if "mechanisms" in P:
        d = run_mechanisms(lm, cfg, vecs, words, grader, mech_L, ref_L, bias_L, stages=st)
        trials["mechanisms"] = d.pop("trials")
        b = d.pop("bias_vector")
        metrics["mechanisms"] = d
        if rd:
            save_file({"bias": b.contiguous()}, str(rd.path / "bias.safetensors"),
                      metadata={"site": f"mlp_out.{bias_L}", "model": lm.name})
    metrics["grader_agreement"] = agreement(grader) if isinstance(grader, RuleGrader) else None
    metrics["grader_validation"] = {n: G.validate(n, "test")["rule"] for n in (
        "introspection_detection", "introspection_identification", "introspection_apology")}
    if cfg.second_opinion:
        metrics["second_opinion"] = second_opinion(lm, trials, cfg)
    res = Result(config=cfg, metrics=metrics, trials=trials, out_dir=rd.path if rd else None,
                 runtime_s=time.time() - t0, model=lm.name,
                 grader=grader.describe(), chat_format=lm.chat_format)
    if rd:
        rd.save_results({"config": cfg, "metrics": metrics, "runtime_s": res.runtime_s,
                         "model": lm.name, "grader": res.grader, "summary": res.summary(),
                         "resumed_stages": st.loaded})
        write_json(rd.path / "trials.json", trials)
        res.report()
    return res
