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
  model's own fear vector does without a planted reader); the strict test asks the planted
  model's effect minus the untouched model's, paired by prompt, to be above 0;
* ``reader_diagnostics``: where the reader is on (its gate, unsteered / steered / along a random
  direction) and what it adds, from the writer-only plant beside the planted one.

Each planted strength is run (``--strengths``; the verdicts are read at the largest), and every
strength's rows are saved in the control folder and reused, so a killed run resumes:

    python -m mindscope.experiments.emotions.steer_control -o runs/controls/emotions \
        --seeds 0 1 2 --strengths 1 2 4

Measured on SmolLM2: docs/experiments/emotions.md.
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
from ...core import BadInputError, data_hash
from ...runs import (bootstrap_ci, mde_from_curve, mde_mean, save_figure, wilson, write_json,
                     write_text)
from ...steering import covariance_directions
from .._common import shipped_json
from .._control import run_control
from .control import configure_extraction, lexicon_ids, plant_feature, planted_direction

log = logging.getLogger(__name__)
__all__ = ["fear_logprob", "paired_effect", "steer_check", "reader_diagnostics", "causal_control",
           "verdicts"]


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
            "per_prompt": (steered - base).tolist(), "unsteered": base.tolist(),
            "vector": paired_effect(steered - base, seed=seed),
            "random_pooled": paired_effect(rand.mean(0) - base, seed=seed),
            "minus_random": paired_effect(steered - rand.mean(0), seed=seed),
            "random_per_direction": [d["value"] for d in per_dir],
            "random_detected_share": sum(d["detected"] for d in per_dir) / max(len(per_dir), 1),
            "random_max": float(max(d["value"] for d in per_dir)) if per_dir else None,
            "unsteered_mean_logprob": float(base.mean()), "generation": gen}


def _cached(path: Path, key: str, compute) -> dict:
    """``compute()`` once: reused from ``path`` when its ``key`` matches (a killed run resumes)."""
    if path.exists():
        got = json.loads(path.read_text(encoding="utf-8"))
        if got.get("key") == key:
            log.info("causal control: reusing %s", path)
            return got
    got = {"key": key, **compute()}
    write_json(path, got)
    return got


def reader_diagnostics(lm, cfg, work_dir, strength: float, reader: dict, vector, random, site: str,
                       scale: float, prompts, ids, batch_size: int = 16) -> dict:
    """Where the planted reader is on: the writer-only plant's per-prompt log P(fear word)
    unsteered and steered along ``vector``, and the reader's gate (from its fitted ``reader``
    settings) at the last token and over all tokens, unsteered / steered / along ``random``."""
    pw = plant_feature(lm, cfg, work_dir, strength, reader=False)
    try:
        out = {"writer_only_unsteered": fear_logprob(pw.lm, prompts, ids, batch_size=batch_size),
               "writer_only_steered": fear_logprob(pw.lm, prompts, ids, site, vector, scale,
                                                   batch_size)}
        d = planted_direction(lm.d_model)
        for name, v in (("unsteered", None), ("steered", vector), ("random", random)):
            ivs = [ms.Add(site, v.float(), scale=float(scale))] if v is not None else []
            with pw.lm.intervene(*ivs):
                cap = pw.lm.capture(list(prompts), sites=[reader["r_site"]], positions="all",
                                    dtype=torch.float32, batch_size=batch_size)
            proj = cap[reader["r_site"]] @ d  # (tokens,)
            gate = torch.sigmoid((proj - reader["r_tau"]) / reader["r_temp"])
            last = torch.ones_like(cap.row, dtype=torch.bool)
            last[:-1] = cap.row[1:] != cap.row[:-1]  # the last token of each row
            keep = cap.pos >= cfg.skip_first
            out[f"gate_last_{name}"] = float(gate[last].mean())
            out[f"proj_last_{name}"] = float(proj[last].mean())
            out[f"tokens_on_{name}"] = float((gate[keep] > 0.5).float().mean())
    finally:
        if pw.close is not None:
            pw.close()
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in out.items()}


