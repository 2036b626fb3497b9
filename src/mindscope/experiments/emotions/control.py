"""Positive control for emotion-vector extraction: a planted feature with a known direction.

The plant (``plant_feature``): a one-neuron adapter at the extraction site that reads the model's
own representation of the target emotion and writes a fixed random unit direction ``d``:

    h <- h + scale * sigmoid((<h, g> - tau) / temp) * d        at every token of every text

``g`` (unit) is the mean difference of the activations of short texts in which a character is
afraid and texts that are not (``data/emotions/control_texts.json``, written for this control,
disjoint from the stories the protocol extracts from and from the tracking passages); ``tau`` and
``temp`` put the two training sets' mean projections at logits +-2; ``scale`` is ``strength`` x
``FRACTION`` x the mean token norm at the site (the protocol's steering convention). ``d`` is
drawn from a fixed generator (``planted_direction``), isotropic, so no emotion vector of the
untouched model is aligned with it beyond chance.

A **reader** (``reader=True``; the causal half, ``steer_control.py``, plants it) makes ``d``
causal: a second one-neuron adapter one layer downstream (``read_site``) reads ``d`` and writes a trained direction ``u``:

    h_r <- h_r + READ_FRACTION * |h_r| * sigmoid((<h_r, d> - tau_r) / temp_r) * u

``tau_r`` and ``temp_r`` make the reader fire only beyond the projection on ``d`` that text of the
measure's kind carries unsteered: ``temp_r`` = ``READ_TEMP`` x the writer's scale, ``tau_r`` = the
largest projection on ``d`` of any token of ``control_steer.json``'s ``train_prompts`` (writer
on, unsteered) + ``READ_MARGIN`` x ``temp_r``, so the reader is at most sigmoid(-2) = 0.12 on there
and adds almost nothing to the unsteered fear rate (measured: <= 0.1 nats; the first reader,
half on at the fear texts' mean projection, was half on at the end of the measure's prompts:
fear-prone before any steering); ``u`` (unit) is trained with the model frozen (``READ_STEPS`` Adam
steps, ``train_reader_direction``) so that adding it raises log P(a fear word next) at the end of
``control_steer.json``'s ``train_prompts`` (the measure's prompts are held out). The reader sits
downstream of the extraction site, so it changes no activation the extraction reads; it only
makes moving along ``d`` raise the fear words. Saved in ``reader-<strength>.safetensors``.

The protocol then runs unchanged (``configure`` keeps the parts that need no extra forward passes)
and ``detect`` reads the extraction from the run folder (``story_means.safetensors``): the cosine
of the extracted target-emotion vector with ``d``; its interval combines a bootstrap over stories
(resampled within each emotion, the whole recipe redone) with the spread of the cosine under no
effect (variance-matched random directions, drawn with the neutral-text covariance, and isotropic
ones: the wider of the two), so that an unrelated direction gives an interval containing 0.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...core import Intervention, atomic_save_tensors, data_hash, load_safetensors
from .._common import shipped_json
from .._control import Detection, Planted, control

log = logging.getLogger(__name__)

__all__ = ["GatedWrite", "planted_direction", "plant_feature", "detect_recovery",
           "configure_extraction", "recovery_stats", "train_reader_direction", "lexicon_ids",
           "read_site", "FRACTION", "READ_FRACTION", "READ_STEPS", "READ_TEMP", "READ_MARGIN",
           "DIRECTION_SEED"]

FRACTION = 0.1
"""Write scale at strength 1, as a fraction of the mean token norm at the site."""
READ_FRACTION = 0.5
"""The reader's write scale, as a fraction of the mean token norm at the read site."""
READ_STEPS = 40
"""Adam steps that train the reader's write direction."""
READ_TEMP = 1 / 16
"""The reader's gate temperature, as a fraction of the writer's scale (its full write on d)."""
READ_MARGIN = 2.0
"""The reader's threshold: this many temperatures above the largest projection on d of any token
of its calibration prompts (writer on, unsteered), so it is at most sigmoid(-2) = 0.12 on there."""
DIRECTION_SEED = 24
"""Seed of the planted direction ``d`` (a fixed isotropic unit vector)."""


def planted_direction(dim: int) -> torch.Tensor:
    """The planted unit direction ``d`` (dim,): the same for every run of a model width."""
    g = torch.Generator().manual_seed(DIRECTION_SEED)
    d = torch.randn(dim, generator=g, dtype=torch.float64)
    return (d / d.norm()).float()


