"""Scaling-law planner: a grid sweep over (n_latents, tokens, lr) from one batch stream, power-law
fits (log-log least squares) and a recommended config for a compute budget.

Compute of training (stated formula): C = 6 * d * n_latents * tokens FLOPs, the dense count
(forward 2 d n + backward 4 d n per token); sparse TopK kernels do less, but the law is about
model size and data, so the dense count is the conventional axis.

Fits (Scaling Monosemanticity): on the compute frontier (configs whose loss beats every cheaper
config), loss = a C^b, n_opt = a C^b, tokens_opt = a C^b; and over all (n, tokens) cells, the best
lr = a C^b. At fixed data (the largest token budget) loss = a n^b, and at fixed width (the largest
n) loss = a T^b. Every fit reports the slope's standard error and 95% confidence interval
(ordinary least squares on the logs, Student t with n - 2 degrees of freedom).

>>> import numpy as np
>>> C = np.logspace(10, 14, 9); f = fit_power_law(C, 3.0 * C ** -0.25)
>>> round(f["b"], 6), round(f["a"], 6)
(-0.25, 3.0)
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from ..core import locking
from ._config import SAEConfig, TrainConfig
from ._sae import atomic_write_json

log = logging.getLogger(__name__)


def flops(d: int, n_latents: int, tokens: float) -> float:
    """Training FLOPs C = 6 * d * n_latents * tokens."""
    return 6.0 * d * n_latents * tokens


# 0.975 quantiles of Student's t for 1..30 degrees of freedom (beyond: the normal 1.96)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """Two-sided 95% Student-t quantile for ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("t975 needs df >= 1")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def fit_power_law(x, y) -> dict:
    """Fit y = a x^b by least squares on (log x, log y). Returns a, b, r2, n points and, with
    n >= 3, b_se = sqrt(SS_res / (n - 2) / sum (log x - mean)^2) and b_ci = b -+ t975(n-2) b_se."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = (x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(np.log(x)) == 0:
        raise ValueError(f"fit_power_law needs >= 2 points with distinct positive x, got {len(x)}")
    lx, ly = np.log(x), np.log(y)
    b, loga = np.polyfit(lx, ly, 1)
    pred = loga + b * lx
    ss_res, ss_tot = float(((ly - pred) ** 2).sum()), float(((ly - ly.mean()) ** 2).sum())
    out = {"a": float(math.exp(loga)), "b": float(b), "r2": 1 - ss_res / ss_tot if ss_tot else 1.0,
           "n": int(len(x))}
    if len(x) >= 3:
        se = math.sqrt(ss_res / (len(x) - 2) / float(((lx - lx.mean()) ** 2).sum()))
        h = t975(len(x) - 2) * se
        out.update(b_se=se, b_ci=[float(b) - h, float(b) + h])
    return out


def frontier(results: Sequence[dict], key: str = "loss") -> list:
    """Results that beat every cheaper result on ``key`` (the compute-efficient frontier)."""
    best, out = math.inf, []
    for r in sorted(results, key=lambda r: (r["flops"], r[key])):
        if r[key] < best:
            best = r[key]
            out.append(r)
    return out


def fit_laws(results: Sequence[dict], key: str = "loss") -> dict:
    """Power laws of loss, n_latents, tokens and lr against compute (see module docstring)."""
    fr = frontier(results, key)
    laws: dict = {"frontier": [dict(n_latents=r["n_latents"], tokens=r["tokens"], lr=r["lr"],
                                    flops=r["flops"], **{key: r[key]}) for r in fr], "key": key}
    for name, xs, ys in [("loss", [r["flops"] for r in fr], [r[key] for r in fr]),
                         ("n_latents", [r["flops"] for r in fr], [r["n_latents"] for r in fr]),
                         ("tokens", [r["flops"] for r in fr], [r["tokens"] for r in fr])]:
        try:
            laws[name] = fit_power_law(xs, ys)
        except ValueError as e:
            log.warning("no %s law: %s", name, e)
            laws[name] = None
    cells: dict = {}
    for r in results:
        c = (r["n_latents"], r["tokens"])
        if c not in cells or r[key] < cells[c][key]:
            cells[c] = r
    try:
        laws["lr"] = fit_power_law([r["flops"] for r in cells.values()], [r["lr"] for r in cells.values()])
    except ValueError as e:
        log.warning("no lr law: %s", e)
        laws["lr"] = None
    # slices of the grid: loss vs width at the largest token budget trained at >= 3 widths (else
    # >= 2), loss vs tokens at the largest width trained for >= 3 token budgets (else >= 2)
    for name, var, other in [("loss_vs_n_latents", "n_latents", "tokens"),
                             ("loss_vs_tokens", "tokens", "n_latents")]:
        j = 0 if var == "n_latents" else 1
        by: dict = {}
        for c, r in cells.items():
            by.setdefault(c[1 - j], []).append(r)
        fixed = [v for v in sorted(by, reverse=True) if len(by[v]) >= 3] or \
                [v for v in sorted(by, reverse=True) if len(by[v]) >= 2]
        if not fixed:
            log.warning("no %s law: no %s with >= 2 grid points", name, other)
            laws[name] = None
            continue
        pts = by[fixed[0]]
        laws[name] = {**fit_power_law([r[var] for r in pts], [r[key] for r in pts]),
                      "at": {other: fixed[0]}}
    return laws


def plan(budget: float, laws: dict, d: int) -> dict:
    """Recommended n_latents, tokens and lr for ``budget`` FLOPs from fitted ``laws``."""
    if budget <= 0:
        raise ValueError("plan: budget must be positive FLOPs")
    if not laws.get("n_latents"):
        raise ValueError("plan: the sweep has no n_latents law (need >= 2 frontier points with "
                         "different compute); sweep a wider grid")
    fn = lambda f: f["a"] * budget ** f["b"]
    n = int(2 ** round(math.log2(max(fn(laws["n_latents"]), 1))))
    out = {"budget_flops": budget, "n_latents": n, "tokens": int(budget / (6 * d * n)),
           "formula": "C = 6 * d * n_latents * tokens"}
    if laws.get("lr"):
        out["lr"] = fn(laws["lr"])
    if laws.get("loss"):
        out["predicted_" + laws.get("key", "loss")] = fn(laws["loss"])
    return out


def _label(f: dict, var: str) -> str:
    ci = f" [{f['b_ci'][0]:.3f}, {f['b_ci'][1]:.3f}]" if f.get("b_ci") else ""
    return f"{f['a']:.3g} {var}^{f['b']:.3f}{ci}"


def plot_laws(results: Sequence[dict], laws: dict, path) -> Path:
    """Four panels: loss vs compute (frontier fit), loss vs n_latents per token budget, optimal
    n_latents vs compute, best lr vs compute."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    key = laws.get("key", "loss")
    C = np.array([r["flops"] for r in results])
    grid = np.logspace(np.log10(C.min()), np.log10(C.max()), 50)
    fig, ax = plt.subplots(1, 4, figsize=(17, 3.8))
    sc = ax[0].scatter(C, [r[key] for r in results], c=np.log2([r["n_latents"] for r in results]), s=14)
    fig.colorbar(sc, ax=ax[0], label="log2 n_latents")
    fr = laws.get("frontier") or []
    ax[0].plot([p["flops"] for p in fr], [p[key] for p in fr], "o", mfc="none", mec="r", ms=8,
               label="frontier")
    if laws.get("loss"):
        ax[0].plot(grid, laws["loss"]["a"] * grid ** laws["loss"]["b"], "r-",
                   label=_label(laws["loss"], "C"))
    ax[0].set_title(f"{key} vs compute (frontier fit)")
    for T in sorted({r["tokens"] for r in results}):
        pts = sorted((r["n_latents"], r[key]) for r in results if r["tokens"] == T)
        best: dict = {}
        for n, v in pts:
            best[n] = min(v, best.get(n, math.inf))
        ax[1].plot(list(best), list(best.values()), "o-", ms=3, label=f"T={T:,}")
    f = laws.get("loss_vs_n_latents")
    if f:
        ns = np.array(sorted({r["n_latents"] for r in results}), float)
        ax[1].plot(ns, f["a"] * ns ** f["b"], "r--", label=_label(f, "n"))
    ax[1].set_xlabel("n_latents"); ax[1].set_title(f"{key} vs width")
    cell_best: dict = {}
    for r in results:
        c = (r["n_latents"], r["tokens"])
        if c not in cell_best or r[key] < cell_best[c][key]:
            cell_best[c] = r
    for a, name in zip(ax[2:], ["n_latents", "lr"]):
        pts = fr if name == "n_latents" else list(cell_best.values())
        if name == "lr":  # every lr tried, then the best of each (n, T) cell
            a.scatter(C, [r["lr"] for r in results], s=8, c="0.8", label="tried")
        a.scatter([p["flops"] for p in pts], [p[name] for p in pts], s=14,
                  label="best per cell" if name == "lr" else None)
        if laws.get(name):
            a.plot(grid, laws[name]["a"] * grid ** laws[name]["b"], "r-", label=_label(laws[name], "C"))
        swept = len({r["lr"] for r in results}) > len({(r["n_latents"], r["tokens"]) for r in results})
        a.set_title(f"optimal {name}" if name == "n_latents" else
                    "best lr per (n, T)" if swept else "lr per (n, T) (not swept)")
    from matplotlib.ticker import NullFormatter
    for i, a in enumerate(ax):
        a.set_xscale("log"); a.set_yscale("log")
        a.xaxis.set_minor_formatter(NullFormatter())
        if i != 1:
            a.set_xlabel("compute C = 6 d n T (FLOPs)")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90); plt.close(fig)
    return path