def causal_control(lm, cfg, out_dir, seeds: Sequence[int] = (0,),
                   strengths: Sequence[float] = (4.0,), n_random: int = 20,
                   max_new_tokens: int = 12) -> dict:
    """Both halves at each planted strength: the extraction control's runs at ``strengths`` and
    ``seeds[0]`` (reused from ``out_dir`` when there with its ``control.json``; else run, which
    rewrites that control.json with just those runs), then ``steer_check`` with the untouched and
    each planted model's extracted vector. The untouched rows and each strength's rows are saved
    (``steering-untouched.json``, ``steering-<s>.json``) and reused, so a killed run resumes.
    The verdicts are read at the largest strength. Writes ``steering.json``, ``steering.md`` and
    ``steering.png`` in ``out_dir``."""
    from ...steering import residual_norms
    from . import default_site
    from .data import load_table
    from .vectors import neutral_acts

    if not strengths or min(strengths) <= 0 or not seeds:
        raise BadInputError(f"causal_control needs planted strengths > 0 and at least one seed; "
                            f"got strengths={list(strengths)}, seeds={list(seeds)}")
    out = Path(out_dir)
    cfg = configure_extraction(cfg)
    spec = shipped_json("emotions", "control_steer.json")
    target, prompts = spec["target"], spec["prompts"]
    fresh = int(spec.get("fresh_from", len(prompts)))
    keys = [f"{float(s):g}" for s in strengths]
    full = keys[int(np.argmax(strengths))]
    runs = {"untouched": out / "untouched" / f"seed{seeds[0]}",
            **{k: out / f"planted-{k}" / f"seed{seeds[0]}" for k in keys}}
    ext = out / "control.json"
    if not ext.exists() or any(k not in json.loads(ext.read_text(encoding="utf-8"))["planted"]
                               for k in keys) or \
            not all((p / "emotion_vectors.safetensors").exists() for p in runs.values()):
        run_control("emotions", lm, cfg, out, strengths=list(strengths), seeds=[seeds[0]])
    ext = json.loads(ext.read_text(encoding="utf-8"))
    site = cfg.site or default_site(lm)
    norm = residual_norms(lm, site)[site]
    scale = cfg.strength * norm
    neutral = neutral_acts(lm, load_table()["neutral"], site, cfg.skip_first, cfg.batch_size)
    vecs = {m: ms.VectorSet.load(p / "emotion_vectors.safetensors")[target].data.float()
            for m, p in runs.items()}
    d = planted_direction(lm.d_model)
    randoms = {s: covariance_directions(neutral, n_random, seed=1000 + s) for s in seeds}  # (k, d)
    ids = lexicon_ids(lm, spec["lexicon"])
    base_key = [lm.name, site, scale, spec, n_random, list(seeds), max_new_tokens]

    def check(model, v, s):
        return {"seed": s, **steer_check(model, v, site, scale, prompts, spec["lexicon"],
                                         randoms[s], max_new_tokens if s == seeds[0] else 0, s,
                                         cfg.batch_size)}

    un = _cached(out / "steering-untouched.json",
                 data_hash(base_key + [vecs["untouched"].tolist()]),
                 lambda: {"rows": [check(lm, vecs["untouched"], s) for s in seeds]})["rows"]
    res = {"site": site, "strengths": [float(s) for s in strengths], "full": full,
           "steer_fraction": cfg.strength, "residual_norm": norm, "scale": scale,
           "target": target, "seeds": list(seeds), "n_prompts": len(prompts), "fresh_from": fresh,
           "extraction": {"passed": ext["passed"], "untouched": ext["untouched"][0],
                          **{k: ext["planted"][k][0] for k in keys}},
           "cos_vectors_d": {m: float(v @ d / v.norm()) for m, v in vecs.items()},
           "untouched": un, "planted": {}, "effect": {}, "diagnostics": {}}
    for s, k in zip(strengths, keys):
        def one(s=s, k=k):
            p = plant_feature(lm, cfg, out / f"planted-{k}" / "model", s, reader=True)
            try:
                rows = [check(p.lm, vecs[k], sd) for sd in seeds]
            finally:
                if p.close is not None:
                    p.close()
            diag = reader_diagnostics(lm, cfg, out / f"planted-{k}" / "model", s,
                                      p.effect["reader"], vecs[k], randoms[seeds[0]][0], site,
                                      scale, prompts, ids, cfg.batch_size)
            return {"rows": rows, "effect": p.effect, "diagnostics": diag}

        got = _cached(out / f"steering-{k}.json", data_hash(base_key + [s, vecs[k].tolist()]), one)
        rows, diag = got["rows"], got["diagnostics"]
        for r, u in zip(rows, un):  # the same prompts: planted effect minus the untouched one
            diff = np.subtract(r["per_prompt"], u["per_prompt"])
            r["minus_untouched"] = paired_effect(diff, seed=r["seed"])
            r["minus_untouched_fresh"] = paired_effect(diff[fresh:], seed=r["seed"]) \
                if len(diff) - fresh >= 2 else None
        b_p, b_u = np.array(rows[0]["unsteered"]), np.array(un[0]["unsteered"])
        b_w, s_w = np.array(diag["writer_only_unsteered"]), np.array(diag["writer_only_steered"])
        s_p = b_p + np.array(rows[0]["per_prompt"])
        diag.update({"baseline_planted_minus_untouched": paired_effect(b_p - b_u),
                     "reader_unsteered": paired_effect(b_p - b_w),
                     "reader_steered": paired_effect(s_p - s_w),
                     "writer_only_effect": paired_effect(s_w - b_w),
                     "strict_sd": float(np.std(np.subtract(rows[0]["per_prompt"],
                                                           un[0]["per_prompt"]), ddof=1))})
        res["planted"][k], res["effect"][k], res["diagnostics"][k] = rows, got["effect"], diag
    res["passed"], res["passed_strict"] = verdicts(res)
    rates = [sum(_up(x["minus_untouched"]) for x in res["planted"][k]) / len(seeds) for k in keys]
    res["strict_detect_rate"] = dict(zip(keys, rates))
    res["strict_mde_strength"] = mde_from_curve(strengths, rates) if len(keys) > 1 else None
    res["strict_mde_nats"] = mde_mean(res["diagnostics"][full]["strict_sd"], len(prompts))
    write_json(out / "steering.json", res)
    write_text(out / "steering.md", markdown(res))
    _plot(res, out / "steering.png")
    return res


