"""The causal half of the emotions positive control: steering along the EXTRACTED vector must
produce the planted behaviour.

``control.plant_feature`` plants a writer (the fear gate writes a fixed random direction ``d`` at
the extraction site) and a reader (one layer downstream, it reads ``d`` and writes a direction
trained to raise the fear words), so moving along ``d`` makes the model more likely to say a
fear word. The extraction
half (``run_control``) shows the protocol recovers ``d``; this half takes the 'afraid' vector the
protocol extracted (unchanged, from the control's run folders) and steers with it, as the
protocol's steering experiments do (``Add`` at the site, scale = ``cfg.strength`` x the mean
residual norm, every position), on held-out prompts (``data/emotions/control_steer.json``):

* measure: per prompt, log P(the next token is a fear word) steered minus unsteered (paired),
  mean over prompts with a bootstrap interval over prompts (no effect = 0); and the share of
  greedy continuations that contain a fear word, unsteered vs steered;
* planted model + its extracted vector: the effect must be detected;
* the same model + variance-matched random directions of the same norm (drawn with the
  neutral-text covariance at the site, ``n_random`` per seed), pooled per prompt: must not
  raise the fear words (a perturbation this large moves the log-prob in its own way, so the
  test is one-sided), and the vector's effect minus theirs (paired) must be above 0; each
  direction's effect is listed;
* the untouched model + its own extracted vector: the other side (what steering along the
  model's own fear vector does without a planted reader).

    python -m mindscope.experiments.emotions.steer_control -o runs/controls/emotions --seeds 0 1 2

Measured on SmolLM2 (docs/experiments/emotions.md): detected at x4, not at x1.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

import mindscope as ms
from ...runs import bootstrap_ci, save_figure, wilson, write_json, write_text
from ...steering import covariance_directions
from .._common import shipped_json
from .._control import run_control
from .control import configure_extraction, lexicon_ids, plant_feature

log = logging.getLogger(__name__)
__all__ = ["fear_logprob", "paired_effect", "steer_check", "causal_control"]


def fear_logprob(lm, prompts, ids, site: Optional[str] = None, vector=None, scale: float = 0.0,
                 batch_size: int = 16) -> np.ndarray:
    """log P(next token in ``ids``) at the end of each prompt (n,), with ``Add(site, vector,
    scale)`` at every position when a vector is given."""
    out = []
    for a in range(0, len(prompts), batch_size):
        ivs = [ms.Add(site, vector.float(), scale=float(scale))] if vector is not None else []
        with lm.intervene(*ivs), torch.no_grad():
            lp = lm.forward(list(prompts[a:a + batch_size]))[:, -1].float().log_softmax(-1)
        out.append(lp[:, ids].logsumexp(-1).cpu().numpy())  # (b,)
    return np.concatenate(out)


def paired_effect(diff, n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of per-prompt differences with a percentile bootstrap interval over prompts
    (``runs.bootstrap_ci``)."""
    diff = np.asarray(diff, dtype=float)
    value, lo, hi = bootstrap_ci(lambda i: diff[i].mean(), len(diff), n_boot, seed)
    return {"value": value, "lo": lo, "hi": hi, "n": len(diff), "detected": lo > 0 or hi < 0}


def _has_word(texts, words) -> list[bool]:
    pat = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    return [pat.search(t or "") is not None for t in texts]


def steer_check(lm, vector: torch.Tensor, site: str, scale: float, prompts, words,
                randoms: torch.Tensor, max_new_tokens: int = 12, seed: int = 0,
                batch_size: int = 16) -> dict:
    """Steering ``lm`` along ``vector`` (unit) x ``scale`` and along each of ``randoms`` (k, d)
    x ``scale``: the paired log-prob effects and (``max_new_tokens`` > 0) the greedy
    continuations' fear-word share unsteered, steered and along ``randoms[0]``."""
    ids = lexicon_ids(lm, words)
    base = fear_logprob(lm, prompts, ids, batch_size=batch_size)
    steered = fear_logprob(lm, prompts, ids, site, vector, scale, batch_size)
    rand = np.stack([fear_logprob(lm, prompts, ids, site, r, scale, batch_size)
                     for r in randoms])  # (k, n)
    per_dir = [paired_effect(r - base, seed=seed + i) for i, r in enumerate(rand)]
    gen = {}
    for name, v in (("unsteered", None), ("steered", vector), ("random", randoms[0])) \
            if max_new_tokens > 0 else ():
        ivs = [ms.Add(site, v.float(), scale=float(scale))] if v is not None else []
        with lm.intervene(*ivs):
            outs = lm.generate(list(prompts), max_new_tokens=max_new_tokens, temperature=0.0,
                               batch_size=batch_size)
        texts = [o.text for o in outs]
        hits = _has_word(texts, words)
        gen[name] = {**wilson(sum(hits), len(hits)), "examples": texts[:3]}
    return {"scale": scale, "n_prompts": len(prompts), "n_random": len(randoms),
            "per_prompt": (steered - base).tolist(),
            "vector": paired_effect(steered - base, seed=seed),
            "random_pooled": paired_effect(rand.mean(0) - base, seed=seed),
            "minus_random": paired_effect(steered - rand.mean(0), seed=seed),
            "random_per_direction": [d["value"] for d in per_dir],
            "random_detected_share": sum(d["detected"] for d in per_dir) / max(len(per_dir), 1),
            "random_max": float(max(d["value"] for d in per_dir)) if per_dir else None,
            "unsteered_mean_logprob": float(base.mean()), "generation": gen}