def parse_lr(spec):
    """Check one lr grid entry: a positive number -> float, None or ``"auto"`` -> None, a
    positive multiple of the default like ``"0.5x"`` -> that string (ValueError otherwise)."""
    if spec is None:
        return None
    t = spec.strip().lower() if isinstance(spec, str) else spec
    if t == "auto":
        return None
    if isinstance(t, str) and t.endswith("x"):
        try:
            m = float(t[:-1])
        except ValueError:
            m = 0.0
        if not m > 0:
            raise ValueError(f"lr {spec!r}: a multiple of the default is written like '0.5x'")
        return t
    try:
        v = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"lr {spec!r} is not a number, 'auto' or '<m>x' (e.g. '2x')") from None
    if not v > 0:
        raise ValueError(f"lr {spec!r} must be positive")
    return v


def resolve_lr(spec, train: TrainConfig, cfg: SAEConfig) -> Optional[float]:
    """An lr grid entry -> a float, or None for the architecture's default (see ``sweep``)."""
    v = parse_lr(spec)
    if isinstance(v, str):
        return float(v[:-1]) * dataclasses.replace(train, lr=None).resolved_lr(cfg)
    return v


@locking("out_dir", "sae sweep")  # a second sweep into out_dir raises RunLockedError
def train_sweep(batches: Iterable, heldout: Sequence, base: SAEConfig, train: TrainConfig, *,
          n_latents: Sequence[int], tokens: Sequence[int], lrs: Sequence,
          batch_size: int,
          budget: Optional[float] = None, out_dir=None, progress: bool = True,
          device=None) -> dict:
    """Train every (n_latents, tokens, lr) with flops <= budget from ONE pass over ``batches``
    (each SAE stops after its own token count; schedules are per SAE), evaluate each on
    ``heldout`` batches and fit the laws. loss = held-out FVU (scale-free). An lr is a float,
    None or ``"auto"`` (the architecture's default, ``TrainConfig.resolved_lr``: 2e-4/sqrt(n/2^14)
    for topk, so it follows the width), or ``"<m>x"`` (m times that default, e.g. ``"0.5x"``:
    sweeps lr around the width-scaled default); the resolved value is recorded. Returns {"results", "laws", "saes" (name -> SAE), ...};
    ``sweep.json`` holds everything but the SAEs, which are saved per name under ``out_dir``."""
    from ._metrics import evaluate
    from ._trainer import Trainer

    specs, meta = [], []
    for i, (n, t, lr) in enumerate(itertools.product(n_latents, tokens, lrs)):
        C = flops(base.d_in, n, t)
        if budget is not None and C > budget:
            continue
        steps = max(1, int(t // batch_size))
        cfg = dataclasses.replace(base, n_latents=n, meta=dict(base.meta))
        tc = dataclasses.replace(train, steps=steps, lr=resolve_lr(lr, train, cfg))
        lr = tc.resolved_lr(cfg)
        tc.name = f"n{n}_t{t}_lr{lr:.1e}"
        if any(m["name"] == tc.name for m in meta):
            raise ValueError(f"sweep: two grid points resolve to the same SAE {tc.name!r}; "
                             "remove the duplicate from --latents/--tokens/--lrs")
        specs.append((cfg, tc))
        meta.append({"n_latents": n, "tokens": steps * batch_size, "lr": lr, "name": tc.name,
                     "flops": flops(base.d_in, n, steps * batch_size)})
    if len(specs) < 2:
        raise ValueError(f"sweep: only {len(specs)} grid points fit the budget {budget:g}; widen it")
    log.info("sweep: %d SAEs from one stream", len(specs))
    saes = Trainer(specs, out_dir, progress=progress, plots=out_dir is not None,
                   device=device).fit(batches)
    results = []
    for m, sae in zip(meta, saes):
        ev = evaluate(sae, heldout)
        results.append({**m, "loss": ev["fvu"], "mse": ev["mse"], "fvu": ev["fvu"], "l0": ev["l0"],
                        "dead_fraction": ev["dead_fraction"], "cosine": ev["cosine"],
                        "heldout_rows": ev["rows"], "excluded_rows": ev["excluded_rows"]})
    laws = fit_laws(results)
    out = {"results": results, "laws": laws, "d": base.d_in,
           "formula": "C = 6 * d * n_latents * tokens", "loss": "held-out FVU"}
    if out_dir is not None:
        atomic_write_json(Path(out_dir) / "sweep.json", out)
        plot_laws(results, laws, Path(out_dir) / "scaling_laws.png")
    return {**out, "saes": {m["name"]: sae for m, sae in zip(meta, saes)}}