def _up(e) -> bool:
    return bool(e and e["detected"] and e["value"] > 0)


def verdicts(r: dict) -> tuple[bool, bool]:
    """(passed, passed_strict) at the full (largest) strength. passed - the control convention
    (as ``run_control``): in every seed the planted model's vector raises the fear words
    (interval above 0) and beats the random directions (paired), the random directions do not
    raise them, and the untouched model's own vector is not detected. strict - also planted
    minus untouched above 0 (paired)."""
    pl, un = r["planted"][r["full"]], r["untouched"]
    ok = (all(_up(x["vector"]) and _up(x["minus_random"]) and not _up(x["random_pooled"])
              for x in pl) and not any(_up(x["vector"]) for x in un))
    return ok, ok and all(_up(x["minus_untouched"]) for x in pl)


def _ci(e: dict) -> str:
    return f"{e['value']:+.2f} [{e['lo']:+.2f}, {e['hi']:+.2f}]"


def _gen(rows, k) -> str:
    g = rows[0]["generation"]
    if not g:
        return "–"
    return (f"s{rows[0]['seed']}: {g['unsteered']['k']}/{g['unsteered']['n']} → "
            f"{g[k]['k']}/{g[k]['n']}")


def _row(label, rows, k, gen="–") -> str:
    got = [x for x in rows if x.get(k)]
    return (f"| {label} | " + "; ".join(f"s{x['seed']}: {_ci(x[k])}" for x in got)
            + f" | {sum(_up(x[k]) for x in got)}/{len(got)} seeds | {gen} |")


