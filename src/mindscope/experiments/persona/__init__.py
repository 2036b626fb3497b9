"""Persona space and the Assistant axis (issue 10).

Steps of ``run(lm, cfg, out_dir)``:

* roles     - responses to extraction questions under each role's system prompts and under
              default-assistant prompts (one batched generation), optionally filtered by the
              rule identity judge; role vectors = mean ``resid_post.*`` over response tokens.
* space     - PCA of role vectors per layer; Assistant axis = mean(default) - mean(roles);
              |cos(PC1, axis)| per layer; role loadings on PC1/PC2 -> ``assistant_axis.safetensors``.
* steering  - identity questions answered with h + c·n·u at the analysis layer, both signs;
              rule judge: identifies as the assistant vs another entity.
* drift     - scripted multi-turn conversations (coding / meta-reflection / vulnerable user),
              per-turn projection on the axis, uncapped and capped.
* jailbreak - mild persona-jailbreak prompts with and without capping (rule judge).
* capability- HLE-format sample, default vs capped (``evals.compare_variants``).

Capping: a floor at tau_L = 25th percentile of default-assistant token projections, at every
layer of ``cap_layers`` (upper-middle layers, 18-24 of 30).

Drift monitor (``monitor.py``): a turn is flagged when its projection falls below a threshold
calibrated on the default assistant's answers to held-out calibration questions (the
``monitor_quantile``, 5%). ``axis_from`` reuses a saved axis, floors and threshold instead of
rebuilding them from this model (a monitor calibrated once on a reference model).

>>> # import mindscope as ms; from mindscope.experiments import persona
>>> # res = persona.run(ms.load(), persona.Config.quick(), "runs/persona"); res.report()
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ...runs import RunDir, save_html, save_png, weights_note

from .._common import at_least_one, choose, one_of
from .._protocol import protocol, ResultDisplay
from .axis import (axis_vectorset, balanced_axis, check_balanced, generate_responses, keep_rows,
                   persona_space, response_acts, role_scores, role_vectors, token_thresholds)
from .data import load_drift, load_drift_file, load_roles, role_prompts
from .effects import capability, drift, jailbreaks, steer_axis
from .monitor import (AXIS_FILE, OWN_AXIS_FILE, axis_meta, calibrate, flag_rates, load_axis,
                      reference_settings)
from .report import build_report, plot_drift, plot_space, plot_steering

log = logging.getLogger(__name__)
PARTS = ("steering", "drift", "jailbreak", "capability")


@dataclass
class Config:
    """Settings of a persona run. Defaults: the documented default-model run (small, CPU)."""

    n_roles: int = 50
    """Roles from the shipped list (52)."""
    prompts_per_role: int = 2
    """System prompts per role (the shipped templates, up to 3)."""
    n_questions: int = 2
    """Extraction questions per system prompt (shipped: 6), the SAME questions for every role
    and for the default assistant (unequal sets would put question content into the axis)."""
    n_default_prompts: int = 4
    """Default-assistant system prompts (shipped: 4)."""
    max_new_tokens: int = 32
    """Tokens per role / default response."""
    temperature: float = 0.7
    """Sampling temperature of role and default responses (paper: 0.7)."""
    role_filter: str = "rule"
    """Keep role responses whose 0-3 role score is >= ``min_role_score`` (paper: 3): ``rule``
    scores with the offline rule (``role_score``), ``judge`` with ``judge``; ``none`` keeps all."""
    min_role_score: int = 3
    """Lowest role score kept (0-3)."""
    judge: Optional[str] = None
    """Judge for ``role_filter='judge'`` and the second opinion on the transcripts: ``lm`` (the
    loaded model as a logit judge) or an OpenAI-compatible base URL; None = ``lm`` second
    opinion only."""
    second_opinion: bool = True
    """Grade the identity / jailbreak / role transcripts with the judge too and report
    rule-vs-judge agreement."""
    layer: Optional[int] = None
    """Analysis and steering layer (resid_post.L); None = 2/3 depth (20 of 30)."""
    cap_layers: Optional[tuple[int, ...]] = None
    """Layers capped; None = 0.6..0.8 depth (18-24 of 30)."""
    cap_percentile: float = 25.0
    """Floor = this percentile of default-assistant token projections per layer."""
    parts: tuple = PARTS
    """Which uses of the axis to run (any of PARTS)."""
    drift_file: Optional[str] = None
    """A JSON file shaped like the shipped ``drift.json`` whose ``conversations`` sets are run by
    the drift part beside the shipped ones (the positive control's triggered / plain turns)."""
    axis_from: Optional[str] = None
    """A saved Assistant axis (a persona run folder or its ``assistant_axis.safetensors``) used
    instead of rebuilding the axis from this model's answers, with its capping floors and drift
    monitor threshold: a monitor calibrated once on a reference model. None = build the axis
    from this model (the paper's recipe). The model's own axis is still built and saved
    (``own_assistant_axis.safetensors``) and compared."""
    axis_from_other_model: bool = False
    """Accept an ``axis_from`` saved on a model of another name (a changed copy of the reference
    model, e.g. a fine-tune); hidden size and layer count must still match."""
    monitor_quantile: float = 0.05
    """Drift monitor threshold = this quantile of the default assistant's per-answer projections
    on the calibration questions (about this fraction of ordinary answers is flagged)."""
    monitor_questions: Optional[int] = None
    """Calibration questions answered for the monitor threshold (None = all 40 shipped)."""
    steer_strengths: tuple = (-0.3, -0.15, 0.0, 0.15, 0.3)
    """Steering strengths as fractions of the mean residual norm (+ = toward the Assistant)."""
    steer_tokens: int = 32
    """Tokens per steered answer."""
    drift_tokens: int = 32
    """Tokens per assistant turn in drift conversations."""
    jailbreak_tokens: int = 40
    """Tokens per jailbreak answer."""
    eval_items: int = 8
    """Items of the bundled HLE-format sample for the capability check."""
    eval_tokens: int = 64
    """Tokens per capability answer."""
    batch_size: int = 32
    """Rows per generation / forward batch."""
    seed: int = 0
    """Sampling seed."""

    def __post_init__(self):
        self.parts = choose(self.parts, PARTS, "part")
        if self.n_roles < 3:
            raise ValueError("n_roles must be >= 3 (PCA of role vectors)")
        at_least_one(self, ("prompts_per_role", "n_questions", "n_default_prompts", "max_new_tokens", "steer_tokens", "drift_tokens",
                            "jailbreak_tokens", "eval_items", "eval_tokens", "batch_size"))
        one_of("role_filter", self.role_filter, ("rule", "judge", "none"))
        if not 0 <= self.min_role_score <= 3:
            raise ValueError(f"min_role_score must be 0..3; got {self.min_role_score}")
        if not 0 <= self.cap_percentile <= 100:
            raise ValueError(f"cap_percentile must be in [0, 100]; got {self.cap_percentile}")
        if self.cap_layers is not None:
            self.cap_layers = tuple(int(x) for x in self.cap_layers)
        self.steer_strengths = tuple(float(x) for x in self.steer_strengths)
        if not 0 < self.monitor_quantile < 1:
            raise ValueError(f"monitor_quantile must be in (0, 1); got {self.monitor_quantile}")
        if self.monitor_questions is not None and self.monitor_questions < 2:
            raise ValueError(f"monitor_questions must be >= 2 (or None); got {self.monitor_questions}")
        if self.axis_from is not None:
            from .monitor import check_axis_path
            check_axis_path(self.axis_from)  # a missing axis fails here, before any generation
        if self.drift_file is not None:
            from .data import load_drift_file
            load_drift_file(self.drift_file)  # a bad file fails here, before any generation

    @classmethod
    def quick(cls, **over) -> "Config":
        """A small run: 12 roles x 1 prompt x 2 questions, short answers, 4 eval items."""
        base = dict(n_roles=12, prompts_per_role=1, n_default_prompts=2,
                    max_new_tokens=16, steer_strengths=(-0.3, 0.0, 0.3), steer_tokens=16,
                    drift_tokens=16, jailbreak_tokens=16, eval_items=4, eval_tokens=24)
        return cls(**{**base, **over})


@dataclass(repr=False)
class Result(ResultDisplay):
    """What a run measured. ``results`` is what ``results.json`` holds."""

    config: Config
    out_dir: Path
    axis: object = None
    """The Assistant axis the run used, at every layer (``ms.VectorSet``, rows named resid_post.L,
    raw units): built from this model, or the fixed one from ``axis_from``."""
    role_vectors: object = None
    """Role vectors at the analysis layer (``ms.VectorSet``)."""
    results: dict = field(default_factory=dict)
    plots: dict = field(default_factory=dict)

    def summary_rows(self) -> list[dict]:
        r, rows = self.results, []
        sp = r.get("space")
        if sp:
            L = sp["layer_index"]
            rows.append({"metric": f"|cos(PC1, axis)| at layer {L}", "value": sp["cos_pc1_axis"][L]})
            rows.append({"metric": "max |cos(PC1, axis)| over layers", "value": max(sp["cos_pc1_axis"])})
            rows.append({"metric": f"PC1 explained variance at layer {L}",
                         "value": sp["explained_variance_ratio"][L][0]})
        st = r.get("steering")
        if st:
            for c, v in sorted(st["by_strength"].items(), key=lambda x: float(x[0])):
                rows.append({"metric": f"steer {c}: identifies as assistant", "value": v["assistant"]})
                rows.append({"metric": f"steer {c}: identifies as another entity", "value": v["other"]})
        dr = r.get("drift")
        if dr:
            for m, sets in dr["mean_by_turn"].items():
                for n, ys in sets.items():
                    rows.append({"metric": f"drift {n} ({m}): projection turn 1 -> last",
                                 "value": f"{ys[0]:.2f} -> {ys[-1]:.2f}"})
            mon = dr.get("monitor")
            if mon:
                for n, w in mon["flagged"].items():
                    rows.append({"metric": f"drift monitor flags {n} turns (threshold "
                                           f"{mon['threshold']:.2f}, {mon['quantile']:g} quantile)",
                                 "value": w})
        jb = r.get("jailbreaks")
        if jb:
            rows.append({"metric": "jailbreak harmful rate, default", "value": jb["default"]["harmful"]})
            rows.append({"metric": "jailbreak harmful rate, capped", "value": jb["capped"]["harmful"]})
            rows.append({"metric": "relative reduction by capping", "value": jb["reduction"]})
        for k, v in r.get("capability", {}).items():
            rows.append({"metric": f"capability accuracy % ({k}, n={v['n']})", "value": v["accuracy"]})
        return rows

    def report(self) -> Path:
        """Write ``report.html`` and return its path."""
        return save_html(self.out_dir / "report.html", build_report(self))


def persona_jobs(roles, data: dict, cfg: Config) -> list[tuple]:
    """(key, system prompt, question) for every role prompt and default prompt, all answering
    the same ``cfg.n_questions`` questions."""
    qs = data["questions"][:cfg.n_questions]
    jobs = [(r["name"], sp, q) for r in roles
            for sp in role_prompts(r, data["templates"][:cfg.prompts_per_role]) for q in qs]
    jobs += [("default", sp, q) for sp in data["default_system_prompts"][:cfg.n_default_prompts]
             for q in qs]
    return jobs


def make_persona_judge(cfg: Config, lm):
    """The judge named by ``cfg.judge`` (None/'lm' -> the loaded model as a logit judge)."""
    if cfg.role_filter != "judge" and not cfg.second_opinion:
        return None
    from ...judges import LogitJudge

    if cfg.judge in (None, "lm"):
        return LogitJudge(lm, batch_size=min(cfg.batch_size, 16))
    from ...evals import make_judge
    return make_judge(cfg.judge)


def grader_agreement(Rs: dict, resp, scores, descr: dict, judge, seed: int) -> dict:
    """Rule graders on their labelled test sets, and (with a judge) rule-vs-judge agreement on
    this run's own transcripts (role scores, identity under steering, jailbreak harm)."""
    from .. import graders as G

    out = {n: G.validate(n, "test")["rule"] for n in ("persona_identity", "persona_role",
                                                       "persona_jailbreak")}
    out = {"labelled_test": out}
    if judge is None or not hasattr(judge, "yes_no"):
        return out
    idx = [i for i, k in enumerate(resp.keys) if k != "default"]
    items = [{"role": resp.keys[i], "description": descr[resp.keys[i]],
              "question": resp.questions[i], "text": resp.texts[i]} for i in idx]
    run = {"role_score": G.compare([scores[i] for i in idx], judge.digit([G.role_question(it) for it in items]), seed)}
    from .data import identity, jailbreak_harmful
    st = Rs.get("steering")
    if st:
        texts = [e["response"] for e in st.get("examples", [])]
        if texts:
            run["identity_steering"] = G.compare(
                [identity(t) == "assistant" for t in texts],
                judge.yes_no([G.identity_question({"text": t}) for t in texts]), seed)
    jb = Rs.get("jailbreaks")
    if jb:
        texts = [e["response"] for m in ("default", "capped") for e in jb[m]["examples"]]
        run["jailbreak"] = G.compare([jailbreak_harmful(t) for t in texts],
                                     judge.yes_no([G.jailbreak_question({"text": t}) for t in texts]), seed)
    out["run_rule_vs_judge"] = {"judge": judge.name, **run}
    return out


def default_layers(lm) -> tuple[int, tuple]:
    L = lm.n_layers
    lo, hi = round(0.6 * L), round(0.8 * L)
    return round(2 * L / 3), tuple(range(lo, max(hi, lo + 1)))


@protocol("persona")
def run(lm, cfg: Optional[Config] = None, out_dir="runs/persona") -> Result:
    """Build role vectors and the axis, run ``cfg.parts``, write the run folder and return."""
    cfg = cfg or Config()
    out = Path(out_dir)
    t0 = time.perf_counter()
    layer, caps = default_layers(lm)
    layer = cfg.layer if cfg.layer is not None else layer
    cap_layers = cfg.cap_layers or caps
    ref = None
    if cfg.axis_from:  # a fixed axis: validated against the model before any generation
        ref_axis, ref = load_axis(cfg.axis_from, lm, cfg.axis_from_other_model)
        layer, cap_layers, ref_taus, monitor = reference_settings(ref, cfg.layer, cfg.cap_layers,
                                                                  "drift" in cfg.parts)
    bad = [x for x in (layer, *cap_layers) if not 0 <= x < lm.n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range for {lm.name} ({lm.n_layers} layers)")
    data, dd = load_roles(), load_drift()
    if cfg.drift_file:
        dd = {**dd, "conversations": {**dd["conversations"], **load_drift_file(cfg.drift_file)}}
    roles = data["roles"][:cfg.n_roles]
    run_dir = RunDir(out, cfg, lm, experiment="persona")
    jobs = persona_jobs(roles, data, cfg)
    check_balanced([k for k, _, _ in jobs], [q for _, _, q in jobs])
    resp = generate_responses(lm, jobs, cfg.max_new_tokens, cfg.temperature, cfg.seed,
                              cfg.batch_size)
    judge = make_persona_judge(cfg, lm)
    descr = {r["name"]: r["description"] for r in roles}
    scores = role_scores(resp, descr, judge if cfg.role_filter == "judge" else None)
    rows = keep_rows(resp, cfg.role_filter, scores, cfg.min_role_score)
    sites = [f"resid_post.{i}" for i in range(lm.n_layers)]
    acts = response_acts(lm, resp, rows, sites, min(cfg.batch_size, 16))  # (n, L, d)
    keys = [resp.keys[i] for i in rows]
    is_def = torch.tensor([k == "default" for k in keys])
    names, R = role_vectors(acts[~is_def], [k for k in keys if k != "default"])  # (n_r, L, d)
    D = acts[is_def]  # (n_d, L, d)
    if len(names) < 3 or len(D) == 0:
        raise ValueError(f"too few responses left ({len(names)} roles, {len(D)} default); "
                         "raise max_new_tokens or use role_filter='none'")
    own = balanced_axis(acts, keys, [resp.questions[i] for i in rows])  # (L, d)
    axis = own if ref is None else ref_axis  # (L, d)
    res = Result(cfg, out)
    built = {"n_roles": len(names), "n_default": len(D), "role_filter": cfg.role_filter}
    if ref is not None:
        axis_vectorset(lm, own, sites, built).save(out / OWN_AXIS_FILE)
    from ...core import VectorSet
    res.role_vectors = VectorSet(R[:, layer], names=names, site=sites[layer], model=lm.name,
                                 method="response_mean")
    res.role_vectors.save(out / "role_vectors.safetensors")
    Rs = res.results
    Rs.update({"model": lm.name, "chat_format": lm.chat_format, "weights": weights_note(lm),
               "seed": cfg.seed,
               "layer": layer, "cap_layers": list(cap_layers),
               "n_roles": len(names), "n_roles_asked": len(roles),
               "n_role_generated": sum(k != "default" for k in resp.keys),
               "n_role_responses": int((~is_def).sum()), "n_default_responses": len(D),
               "questions": list(dict.fromkeys(q for _, _, q in jobs)),
               "role_filter": cfg.role_filter, "min_role_score": cfg.min_role_score,
               "role_score_hist": {str(v): sum(1 for x in scores if x == v) for v in range(4)},
               "judge": "rule identity judge (keyword patterns)",
               "axis": "question-balanced: mean over questions of mean(default) - mean(roles)"})
    Rs["space"] = persona_space(R, own, names, layer, D.mean(0))  # this model's own axis
    res.plots["space"] = save_png(out / "persona_space.png", plot_space(Rs["space"]))
    system = data["default_system_prompts"][0]
    if ref is None:
        def_rows = [i for i in rows if resp.keys[i] == "default"]
        taus = token_thresholds(lm, resp, def_rows, axis, cap_layers, cfg.cap_percentile,
                                min(cfg.batch_size, 16))
        monitor = (calibrate(lm, system, axis, layer, cfg.monitor_quantile, cfg.monitor_questions,
                             cfg.drift_tokens, cfg.batch_size, cfg.seed)
                   if "drift" in cfg.parts else None)
        Rs["axis_source"] = {"built_from": "this model's default and role answers"}
    else:
        taus = ref_taus
        Rs["axis"] = f"fixed: {ref['path']} (built on {ref['model']}); the own axis is in {OWN_AXIS_FILE}"
        Rs["axis_source"] = {"axis_from": ref["path"], "model": ref["model"],
                             "cos_own_axis": [float(torch.nn.functional.cosine_similarity(
                                 own[i], axis[i], dim=0)) for i in range(lm.n_layers)]}
    Rs["cap_thresholds"] = {str(k): v for k, v in taus.items()}
    meta = ({**built, **axis_meta(lm, layer, taus, cfg.cap_percentile, monitor)} if ref is None
            else {k: v for k, v in ref.items() if k != "path"} | {"copied_from": ref["path"]})
    res.axis = axis_vectorset(lm, axis, sites, meta)
    res.axis.model = meta["model"]  # the model the axis was built on
    res.axis.save(out / AXIS_FILE)
    if "steering" in cfg.parts:
        Rs["steering"] = steer_axis(lm, axis[layer], sites[layer], cfg.steer_strengths,
                                    [None, role_prompts(roles[0], data["templates"][:1])[0]],
                                    cfg.steer_tokens, cfg.batch_size, cfg.seed)
        res.plots["steering"] = save_png(out / "steering.png", plot_steering(Rs["steering"]))
    if "drift" in cfg.parts:
        Rs["drift"] = drift(lm, dd["conversations"], system, axis, layer, taus, cfg.drift_tokens,
                            cfg.batch_size, seed=cfg.seed)
        Rs["drift"]["monitor"] = {**monitor, "flagged": flag_rates(
            Rs["drift"]["per_conversation"]["default"], monitor["threshold"])}
        res.plots["drift"] = save_png(out / "drift.png", plot_drift(Rs["drift"]))
    if "jailbreak" in cfg.parts:
        Rs["jailbreaks"] = jailbreaks(lm, dd["jailbreaks"], system, axis, taus,
                                      cfg.jailbreak_tokens, cfg.batch_size, cfg.seed)
    if "capability" in cfg.parts:
        Rs["capability"] = capability(lm, axis, taus, cfg.eval_items, cfg.eval_tokens,
                                      out / "capability", min(cfg.batch_size, 8))
    Rs["responses"] = [{"key": resp.keys[i], "system": resp.systems[i], "question": resp.questions[i],
                        "response": resp.texts[i], "kept": i in set(rows), "role_score": scores[i]}
                       for i in range(len(resp.texts))]
    Rs["grader_agreement"] = grader_agreement(Rs, resp, scores, descr,
                                              judge if cfg.second_opinion else None, cfg.seed)
    Rs["seconds"] = time.perf_counter() - t0
    run_dir.save_results(Rs)
    res.report()
    log.info("persona run done in %.0fs -> %s", Rs["seconds"], out)
    return res


from . import control  # noqa: E402,F401  (registers the positive control)