def causal_control(lm, cfg, out_dir, seeds: Sequence[int] = (0,), strength: float = 4.0,
                   n_random: int = 20, max_new_tokens: int = 12) -> dict:
    """Both halves: the extraction control's runs at ``strength`` and ``seeds[0]`` (reused from
    ``out_dir`` when they are there with its ``control.json``; else run, which rewrites that
    control.json with just those runs), then ``steer_check`` with the untouched and the planted model's extracted vectors.
    Writes ``steering.json``, ``steering.md`` and ``steering.png`` in ``out_dir``."""
    from ...steering import residual_norms
    from .data import load_table
    from .vectors import neutral_acts

    out = Path(out_dir)
    cfg = configure_extraction(cfg)
    spec = shipped_json("emotions", "control_steer.json")
    target, key = spec["target"], f"{float(strength):g}"
    runs = {"untouched": out / "untouched" / f"seed{seeds[0]}",
            "planted": out / f"planted-{key}" / f"seed{seeds[0]}"}
    if not all((p / "emotion_vectors.safetensors").exists() for p in runs.values()) or \
            not (out / "control.json").exists():  # else reuse the extraction control's runs
        run_control("emotions", lm, cfg, out, strengths=[strength], seeds=[seeds[0]])
    ext = json.loads((out / "control.json").read_text(encoding="utf-8"))
    from . import default_site

    site = cfg.site or default_site(lm)
    norm = residual_norms(lm, site)[site]
    scale = cfg.strength * norm
    neutral = neutral_acts(lm, load_table()["neutral"], site, cfg.skip_first, cfg.batch_size)
    vecs = {m: ms.VectorSet.load(p / "emotion_vectors.safetensors")[target].data.float()
            for m, p in runs.items()}
    res = {"site": site, "strength": strength, "steer_fraction": cfg.strength,
           "residual_norm": norm, "scale": scale, "target": target, "seeds": list(seeds),
           "extraction": {"passed": ext["passed"], "planted": ext["planted"][key][0],
                          "untouched": ext["untouched"][0]},
           "cos_vectors_d": {}, "untouched": [], "planted": []}
    from .control import planted_direction

    d = planted_direction(lm.d_model)
    res["cos_vectors_d"] = {m: float(v @ d / v.norm()) for m, v in vecs.items()}
    randoms = {s: covariance_directions(neutral, n_random, seed=1000 + s) for s in seeds}  # (k, d)
    for s in seeds:
        res["untouched"].append({"seed": s, **steer_check(
            lm, vecs["untouched"], site, scale, spec["prompts"], spec["lexicon"], randoms[s],
            max_new_tokens if s == seeds[0] else 0, s, cfg.batch_size)})
    p = plant_feature(lm, cfg, out / f"planted-{key}" / "model", strength, reader=True)
    try:
        res["effect"] = p.effect
        for s in seeds:
            res["planted"].append({"seed": s, **steer_check(
                p.lm, vecs["planted"], site, scale, spec["prompts"], spec["lexicon"], randoms[s],
                max_new_tokens if s == seeds[0] else 0, s, cfg.batch_size)})
    finally:
        if p.close is not None:
            p.close()
    pl, un = res["planted"], res["untouched"]
    for r, u in zip(pl, un):  # the same prompts: planted effect minus the untouched one, paired
        r["minus_untouched"] = paired_effect(np.subtract(r["per_prompt"], u["per_prompt"]),
                                             seed=r["seed"])
    res["passed"], res["passed_strict"] = verdicts(res)
    write_json(out / "steering.json", res)
    write_text(out / "steering.md", markdown(res))
    _plot(res, out / "steering.png")
    return res