def markdown(r: dict) -> str:
    """The rows the emotions doc carries: the steering table, the reader diagnostics, the
    verdicts at the full strength."""
    un, n = r["untouched"], r["n_prompts"]
    nf = n - r["fresh_from"]
    lines = ["| model, steered along | Δ log P(fear word), steered − unsteered (95% bootstrap "
             f"interval over {n} prompts; no effect = 0) | above 0 in | greedy continuations "
             "with a fear word, unsteered → steered |", "|---|---|---|---|",
             _row("untouched, its extracted 'afraid' vector", un, "vector", _gen(un, "steered")),
             _row(f"untouched, {un[0]['n_random']} variance-matched random directions (pooled)",
                  un, "random_pooled", _gen(un, "random"))]
    for k in r["planted"]:
        rows, c = r["planted"][k], r["extraction"][k]
        tag = (f"planted x{k} (cos(vector, d) {r['cos_vectors_d'][k]:.2f}"
               + ("" if c["detected"] else ", the extraction does not detect it") + ")")
        lines += [_row(f"{tag}, its extracted vector", rows, "vector", _gen(rows, "steered")),
                  _row(f"{tag}, random directions (pooled)", rows, "random_pooled",
                       _gen(rows, "random")),
                  _row(f"{tag}: vector minus random (paired)", rows, "minus_random"),
                  _row(f"**{tag}: planted minus untouched (paired; the strict test)**", rows,
                       "minus_untouched")]
        if nf >= 2:
            lines.append(_row(f"{tag}: planted minus untouched, the {nf} fresh prompts only",
                              rows, "minus_untouched_fresh"))
    lines += ["", "| reader (seed-independent) | " + " | ".join(f"x{k}" for k in r["planted"])
              + " |", "|---|" + "---|" * len(r["planted"])]
    D = r["diagnostics"]
    for label, f in (
            ("unsteered log P, planted − untouched (paired)",
             lambda g: _ci(g["baseline_planted_minus_untouched"])),
            ("the reader's contribution unsteered (planted − writer only)",
             lambda g: _ci(g["reader_unsteered"])),
            ("the reader's contribution steered along the vector",
             lambda g: _ci(g["reader_steered"])),
            ("Δ of the writer-only plant along the vector", lambda g: _ci(g["writer_only_effect"])),
            ("reader gate at the last token: unsteered / steered / a random direction",
             lambda g: f"{g['gate_last_unsteered']:.2f} / {g['gate_last_steered']:.2f} / "
                       f"{g['gate_last_random']:.2f}"),
            ("tokens with the reader over half on: unsteered / steered / random",
             lambda g: f"{g['tokens_on_unsteered']:.2f} / {g['tokens_on_steered']:.2f} / "
                       f"{g['tokens_on_random']:.2f}"),
            ("sd of the per-prompt strict difference (seed 0)", lambda g: f"{g['strict_sd']:.2f}")):
        lines.append(f"| {label} | " + " | ".join(f(D[k]) for k in r["planted"]) + " |")
    lines.append("")
    pl = r["planted"][r["full"]]
    mx = max(x["random_max"] for x in pl)
    lines.append(f"At x{r['full']}, single random directions: largest effect {mx:+.2f}; share "
                 "whose own interval excludes 0: " + ", ".join(
                     f"s{x['seed']} {x['random_detected_share']:.2f}" for x in pl) + ".")
    mde = r.get("strict_mde_strength")
    lines.append(f"Strict test detected in {', '.join(f'x{k} {v:.0%}' for k, v in r['strict_detect_rate'].items())} "
                 f"of seeds; smallest planted strength detected in 80% of seeds: "
                 + (f"x{mde:.2g}" if mde is not None else "none") + f"; the strict test's MDE at "
                 f"{n} prompts: {r['strict_mde_nats']:.2f} nats (power 80%).")
    lines.append(f"Causal half at x{r['full']} {'PASSED' if r['passed'] else 'FAILED'} by the "
                 "control convention (in every seed: the planted model's extracted vector raises "
                 "the fear words, interval above 0, and beats the random directions, paired; "
                 "random directions of the same norm do not raise them; the untouched model's own "
                 "vector raises them in no seed). Strict test (planted minus untouched, paired, "
                 "above 0 in every seed): " + ("PASSED." if r["passed_strict"] else "NOT passed."))
    return "\n".join(lines) + "\n"


def _plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    ks = list(r["planted"])
    for j, (what, lab, c) in enumerate((("vector", "steered along the extracted vector", "tab:red"),
                                        ("minus_untouched", "planted − untouched (strict)", "k"),
                                        ("random_pooled", "random directions (pooled)",
                                         "tab:blue"))):
        for i, u in enumerate(r["untouched"]):
            es = [u.get(what)] + [r["planted"][k][i][what] for k in ks]  # x = 0: untouched
            xs = np.array([x for x, e in enumerate(es) if e]) + (j - 1) * 0.2 + (i - 1) * 0.05
            es = [e for e in es if e]
            v = np.array([e["value"] for e in es])
            lo, hi = np.array([e["lo"] for e in es]), np.array([e["hi"] for e in es])
            ax.errorbar(xs, v, yerr=[v - lo, hi - v], fmt="o", color=c, ms=3, capsize=2,
                        label=lab if i == 0 else None)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(ks) + 1), ["untouched"] + [f"x{k}" for k in ks])
    ax.set_xlabel("model: untouched, or planted at strength x")
    ax.set_ylabel(f"Δ log P(fear word), {r['n_prompts']} prompts")
    ax.set_title(f"emotions control, causal half: steering at {r['site']} "
                 f"({r['steer_fraction']:g} × norm); 95% intervals, one point per seed",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(path, fig)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mindscope.experiments.emotions.steer_control",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("-o", "--out", required=True, help="the control folder (reused)")
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--strengths", type=float, nargs="+", default=[1.0, 2.0, 4.0],
                    help="planted strengths (x); the verdicts are read at the largest")
    ap.add_argument("--n-random", type=int, default=20)
    a = ap.parse_args(argv)
    if a.n_random < 1:
        ap.error("--n-random must be >= 1")
    if min(a.strengths) <= 0:
        ap.error("--strengths must be > 0")
    from . import Config

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    res = causal_control(ms.load(a.model), Config.quick(), a.out, a.seeds, a.strengths,
                         a.n_random)
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