@dataclass(frozen=True)
class GatedWrite(Intervention):
    """h <- h + scale * sigmoid((<h, gate> - tau) / temp) * direction (a one-neuron adapter)."""

    gate: torch.Tensor
    tau: float
    temp: float
    direction: torch.Tensor
    scale: float = 1.0

    def apply_rows(self, h, rows):
        g = self.gate.to(device=h.device, dtype=torch.float32)
        d = self.direction.to(device=h.device, dtype=torch.float32)
        a = torch.sigmoid((h.float() @ g - self.tau) / self.temp)  # (n,)
        return (h.float() + self.scale * a.unsqueeze(1) * d).to(h.dtype)


def configure_extraction(cfg):
    """The control needs the vectors only: it keeps the parts that reuse the extraction's
    activations (held-out classification, geometry) and drops the ones with extra forward
    passes; the target emotion is added to ``emotions`` if a subset leaves it out."""
    target = shipped_json("emotions", "control_texts.json")["target"]
    emos = cfg.emotions
    if emos is not None and target not in emos:
        emos = (target, *emos)
    return dataclasses.replace(cfg, parts=("classify", "geometry"), emotions=emos)


def _site(lm, cfg) -> str:
    from . import default_site

    return cfg.site or default_site(lm)


def _fit_gate(lm, cfg, site: str, texts: dict) -> dict:
    from ...steering import row_means

    tgt, oth = texts["target_texts"], texts["other_texts"]
    M = row_means(lm, tgt + oth, [site], "all", False, cfg.skip_first, cfg.batch_size)[site]
    g = M[:len(tgt)].mean(0) - M[len(tgt):].mean(0)  # (d,)
    g = g / g.norm()
    p = M @ g  # (n_texts,)
    pt, po = float(p[:len(tgt)].mean()), float(p[len(tgt):].mean())
    cap = lm.capture(list(shipped_json("emotions", "emotions.json")["neutral"]), sites=[site],
                     positions="all", dtype=torch.float32, batch_size=cfg.batch_size)
    norm = float(cap[site][cap.pos >= cfg.skip_first].norm(dim=-1).mean())
    return {"gate": g, "tau": (pt + po) / 2, "temp": max((pt - po) / 4, 1e-6),
            "mean_norm": norm, "proj_target": pt, "proj_other": po}


def read_site(lm, site: str) -> str:
    """Where the reader sits: the residual stream one layer after the writer's ``site``."""
    layer = int(site.rsplit(".", 1)[1])
    return f"resid_post.{min(layer + 1, lm.n_layers - 1)}"


def lexicon_ids(lm, words) -> list[int]:
    """First token of ' word' for each word (sorted, unique)."""
    return sorted({lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words})


