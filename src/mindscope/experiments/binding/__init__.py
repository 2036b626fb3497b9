"""Multi-slot entity binding: does one token's residual stream carry the CURRENT entity and the
immediately PRIOR entity in separate, largely orthogonal linear "slots"? Which slot do entity
induction, adjacent-entity conflict detection and explicit retrieval use? Can the model hold two
bindings on one token ("Alice prepares and Bob consumes the food.")?

>>> # from mindscope.experiments import binding
>>> # res = binding.run(None, binding.Config(n_stories=120), "runs/binding")  # ms.load() by default
>>> # runs/binding: report.html, results.json, run_config.json, plots, probes/

Protocol (see docs/experiments/binding.md):
1. Synthetic stories, one segment per entity; every token labelled with current / prior entity
   and their adjectives (char spans -> tokens via ``Batch.meta[i].offsets``).
2. One capture of all swept layers; per layer a multi-slot probe (multinomial, split by story)
   for the four slots, each next to a Hewitt-Liang control task.
3. Slot geometry: principal angles between the current- and prior-entity probe subspaces vs
   random subspaces of the same rank.
4. Causal: erase each slot from the story's name tokens (LEACE concept erasure fitted on the
   training stories, checked on held-out ones; or, ``ablate_method='probe'``, project out the
   probe's subspace), at the layers where the held-out prior-entity probe reads best
   (``ablate_positions`` / ``ablate_layers``), against the same edit of equal-rank random
   subspaces (their mean is the baseline); score induction, conflict and retrieval by
   answer-token log-probs, paired slot - random.
5. Behaviour: double binding on one token vs single-binding controls.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from ...probes import fit_multislot, orthonormal_basis, random_basis
from .._protocol import protocol, ResultDisplay
from .data import (BindingData, binding_items, conflict_items, generate_stories,
                   induction_items, retrieval_items, token_labels)
from .geometry import bootstrap_geometry, shuffled_overlap
from .tasks import first_token, paired_contrasts, score_items, task_metrics

log = logging.getLogger(__name__)
SLOTS = ("current", "prior", "current_attr", "prior_attr")
CONDITIONS = ("none", "current", "prior", "random")


@dataclass
class Config:
    model: str = "smollm2-135m-instruct"
    """Model spec for ``ms.load`` (ignored when ``run`` is given an ``lm``)."""
    n_stories: int = 120
    """Stories for probe training/testing (split by story)."""
    min_entities: int = 3
    """Fewest entities per story."""
    max_entities: int = 5
    """Most entities per story."""
    n_names: int = 8
    """Size of the name pool = classes of the entity probes (chance ≈ 1/n_names)."""
    n_adjectives: int = 8
    """Size of the adjective pool = classes of the attribute probes."""
    layers: str = "auto"
    """Layers to probe: 'auto' (every tenth of depth: 0, 0.1, ..., 0.9 of the blocks; 0,3,..,27
    on 30 layers), 'all', 'a:b:step', a comma list of indices ('3,9,15') or of depth fractions
    ('0.2,0.5,0.8'); resid_post sites."""
    probe_kind: str = "ridge"
    """Probe type: ridge (closed form, fast on CPU) | multinomial | logistic."""
    C: float = 0.01
    """Inverse regularisation strength on standardised features (ridge alpha = 1 / C)."""
    control: Optional[str] = "task"
    """Control probe: 'task' (Hewitt-Liang word-type control), 'shuffle', or None."""
    test_size: float = 0.25
    """Fraction of stories held out for probe testing."""
    ablate_positions: str = "names"
    """Story tokens the causal tests ablate, and the tokens their slot probes are fitted on:
    'names' (the tokens of the entities' names, where the prior-entity probe reads: held-out
    accuracy ≈ 0.7 there vs ≈ 0.25 over all story tokens on SmolLM2, issue 24) or 'story'
    (every story token, with the all-token probes: the test before issue 24)."""
    ablate_layers: str = "probe"
    """Layers whose slot subspaces are ablated in the causal tests, each with its own layer's
    probes: 'probe' = the ``ablate_top`` share of the swept layers where the held-out
    prior-entity probe (at ``ablate_positions``) reads best; 'auto' = the swept layers between
    20% and 60% of depth (the rule before issue 24); or a list / depth fractions of swept
    layers."""
    ablate_top: float = 0.5
    """Share of the swept layers that ``ablate_layers='probe'`` ablates (at least one)."""
    ablate_method: str = "probe"
    """How a slot is removed in the causal tests: 'probe' (project the probe's row space out;
    baseline: random probe-shaped subspaces) or 'leace' (concept erasure, Belrose et al. 2023:
    the smallest affine edit after which no linear probe reads the entity; fitted on the
    training stories' name tokens, checked on held-out stories; baseline: the same erasure of
    variance-matched random subspaces of equal rank). 'probe' leaves most of the entity
    readable by a refitted probe; 'leace' removes it, but its random baseline edits more in the
    forward and overlaps a dominant concept (docs/experiments/binding.md, session 7), so it is
    not the default. 'leace' needs ``ablate_positions='names'``."""
    erase_shrinkage: str = "auto"
    """Covariance shrinkage of the LEACE whitening: 'auto' (Ledoit-Wolf), 'none' (the sample
    covariance, pseudo-inverted: with fewer training rows than dimensions it erases only inside
    their span, and held-out rows stay readable on a tiny model) or a number in [0, 1]."""
    erase_band: int = 16
    """Most eigenvalues in a band inside which a random eraser's subspace is rotated (variance
    matching; ``probes.Eraser.random_like``)."""
    erase_ratio: float = 0.0
    """If > 0, also cut those bands where their largest / smallest eigenvalue would exceed it:
    the random erasers' mean squared edit then matches within this factor, but on a spread
    spectrum the bands shrink and the random subspace comes close to the concept's (0 = bands
    of ``erase_band``; on SmolLM2 they match the edit within 0.99-1.2x, docs)."""
    slot_rank: Optional[int] = None
    """Dimensions of each slot subspace to ablate with ``ablate_method='probe'`` (None = full
    probe rank, n_names - 1)."""
    n_random: int = 5
    """Random subspaces (equal rank, probe-shaped) per ablation: the baseline of the paired
    slot-vs-random contrasts is their mean, so one unlucky draw cannot make or hide an effect."""
    n_items: int = 16
    """Prompts per causal task (conflict uses 2 per item) and per binding condition."""
    batch_size: int = 16
    """Prompts per forward pass."""
    seed: int = 0
    """Seed for stories, splits, controls and random subspaces."""
    n_null: int = 5
    """Permuted-label probe pairs per layer for the covariance-matched orthogonality null."""
    n_boot: int = 20
    """Story bootstrap resamples per layer for intervals on the slot geometry (0 = none)."""
    data_dir: Optional[str] = None
    """Folder with names.json / attributes.json / templates.json (None = bundled)."""
    progress: bool = True
    """Show progress bars."""

    @classmethod
    def quick(cls, **over) -> "Config":
        """Tiny settings for a smoke run (minutes on CPU)."""
        base = dict(n_stories=24, layers="0:30:6", n_items=4, batch_size=8)
        return cls(**{**base, **over})

    def __post_init__(self):
        if self.n_stories < 8:
            raise ValueError(f"n_stories={self.n_stories}: need at least 8 stories to split by story")
        if not 3 <= self.min_entities <= self.max_entities:
            raise ValueError(f"need 3 <= min_entities <= max_entities; got {self.min_entities}, "
                             f"{self.max_entities} (induction and conflict need 3 entities)")
        if self.n_names < self.max_entities or self.n_adjectives < self.max_entities + 1:
            raise ValueError(f"n_names ({self.n_names}) must be >= max_entities and n_adjectives "
                             f"({self.n_adjectives}) > max_entities ({self.max_entities}): every "
                             "entity of a story gets its own name and adjective")
        if self.probe_kind not in ("multinomial", "logistic", "ridge"):
            raise ValueError(f"probe_kind {self.probe_kind!r}: use multinomial, logistic or ridge")
        if self.C <= 0:
            raise ValueError(f"C must be > 0; got {self.C}")
        if self.control not in (None, "task", "shuffle"):
            raise ValueError(f"control {self.control!r}: use 'task', 'shuffle' or None")
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size must be in (0, 1); got {self.test_size}")
        if self.n_null < 2 or self.n_boot < 0:
            raise ValueError(f"need n_null >= 2 and n_boot >= 0; got {self.n_null}, {self.n_boot}")
        if self.n_items < 2:
            raise ValueError(f"n_items must be >= 2; got {self.n_items}")
        if self.ablate_positions not in ("names", "story"):
            raise ValueError(f"ablate_positions {self.ablate_positions!r}: use 'names' or 'story'")
        if self.ablate_method not in ("leace", "probe"):
            raise ValueError(f"ablate_method {self.ablate_method!r}: use 'leace' or 'probe'")
        if self.ablate_method == "leace" and self.ablate_positions != "names":
            raise ValueError("ablate_method='leace' erases at the name tokens: set "
                             "ablate_positions='names' or use ablate_method='probe'")
        shrinkage(self.erase_shrinkage)  # validates
        if self.erase_band < 1 or not (self.erase_ratio == 0 or self.erase_ratio >= 1):
            raise ValueError(f"need erase_band >= 1 and erase_ratio 0 or >= 1; got "
                             f"{self.erase_band}, {self.erase_ratio}")
        if not 0 < self.ablate_top <= 1 or self.n_random < 1:
            raise ValueError(f"need 0 < ablate_top <= 1 and n_random >= 1; got {self.ablate_top}, "
                             f"{self.n_random}")


def shrinkage(spec):
    """``Config.erase_shrinkage`` -> ``probes.fit_leace``'s ``shrinkage`` (None, 'auto', float)."""
    if spec in ("auto", None):
        return spec
    if str(spec).lower() == "none":
        return None
    try:
        v = float(spec)
    except ValueError:
        raise ValueError(f"erase_shrinkage {spec!r}: use 'auto', 'none' or a number in [0, 1]") \
            from None
    if not 0 <= v <= 1:
        raise ValueError(f"erase_shrinkage {spec!r}: a number must be in [0, 1]")
    return v


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'auto' | 'all' | 'a:b[:step]' | '1,5,9' | '0.2,0.5' (depth fractions) -> sorted layer
    indices (validated). 'auto' = every tenth of depth, so the default fits any model.

    >>> parse_layers("auto", 30), parse_layers("0.5,0.8", 30)
    ([0, 3, 6, 9, 12, 15, 18, 21, 24, 27], [15, 24])
    """
    spec = spec.strip()
    if spec == "auto":
        out = sorted({min(n_layers - 1, int(round(i * n_layers / 10))) for i in range(10)})
    elif spec == "all":
        out = list(range(n_layers))
    elif "." in spec and ":" not in spec:
        try:
            fr = [float(x) for x in spec.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"layers {spec!r}: depth fractions look like '0.2,0.5'") from None
        if any(not 0 <= f < 1 for f in fr):
            raise ValueError(f"layers {spec!r}: depth fractions must be in [0, 1)")
        out = sorted({min(n_layers - 1, int(round(f * n_layers))) for f in fr})
    elif ":" in spec:
        parts = [int(p) if p else None for p in spec.split(":")]
        if len(parts) > 3:
            raise ValueError(f"layers {spec!r}: use 'a:b' or 'a:b:step'")
        out = list(range(n_layers))[slice(*parts)]
    else:
        try:
            out = sorted({int(x) for x in spec.split(",") if x.strip()})
        except ValueError:
            raise ValueError(f"layers {spec!r}: use 'all', 'a:b:step' or '3,9,15'") from None
    bad = [x for x in out if not 0 <= x < n_layers]
    if bad or not out:
        raise ValueError(f"layers {spec!r} gives {bad or 'nothing'}; the model has layers "
                         f"0..{n_layers - 1}")
    return out


def pick_names(lm, names: list[str], k: int) -> list[str]:
    """The first ``k`` names whose first answer tokens (' ' + name) are all distinct."""
    out, seen = [], set()
    for n in names:
        t = first_token(lm, " " + n)
        if t in seen:
            log.info("dropping name %r: its first token collides with another name", n)
            continue
        seen.add(t)
        out.append(n)
        if len(out) == k:
            return out
    raise ValueError(f"only {len(out)} names with distinct first tokens for {lm.name}; need "
                     f"{k}. Lower n_names or add names to names.json")


@dataclass(repr=False)
class Result(ResultDisplay):
    config: dict
    model: str
    names: list
    adjectives: list
    layers: list
    probes: list
    """Per layer: {layer, slots: {slot: {train, test, chance, control, selectivity}}, joint...}."""
    geometry: list
    """Per layer: principal angles current vs prior (and attr vs attr) + random baseline."""
    ablate_layers: list
    causal: dict
    """condition -> task -> {acc, sem, chance, n, ...} ('random': from the per-item mean of the
    ``n_random`` draws' log-probs)."""
    contrasts: dict
    """'prior_minus_random' / 'current_minus_random' -> task -> paired mean difference of the
    right-answer score (``tasks.unit_scores``) with its 95% interval, same prompts."""
    binding: dict
    """double / single binding accuracy."""
    n_tokens: int
    n_rows: int
    timings: dict
    data_hash: str
    example: str
    ablation_probes: list = field(default_factory=list)
    """Per swept layer, the current/prior probes the causal tests use (fitted at
    ``ablate_positions``): held-out accuracy with its Wilson 95% interval, chance, n."""
    erasure_check: list = field(default_factory=list)
    """With ``ablate_method='leace'``, per erased layer on the held-out stories' name tokens:
    the prior probe's accuracy clean / erased / under a random erasure, a probe refitted on the
    erased rows, chance, and the edit sizes (``erase.erasure_check``): the erasure is valid
    only where the erased accuracy is at chance."""
    random_spread: dict = field(default_factory=dict)
    """task -> the prior-minus-random mean contrast against each random draw separately (how
    much the baseline depends on the draw)."""
    multislot: dict = field(default_factory=dict, repr=False)
    """layer -> fitted ``MultiSlotProbe`` (not serialised; exported to probes/ by report())."""
    lm_name: str = ""
    chat_format: str = "none (plain text stories and questions, no chat turns, for every model)"
    """Binding prompts are never chat-rendered: the same text for base and instruct models."""

    def to_json(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("multislot",)}
        return d

    def best_layer(self, slot: str = "prior") -> int:
        return max(self.probes, key=lambda r: r["slots"][slot]["test"])["layer"]

    out_dir: Optional[Path] = None
    """Where ``run`` wrote the run folder (None when ``run`` had no ``out_dir``)."""

    def summary_rows(self) -> list[dict]:
        """Headline numbers: the best prior-entity layer and the ablation accuracies."""
        Lp = self.best_layer("prior")
        best = next(r for r in self.probes if r["layer"] == Lp)["slots"]
        rows = [{"metric": "best prior-entity layer", "value": Lp}]
        rows += [{"metric": f"layer {Lp} probe accuracy, {s}", "value": best[s]["test"]}
                 for s in ("prior", "current")]
        rows.append({"metric": "chance (majority)", "value": best["prior"]["chance"]})
        for c, tasks in self.causal.items():
            rows += [{"metric": f"ablate {c}: {t} accuracy", "value": v["acc"]}
                     for t, v in tasks.items()]
        for c, tasks in self.contrasts.items():
            rows += [{"metric": f"{c.replace('_', ' ')} (paired, right-answer score): {t}",
                      "value": v} for t, v in tasks.items()]
        return rows

    def report(self, out=None) -> Path:
        """Write report.html, results.json, run_config.json, plots and probe vectors to ``out``
        (default: the ``out_dir`` given to ``run``)."""
        from .report import write_report
        if out is None and self.out_dir is None:
            raise ValueError("report() needs a folder: pass out=... or run(..., out_dir=...)")
        return write_report(self, out if out is not None else self.out_dir)


def _capture_labels(lm, stories, sites, name_ix, adj_ix, batch_size, progress):
    texts = [s.text for s in stories]
    b = lm.tokenize(texts)
    cap = lm.capture(b, sites=sites, positions="all", batch_size=batch_size, progress=progress)
    per_story = [token_labels(s, m.offsets, name_ix, adj_ix) for s, m in zip(stories, b.meta)]
    rows, pos = cap.row.numpy(), cap.pos.numpy()
    labels = {k: np.array([per_story[r][k][p] for r, p in zip(rows, pos)]) for k in
              ("segment", "mention") + SLOTS}
    return cap, labels


@protocol("binding")
def run(lm=None, cfg: Optional[Config] = None, out_dir=None) -> Result:
    """Run the whole protocol; ``lm`` defaults to ``ms.load(cfg.model)``; with ``out_dir`` the
    run folder (report, results, probes) is written there. ``run(cfg)`` (the pre-registry form,
    model named in the config) still works."""
    if isinstance(lm, Config):
        lm, cfg = cfg, lm  # run(cfg[, lm]): the pre-registry argument order
    cfg = cfg or Config()
    t0, c0 = time.time(), time.process_time()
    if lm is None:
        from ...core import load
        lm = load(cfg.model)
    torch.manual_seed(cfg.seed)
    full = BindingData.load(cfg.data_dir)
    names = pick_names(lm, full.names, cfg.n_names)
    if len(full.adjectives) < cfg.n_adjectives:
        raise ValueError(f"n_adjectives={cfg.n_adjectives} but the data has only "
                         f"{len(full.adjectives)} adjectives")
    d = full.subset(names, full.adjectives[:cfg.n_adjectives])
    name_ix = {n: i for i, n in enumerate(d.names)}
    adj_ix = {a: i for i, a in enumerate(d.adjectives)}
    layers = parse_layers(cfg.layers, lm.n_layers)
    sites = [f"resid_post.{L}" for L in layers]
    ent = (cfg.min_entities, cfg.max_entities)

    # 1-2. stories -> one capture of every swept layer -> multi-slot probes per layer
    stories = generate_stories(d, cfg.n_stories, ent, cfg.seed)
    cap, lab = _capture_labels(lm, stories, sites, name_ix, adj_ix, cfg.batch_size, cfg.progress)
    t_cap = time.time()
    keep = lab["prior"] >= 0  # tokens with both a current and a prior entity
    groups = cap.row.numpy()[keep]
    ids = cap.token_ids.numpy()[keep]
    slot_labels = {k: lab[k][keep] for k in SLOTS}
    at = lab["mention"][keep] == 1 if cfg.ablate_positions == "names" else np.ones(len(ids), bool)
    probes, geometry, fitted, scale, abl_fit, abl_probes = [], [], {}, {}, {}, []
    for L, s in zip(tqdm(layers, desc="multi-slot probes", disable=not cfg.progress), sites):
        X = cap[s][keep].float().numpy()  # (N, d)
        msp = fit_multislot(X, slot_labels, groups, kind=cfg.probe_kind, C=cfg.C, token_ids=ids,
                            control=cfg.control, test_size=cfg.test_size, seed=cfg.seed)
        fitted[L] = msp
        probes.append({"layer": L, "site": s, **msp.summary()})
        if cfg.ablate_positions == "names":  # the probes the causal test uses, where it ablates
            abl_fit[L] = fit_multislot(X[at], {k: slot_labels[k][at] for k in ("current", "prior")},
                                       groups[at], kind=cfg.probe_kind, C=cfg.C, token_ids=ids[at],
                                       control=cfg.control, test_size=cfg.test_size, seed=cfg.seed)
        else:
            abl_fit[L] = msp
        scale[L] = torch.from_numpy(X[at].std(0)).clamp(min=1e-8)  # (d,) per-dim std there
        abl_probes.append(_probe_row(L, cfg.ablate_positions, abl_fit[L]))
        geo = {"layer": L, "entity": msp.geometry("current", "prior"),
               "attribute": msp.geometry("current_attr", "prior_attr")}
        for key, (a, b) in (("entity", ("current", "prior")),
                            ("attribute", ("current_attr", "prior_attr"))):
            g = geo[key]
            g["isotropic_overlap"] = g.pop("random_overlap")  # kept for comparison only
            g["isotropic_overlap_sd"] = g.pop("random_overlap_sd")
            null = shuffled_overlap(X, slot_labels[a], slot_labels[b], cfg.probe_kind, cfg.C,
                                    cfg.n_null, cfg.seed + 101 + L)
            g["null_overlap"], g["null_overlap_sd"] = null["mean"], null["sd"]
            g["null"] = null["kind"]
            if cfg.n_boot:
                g["bootstrap"] = bootstrap_geometry(X, slot_labels[a], slot_labels[b], groups,
                                                    cfg.probe_kind, cfg.C, cfg.n_boot,
                                                    cfg.seed + 203 + L)
        geometry.append(geo)
    t_probe = time.time()
    abl = _ablate_layers(cfg.ablate_layers, layers, lm.n_layers, abl_probes, cfg.ablate_top)

    # 4. causal tests: ablate each slot subspace on the story tokens at the ablation layers
    items = (induction_items(d, cfg.n_items, ent, cfg.seed) + conflict_items(d, cfg.n_items, ent, cfg.seed)
             + retrieval_items(d, (cfg.n_items + 1) // 2, ent, cfg.seed))
    if cfg.ablate_method == "leace":
        bases, randoms, check = _erasers(lm, cfg, stories, name_ix, adj_ix, abl, abl_fit,
                                         groups[at])
    else:
        (bases, randoms), check = _probe_subspaces(lm, cfg, abl, abl_fit, scale), []
    names = d.names if cfg.ablate_positions == "names" else None
    causal, scores = {}, {}
    for c in CONDITIONS:
        todo = randoms if c == "random" else [None if c == "none" else bases[c]]
        scores[c] = [score_items(lm, items, b, cfg.batch_size, desc=f"tasks ({c})",
                                 progress=cfg.progress, names=names) for b in todo]
        mean = [np.mean(z, axis=0) for z in zip(*scores[c])]  # per item, over random draws
        causal[c] = task_metrics(items, mean)
        if c != "random":
            scores[c] = scores[c][0]
    contrasts = paired_contrasts(items, {c: scores[c] for c in CONDITIONS[1:]}, base="random")
    spread = {}
    for sc in scores["random"]:
        one = paired_contrasts(items, {"prior": scores["prior"], "random": sc})["prior_minus_random"]
        for t, v in one.items():
            spread.setdefault(t, []).append(v["mean"])
    t_causal = time.time()

    # 5. behaviour: double vs single binding
    bitems = binding_items(d, cfg.n_items, cfg.seed)
    bsc = score_items(lm, bitems, None, cfg.batch_size, desc="double binding", progress=cfg.progress)
    binding = task_metrics(bitems, bsc)
    first = np.mean([int(np.argmax(s)) == 0 for s in bsc])
    binding["first_name_rate"] = float(first)
    t_end = time.time()

    from ...core import data_hash
    res = Result(config=asdict(cfg), model=lm.name, names=d.names, adjectives=d.adjectives,
                  layers=layers, probes=probes, geometry=geometry, ablate_layers=abl,
                  ablation_probes=abl_probes, random_spread=spread, erasure_check=check,
                  causal=causal, contrasts=contrasts, binding=binding, n_tokens=int(len(cap.row)),
                  n_rows=int(keep.sum()),
                  timings={"capture_s": t_cap - t0, "probes_s": t_probe - t_cap,
                           "causal_s": t_causal - t_probe, "binding_s": t_end - t_causal,
                           "total_s": t_end - t0, "cpu_s": time.process_time() - c0},
                  data_hash=data_hash([s.text for s in stories], [it.prompt for it in items]),
                  example=stories[0].text, multislot=fitted, lm_name=lm.name,
                  out_dir=Path(out_dir) if out_dir is not None else None)
    if out_dir is not None:
        res.report()
    return res


def _probe_subspaces(lm, cfg, abl, abl_fit, scale):
    """``ablate_method='probe'``: the slot probes' row spaces, and random subspaces of equal
    rank made like a probe's (random weights on standardised features, divided by the per-dim
    std), so they avoid the few huge residual dimensions exactly as the probe subspaces do."""
    bases = {"current": {}, "prior": {}}
    randoms = [{} for _ in range(cfg.n_random)]
    for j, L in enumerate(abl):
        for c in ("current", "prior"):
            bases[c][f"resid_post.{L}"] = abl_fit[L].basis(c, cfg.slot_rank)
        k = bases["prior"][f"resid_post.{L}"].shape[0]
        for r, rb in enumerate(randoms):
            R = random_basis(lm.d_model, k, cfg.seed + 7 + j + 1000 * r) / scale[L]  # (k, d)
            rb[f"resid_post.{L}"] = orthonormal_basis(R)
    return bases, randoms


def _erasers(lm, cfg, stories, name_ix, adj_ix, abl, abl_fit, groups_at):
    """``ablate_method='leace'``: per slot, LEACE erasers of the ablation layers fitted on the
    training stories' name tokens of the untouched forward (the probes' story split),
    ``n_random`` variance-matched random erasers made from the prior ones, and the held-out
    check with all of them on (``erase.erasure_check``). Concept and random erasers are made
    the same way, so their edits in the forward match; erasers fitted layer by layer with the
    earlier ones on (``fit_erasers(sequential=...)``) edit the later layers far less than
    random ones made from them (1-5x smaller on SmolLM2), which biases the contrast."""
    from ...probes import group_split
    from .erase import erasure_check, fit_erasers, name_positions, random_erasers

    test_rows = group_split(groups_at, cfg.test_size, cfg.seed, n=len(groups_at))
    test_st = np.zeros(len(stories), bool)
    test_st[np.unique(groups_at[test_rows])] = True  # the stories the probes held out
    texts, mask, per = name_positions(lm, stories, name_ix, adj_ix)
    E = fit_erasers(lm, texts, mask, per, abl, test_st, shrinkage=shrinkage(cfg.erase_shrinkage),
                    batch_size=cfg.batch_size, sequential=())
    bases = {c: {f"resid_post.{L}": e for L, e in E[c].items()} for c in ("current", "prior")}
    randoms = random_erasers(E["prior"], cfg.n_random, cfg.seed, cfg.erase_band,
                             cfg.erase_ratio or None)
    check = erasure_check(lm, texts, mask, per, E["prior"],
                          {L: abl_fit[L].probe("prior") for L in abl}, test_st, "prior", randoms,
                          C=cfg.C, batch_size=cfg.batch_size)
    for row in check:  # how close the random subspaces come to the prior's (whitened)
        e = E["prior"][row["layer"]]
        row["random_overlap"] = float(np.mean([e.overlap(r[f"resid_post.{row['layer']}"])
                                               for r in randoms]))
    return bases, randoms, check


def _probe_row(L: int, positions: str, msp) -> dict:
    """One ``Result.ablation_probes`` row: held-out accuracy of the current / prior probes with
    Wilson 95% intervals."""
    from ...runs import wilson

    out = {"layer": L, "positions": positions, "slots": {}}
    for k, v in msp.summary()["slots"].items():
        if k in ("current", "prior"):
            w = wilson(int(round(v["test"] * v["n_test"])), v["n_test"])
            out["slots"][k] = {**v, "lo": w["lo"], "hi": w["hi"]}
    return out


def _ablate_layers(spec: str, layers: list[int], n_layers: int, abl_probes=(),
                   top: float = 0.5) -> list[int]:
    if spec == "probe":  # where the held-out prior-entity probe reads best
        acc = {r["layer"]: r["slots"]["prior"]["test"] for r in abl_probes}
        k = max(1, math.ceil(top * len(layers) - 1e-9))
        return sorted(sorted(layers, key=lambda L: (-acc.get(L, 0.0), L))[:k])
    if spec == "auto":
        lo, hi = 0.2 * (n_layers - 1), 0.6 * (n_layers - 1)
        out = [L for L in layers if lo <= L <= hi]
        if not out:  # a coarse sweep on a small model: take the middle swept layer
            out = [layers[len(layers) // 2]]
        return out
    out = parse_layers(spec, n_layers)
    missing = [L for L in out if L not in layers]
    if missing:
        raise ValueError(f"ablate_layers {missing} were not swept (layers={layers}); an ablated "
                         "layer needs its own probes: add it to `layers`")
    return out


from . import control  # noqa: E402,F401  (registers the positive control: experiments.controls)