def verdicts(r: dict) -> tuple[bool, bool]:
    """(passed, passed_strict). passed - the control convention (as ``run_control``): in every
    seed the planted model's vector raises the fear words (interval above 0) and beats the
    random directions (paired), the random directions do not raise them, and the untouched
    model's own vector is not detected. strict - also planted minus untouched above 0 (paired)."""
    def up(e):
        return e["detected"] and e["value"] > 0

    pl, un = r["planted"], r["untouched"]
    ok = (all(up(x["vector"]) and up(x["minus_random"]) and not up(x["random_pooled"])
              for x in pl) and not any(up(x["vector"]) for x in un))
    return ok, ok and all(up(x["minus_untouched"]) for x in pl)


def _ci(e: dict) -> str:
    return f"{e['value']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"


def markdown(r: dict) -> str:
    """The rows the emotions doc carries."""
    lines = ["| model, steered along | Δ log P(fear word), steered − unsteered (95% bootstrap "
             "interval over prompts; no effect = 0) | detected in | greedy continuations with a "
             "fear word, unsteered → steered |", "|---|---|---|---|"]
    for m in ("untouched", "planted"):
        rows = r[m]
        for what, k in (("its extracted 'afraid' vector", "vector"),
                        (f"{rows[0]['n_random']} variance-matched random directions (pooled)",
                         "random_pooled")):
            det = sum(x[k]["detected"] for x in rows)
            gk = "steered" if k == "vector" else "random"
            gens = "; ".join(f"s{x['seed']}: {x['generation']['unsteered']['k']}/"
                             f"{x['generation']['unsteered']['n']} → {x['generation'][gk]['k']}/"
                             f"{x['generation'][gk]['n']}" for x in rows[:1])
            lines.append(f"| {m}, {what} | " + "; ".join(f"s{x['seed']}: {_ci(x[k])}" for x in rows)
                         + f" | {det}/{len(rows)} seeds | {gens} |")
    mx = max(x["random_max"] for x in r["planted"])
    lines.append("| planted: extracted vector minus random directions (paired by prompt) | "
                 + "; ".join(f"s{x['seed']}: {_ci(x['minus_random'])}" for x in r["planted"])
                 + f" | {sum(x['minus_random']['detected'] for x in r['planted'])}/"
                 f"{len(r['planted'])} seeds | – |")
    lines.append("| planted minus untouched (paired by prompt) | " + "; ".join(
        f"s{x['seed']}: {_ci(x['minus_untouched'])}" for x in r["planted"]) + f" | "
        f"{sum(x['minus_untouched']['detected'] for x in r['planted'])}/{len(r['planted'])} seeds | – |")
    lines.append("")
    lines.append(f"Planted, single random directions: largest effect {mx:+.2f}; share whose own "
                 "interval excludes 0: " + ", ".join(f"s{x['seed']} {x['random_detected_share']:.2f}"
                                                      for x in r["planted"]) + ".")
    lines.append(f"Causal half {'PASSED' if r['passed'] else 'FAILED'} by the control convention "
                 "(in every seed: the planted model's extracted vector raises the fear words, "
                 "interval above 0, and beats the random directions, paired; random directions "
                 "of the same norm do not raise them; the untouched model's own vector is not "
                 "detected). Strict test (planted minus untouched, paired, above 0 in every seed): "
                 + ("passed." if r["passed_strict"] else "NOT passed."))
    return "\n".join(lines) + "\n"


def _plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    labels, vals, los, his, cols = [], [], [], [], []
    for m, c in (("untouched", "tab:gray"), ("planted", "tab:red")):
        for k, name in (("vector", "extracted vector"), ("random_pooled", "random (pooled)")):
            for x in r[m]:
                labels.append(f"{m}\n{name}\ns{x['seed']}")
                vals.append(x[k]["value"]), los.append(x[k]["lo"]), his.append(x[k]["hi"])
                cols.append(c if k == "vector" else "tab:blue")
    xs = np.arange(len(vals))
    ax.errorbar(xs, vals, yerr=[np.array(vals) - los, np.array(his) - vals], fmt="none",
                ecolor="k", capsize=3)
    ax.scatter(xs, vals, c=cols, zorder=3)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(xs, labels, fontsize=6)
    ax.set_ylabel("Δ log P(fear word)")
    ax.set_title(f"emotions control, causal half: steering at {r['site']} "
                 f"({r['steer_fraction']:g} × norm)", fontsize=9)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mindscope.experiments.emotions.steer_control",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", required=True, help="the control folder (reused)")
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strength", type=float, default=4.0,
                    help="planted strength (x; 4 = the documented run, x1 was not detected)")
    ap.add_argument("--n-random", type=int, default=20)
    a = ap.parse_args(argv)
    if a.n_random < 1:
        ap.error("--n-random must be >= 1")
    from . import Config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = causal_control(ms.load(a.model), Config.quick(), a.out, a.seeds, a.strength, a.n_random)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
