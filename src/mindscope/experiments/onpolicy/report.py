"""Plots and the self-contained ``report.html`` of an on-policy run (kept minimal; PNGs are
embedded as base64 so the HTML is one file)."""
from __future__ import annotations

from ...runs import save_figure
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return save_figure(path, fig)


def plot_entropy(gap: dict, dists: dict, path: Path) -> Path:
    """Left: per-response mean entropy by condition. Right: ratio off/on per response position."""
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    bins = np.linspace(0, max(max(v) for v in dists.values()) * 1.05 + 1e-9, 20)
    for cond, v in dists.items():
        a.hist(v, bins=bins, alpha=0.5, label=f"{cond} (mean {np.mean(v):.2f})")
    a.set_xlabel("mean next-token entropy over the response (nats)"), a.set_ylabel("responses")
    a.legend(fontsize=8), a.set_title("entropy: own vs prefilled off-policy")
    for cond in gap["ratios"]:
        r = np.array(gap["per_position"][f"ratio_{cond}"], dtype=float)
        b.plot(np.arange(len(r)), r, label=cond)
    b.axhline(1, color="gray", ls=":")
    b.set_xlabel("response position"), b.set_ylabel("H(off) / H(own)")
    b.set_title("ratio per position"), b.legend(fontsize=8)
    return _save(fig, path)


def plot_probe(sur: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = [int(s.split(".")[-1]) for s in sur["sites"]]
    ax.plot(x, sur["r2_test"], "o-", label="probe, held-out prompts")
    ax.plot(x, sur["r2_control_task"], "s--", label="control task (token-type memorisation)")
    ax.axhline(sur["r2_token_identity"], color="gray", ls=":", label="token-identity baseline")
    ax.set_xlabel("layer (resid_post)"), ax.set_ylabel("R^2 of surprisal")
    ax.set_title("input surprise -log p(x_t|x_<t): linear readout by layer")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_steering(st: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.array(st["doses"])
    for kind, m in (("probe", "o-"), ("random", "s--")):
        d = st[kind]["delta_entropy"]
        y = np.array([v["mean"] for v in d])
        lo = y - np.array([v["ci"][0] for v in d])
        hi = np.array([v["ci"][1] for v in d]) - y
        ax.errorbar(x, y, yerr=[lo, hi], fmt=m, capsize=3,
                    label=f"{kind} (slope {st[kind]['slope']['nats_entropy_per_nat_surprise']:.3f})")
    ax.axhline(0, color="gray", ls=":")
    ax.set_xlabel("dose: change of predicted surprisal (nats)")
    ax.set_ylabel("change in mean next-token entropy")
    ax.set_title(f"steering along the surprise direction at {st['site']}"), ax.legend(fontsize=8)
    return _save(fig, path)


def _n(x, digits: int) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def _fmt(v) -> str:
    if isinstance(v, dict):
        for key, dg in (("ratio", 2), ("mean", 3), ("auc", 2)):
            if key in v:
                ci = v.get("ci") or [None, None]
                return f"{_n(v[key], dg)} [{_n(ci[0], dg)}, {_n(ci[1], dg)}]"
    return "" if v is None else str(v)


def build_report(title: str, summary: list, plots: list, results: dict, notes: list):
    """A ``runs.Page``: summary table, notes, plots, example responses."""
    from ...runs import Page

    r = Page(title)
    r.table([{"measure": k, "value": _fmt(v)} for k, v in summary])
    for t in notes:
        r.text(t)
    for p in plots:
        if Path(p).is_file():
            r.image(Path(p).read_bytes(), alt=Path(p).stem)
    for ex in results.get("gap", {}).get("examples", []):
        r.transcript(f"{ex['condition']} (mean entropy {_n(ex['mean_entropy'], 3)})",
                     ex["prompt"], ex["response"])
    return r