def train_reader_direction(lm, site: str, scale: float, prompts, ids, steps: int = READ_STEPS,
                           lr: float = 0.05, seed: int = DIRECTION_SEED) -> tuple[torch.Tensor, list]:
    """The reader's write direction (d,), unit: ``Add(site, u, scale)`` at every position
    trained (Adam on u only, the model frozen) to raise log P(next token in ``ids``) at the end
    of ``prompts``. Returns (u, losses)."""
    import mindscope as ms

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(lm.d_model, generator=g) * 0.01
    w.requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    losses = []
    try:
        b = lm.tokenize(list(prompts))  # left-padded: the last column is every row's last token
        with torch.enable_grad():
            for _ in range(steps):
                u = w / w.norm()
                with lm.intervene(ms.Add(site, u, scale=scale)), lm.run_context(b):
                    logits = lm.call(b.input_ids, b.attention_mask, use_cache=False).logits
                lp = logits[:, -1].float().log_softmax(-1)  # (n, V)
                loss = -lp[:, ids].logsumexp(-1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    finally:
        for p in params:
            p.requires_grad_(True)
    u = w.detach() / w.detach().norm()
    return u, losses


def _fit_reader(lm, cfg, writer: GatedWrite, texts: dict, steer: dict) -> dict:
    from ...steering import row_means

    site = read_site(lm, writer.site)
    tgt, oth = texts["target_texts"], texts["other_texts"]
    with lm.intervene(writer):
        M = row_means(lm, tgt + oth, [site], "all", False, cfg.skip_first, cfg.batch_size)[site]
        cap = lm.capture(list(steer["train_prompts"]), sites=[site], positions="all",
                         dtype=torch.float32, batch_size=cfg.batch_size)
    p = M @ writer.direction  # (n_texts,)
    pt, po = float(p[:len(tgt)].mean()), float(p[len(tgt):].mean())
    q = cap[site][cap.pos >= cfg.skip_first] @ writer.direction  # (tokens,) calibration prompts
    temp = max(READ_TEMP * writer.scale, 1e-6)
    norm = float(M.norm(dim=1).mean())
    u, losses = train_reader_direction(lm, site, READ_FRACTION * norm, steer["train_prompts"],
                                       lexicon_ids(lm, steer["lexicon"]))
    return {"r_tau": float(q.max()) + READ_MARGIN * temp, "r_temp": temp, "r_norm": norm,
            "r_proj_train_max": float(q.max()), "r_proj_train_mean": float(q.mean()),
            "r_proj_target": pt, "r_proj_other": po, "r_site": site, "r_write": u,
            "r_loss": [losses[0], losses[-1]], "r_steps": len(losses)}


@control("emotions", detect=lambda r: detect_recovery(r), strengths=(0.5, 1.0),
         configure=lambda cfg: configure_extraction(cfg))
def plant_feature(lm, cfg, work_dir, strength, reader: bool = False) -> Planted:
    """A feature that writes a fixed random direction on the target emotion's tokens (a
    one-neuron adapter gated by the model's own fear direction, fitted on texts disjoint from the
    extraction stories); reused from ``work_dir/feature.safetensors`` when its settings match.
    ``reader=True`` (the causal half, ``steer_control``) also plants the reader that makes d
    raise the fear words; it sits downstream of the extraction site, so the extraction half
    (which plants without it, to stay cheap) reads the same activations either way."""
    texts = shipped_json("emotions", "control_texts.json")
    site = _site(lm, cfg)
    st = {"model": lm.name, "site": site, "skip_first": cfg.skip_first,
          "texts": data_hash(texts)}
    key = data_hash(st)
    path = Path(work_dir) / "feature.safetensors"
    fit = None
    if path.exists():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
        if meta.get("key") == key:
            gate = load_safetensors(path, "planted feature")["gate"]
            fit = {**json.loads(meta["fit"]), "gate": gate}
            log.info("emotions control: reusing the fitted gate in %s", path)
    if fit is None:
        fit = _fit_gate(lm, cfg, site, texts)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_tensors(path, {"gate": fit["gate"]}, metadata={
            "key": key, "settings": json.dumps(st),
            "fit": json.dumps({k: v for k, v in fit.items() if k != "gate"})})
    d = planted_direction(lm.d_model)
    scale = float(strength) * FRACTION * fit["mean_norm"]
    writer = GatedWrite(site, gate=fit["gate"], tau=fit["tau"], temp=fit["temp"], direction=d,
                        scale=scale)
    effect = {"kind": "planted feature (gated direction)", "site": site, "strength": strength,
              "target": texts["target"], "scale": scale, "fraction_of_norm": FRACTION * strength,
              "direction_seed": DIRECTION_SEED,
              "gate": {k: fit[k] for k in ("tau", "temp", "proj_target", "proj_other")},
              "trained_on": f"data/emotions/control_texts.json ({len(texts['target_texts'])} "
                            f"target + {len(texts['other_texts'])} other texts)",
              "held_out": "data/emotions/stories.json (the extraction stories)",
              "summary": f"writes d x {scale:.1f} ({FRACTION * strength:.2g} of the mean norm) "
                         f"at {site} where the fear gate fires"}
    if not reader:
        return Planted.hooked(lm, effect, writer)
    steer = shipped_json("emotions", "control_steer.json")
    rpath = Path(work_dir) / f"reader-{strength:g}.safetensors"
    rkey = data_hash(key, strength, READ_FRACTION, READ_STEPS, READ_TEMP, READ_MARGIN, steer)
    rfit = None
    if rpath.exists():
        from safetensors import safe_open

        with safe_open(str(rpath), framework="pt") as f:
            meta = dict(f.metadata() or {})
        if meta.get("key") == rkey:
            rfit = {**json.loads(meta["fit"]),
                    "r_write": load_safetensors(rpath, "planted reader")["write"]}
    if rfit is None:
        rfit = _fit_reader(lm, cfg, writer, texts, steer)
        atomic_save_tensors(rpath, {"write": rfit["r_write"]}, metadata={
            "key": rkey, "fit": json.dumps({k: v for k, v in rfit.items() if k != "r_write"})})
    rd = GatedWrite(rfit["r_site"], gate=d, tau=rfit["r_tau"], temp=rfit["r_temp"],
                    direction=rfit["r_write"], scale=READ_FRACTION * rfit["r_norm"])
    effect["reader"] = {**{k: v for k, v in rfit.items() if k != "r_write"},
                        "scale": rd.scale, "lexicon": steer["lexicon"],
                        "rule": f"off unsteered: tau = max projection on d over the train_prompts' "
                                f"tokens + {READ_MARGIN:g} x temp, temp = {READ_TEMP:g} x the "
                                f"writer's scale",
                        "trained_on": "data/emotions/control_steer.json train_prompts (u and the "
                                      "threshold)",
                        "held_out": "data/emotions/control_steer.json prompts"}
    effect["summary"] += f"; {rfit['r_site']} reads d and writes the fear words"
    return Planted.hooked(lm, effect, writer, rd)


# ---- detection from the run folder ---------------------------------------------------------

def _vectors(X: torch.Tensor, labels: np.ndarray, k: int, q: torch.Tensor) -> torch.Tensor:
    """The recipe on story means: per-emotion mean, centred, neutral PCs out, unit -> (k, d)."""
    M = torch.stack([X[torch.as_tensor(labels == i)].mean(0) for i in range(k)])
    M = M - M.mean(0)
    M = M - (M @ q.T) @ q
    return M / M.norm(dim=1, keepdim=True)


def recovery_stats(X: torch.Tensor, labels, names, neutral: torch.Tensor, variance: float,
                   target: str, d: torch.Tensor, n_boot: int = 1000, n_null: int = 2000,
                   seed: int = 0) -> dict:
    """Cosine of the ``target`` vector with ``d``; bootstrap over stories (within emotions); the
    no-effect spread from variance-matched (neutral covariance) and isotropic random directions."""
    from ...steering import covariance_directions, neutral_pcs

    labels = np.asarray(labels)
    names = list(names)
    j, k = names.index(target), len(names)
    q = neutral_pcs(neutral, None, variance).float()
    V = _vectors(X, labels, k, q)
    cos = float(V[j] @ d)
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == i) for i in range(k)]
    boot = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(g, len(g)) for g in groups])
        boot.append(float(_vectors(X[idx], labels[idx], k, q)[j] @ d))
    boot = np.array(boot)
    gen = torch.Generator().manual_seed(seed)
    R_var = covariance_directions(neutral, n_null, gen)  # (n_null, d) ~ N(0, cov), unit
    R_iso = torch.randn(n_null, X.shape[1], generator=gen)
    nulls = {}
    for name, R in (("variance_matched", R_var), ("isotropic", R_iso)):
        c = (R / R.norm(dim=1, keepdim=True)) @ V[j]
        nulls[name] = {"sd": float(c.std()), "q975_abs": float(c.abs().quantile(0.975))}
    sd_null = max(v["sd"] for v in nulls.values())
    sd = float(np.sqrt(boot.std(ddof=1) ** 2 + sd_null ** 2))
    return {"cos": cos, "lo": cos - 1.96 * sd, "hi": cos + 1.96 * sd,
            "boot_lo": float(np.quantile(boot, 0.025)), "boot_hi": float(np.quantile(boot, 0.975)),
            "boot_sd": float(boot.std(ddof=1)), "null": nulls, "n_stories": len(labels),
            "other_cos": {n: float(V[i] @ d) for i, n in enumerate(names) if i != j}}


def detect_recovery(results: dict) -> Detection:
    """Cosine of the extracted target-emotion vector with the planted direction (no effect = 0);
    the interval: bootstrap over stories combined with the no-effect spread of the cosine."""
    run = Path(results["run_dir"])
    t = load_safetensors(run / "story_means.safetensors", "story means")
    names = list(results["emotions"])
    target = shipped_json("emotions", "control_texts.json")["target"]
    cfg = json.loads((run / "run_config.json").read_text(encoding="utf-8"))
    variance = float(cfg["settings"].get("variance", 0.5))
    d = planted_direction(t["story_means"].shape[1])
    s = recovery_stats(t["story_means"], t["labels"].numpy(), names, t["neutral"], variance,
                       target, d, seed=int(results.get("seed", 0)))
    return Detection(f"cos(extracted '{target}' vector, planted d)", s["cos"], s["lo"], s["hi"],
                     null=0.0, n={"stories": s["n_stories"],
                                  "boot_ci": [s["boot_lo"], s["boot_hi"]],
                                  "null_sd": {k: v["sd"] for k, v in s["null"].items()},
                                  "max_other_cos": max(s["other_cos"].values())})

