"""Plots and the HTML report of the emotion-concepts protocol (PNG bytes, written by the caller)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...runs import Page, figure_png


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_geometry(geo: dict, valence) -> bytes:
    plt = _plt()
    s = np.array(geo["scores"])
    fig, ax = plt.subplots(figsize=(7, 6))
    sc = ax.scatter(s[:, 0], s[:, 1] if s.shape[1] > 1 else np.zeros(len(s)), c=valence,
                    cmap="coolwarm", vmin=-1, vmax=1)
    for (x, y), n in zip(s[:, :2] if s.shape[1] > 1 else np.c_[s[:, 0], np.zeros(len(s))],
                         geo["names"]):
        ax.annotate(n, (x, y), fontsize=7)
    r = geo["pcs"]
    ax.set_xlabel(f"PC1 ({r[0]['explained_variance_ratio']:.0%}; r valence {r[0]['r_valence']:.2f})")
    if len(r) > 1:
        ax.set_ylabel(f"PC2 ({r[1]['explained_variance_ratio']:.0%}; r arousal {r[1]['r_arousal']:.2f})")
    ax.set_title("Emotion vectors: PCA (colour = shipped valence)")
    fig.colorbar(sc, ax=ax, label="valence")
    return figure_png(fig)


def plot_intensity(rows: list[dict]) -> bytes:
    plt = _plt()
    fig, axes = plt.subplots(1, max(1, len(rows)), figsize=(4.5 * max(1, len(rows)), 3.6),
                             squeeze=False)
    for ax, r in zip(axes[0], rows):
        ax.plot(range(len(r["values"])), r["projection"], "o-")
        ax.set_xticks(range(len(r["values"])), r["values"], rotation=45, ha="right", fontsize=7)
        ax.set_title(f"{r['name']}: '{r['emotion']}' (rho {r['spearman_rho']:.2f})", fontsize=9)
        ax.set_ylabel("projection (relative)")
    return figure_png(fig)


def plot_tracking(tr: dict, max_tokens: int = 240) -> bytes:
    plt = _plt()
    P = np.array(tr["projections"])[:max_tokens]  # (T, k)
    toks = [t.replace("\n", "\\n") for t in tr["tokens"][:max_tokens]]
    P = P - P.mean(1, keepdims=True)
    fig, ax = plt.subplots(figsize=(max(8, 0.16 * len(toks)), 0.22 * len(tr["names"]) + 2))
    lim = float(np.percentile(np.abs(P), 99)) or 1.0  # robust colour range
    im = ax.imshow(P.T, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim)
    ax.set_yticks(range(len(tr["names"])), tr["names"], fontsize=7)
    ax.set_xticks(range(len(toks)), toks, rotation=90, fontsize=6)
    ax.set_title("Per-token projection on each emotion vector (minus the token's mean)")
    fig.colorbar(im, ax=ax)
    return figure_png(fig)


def plot_preferences(pref: dict) -> bytes:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    elo = sorted(pref["elo"].items(), key=lambda x: x[1])
    a1.barh([k[:40] for k, _ in elo], [v for _, v in elo])
    a1.set_xlabel("Elo (baseline)")
    a1.tick_params(axis="y", labelsize=7)
    st = pref["steering"]
    xs = [pref["probe_preference_r"][e] for e in st]
    ys = [st[e]["elo_shift"] for e in st]
    a2.scatter(xs, ys)
    for x, y, e in zip(xs, ys, st):
        a2.annotate(e, (x, y), fontsize=8)
    a2.axhline(0, color="grey", lw=0.5)
    rr = pref["r_probe_vs_steering"]["r"]
    a2.set_xlabel("probe-preference correlation (across activities)")
    a2.set_ylabel("steering effect (Elo shift of steered option)")
    a2.set_title(f"r = {rr:.2f}" if rr == rr else "r = n/a")
    return figure_png(fig)


def plot_misaligned(mis: dict) -> bytes:
    plt = _plt()
    rates = mis["rates"]
    names = list(rates)
    y = [rates[n]["rate"] for n in names]
    err = np.array([[rates[n]["rate"] - rates[n]["lo"], rates[n]["hi"] - rates[n]["rate"]]
                    for n in names]).T
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(names)), 3.6))
    ax.bar(names, y, yerr=err, color=["grey"] + ["C0"] * (len(names) - 1))
    ax.set_ylabel("misaligned option chosen")
    ax.set_ylim(0, 1)
    ax.set_title(f"Misaligned choices under steering (strength {mis['strength']} x norm)")
    ax.tick_params(axis="x", rotation=45)
    return figure_png(fig)


def build_report(res) -> Page:
    r, rep = res.results, Page("mindscope: emotion concepts")
    rep.text(f"Model {r['model']} (prompts: {r.get('chat_format') or 'chat template'}), site {r['site']}, {r['n_emotions']} emotions, "
             f"{r['n_stories']} stories ({r['story_source']}); neutral PCs projected out: "
             f"{r['projected_out']}. Run time {r['seconds']:.0f}s.")
    rep.table(res.summary_rows(), ["metric", "value"])
    for key, title in (("geometry", "Geometry"), ("intensity", "Implicit intensity"),
                       ("tracking", "Per-token tracking"), ("preferences", "Preferences and steering"),
                       ("misaligned", "Misaligned choices")):
        if key in res.plots:
            rep.h(title)
            rep.image(Path(res.plots[key]).read_bytes(), alt=title)
    if "geometry" in r:
        rep.h("Principal components", 3)
        rep.table(r["geometry"]["pcs"])
    if "preferences" in r:
        rep.h("Steering effect per emotion", 3)
        rep.table([{"emotion": e, "probe_pref_r": r["preferences"]["probe_preference_r"][e], **v}
                   for e, v in r["preferences"]["steering"].items()])
    if "misaligned" in r:
        rep.table([{"condition": k, "rate": v, "mean_logit": v["mean_logit"]}
                   for k, v in r["misaligned"]["rates"].items()])
    return rep
