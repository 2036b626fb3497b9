"""Plots and the HTML report of the persona-space / Assistant-axis protocol."""
from __future__ import annotations

from pathlib import Path

from ...runs import Page, figure_png


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_space(space: dict) -> bytes:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    L = len(space["cos_pc1_axis"])
    a1.plot(range(L), space["cos_pc1_axis"], "o-", label="|cos(PC1, axis)|")
    a1.plot(range(L), [e[0] for e in space["explained_variance_ratio"]], "s--", label="PC1 explained var.")
    a1.set_xlabel("layer (resid_post.L)")
    a1.set_ylim(0, 1)
    a1.legend()
    a1.set_title("Persona space per layer")
    ld = space["loadings"]
    a2.scatter([r["pc1"] for r in ld], [r["pc2"] for r in ld], s=12)
    for r in ld:
        a2.annotate(r["role"], (r["pc1"], r["pc2"]), fontsize=6)
    if space.get("default_pc1") is not None:
        a2.axvline(space["default_pc1"], color="red", lw=1, label="default assistant")
        a2.legend()
    a2.set_xlabel("PC1")
    a2.set_ylabel("PC2")
    a2.set_title(f"Role loadings at layer {space['layer_index']}")
    return figure_png(fig)


def plot_drift(dr: dict) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"default": "-", "capped": "--"}
    for m, sets in dr["mean_by_turn"].items():
        for i, (name, ys) in enumerate(sets.items()):
            ax.plot(range(1, len(ys) + 1), ys, styles.get(m, "-"), marker="o", color=f"C{i}",
                    label=f"{name} ({m})")
    ax.set_xlabel("assistant turn")
    ax.set_ylabel(f"projection on the Assistant axis (layer {dr['layer']})")
    ax.legend(fontsize=8)
    ax.set_title("Persona drift over conversations")
    return figure_png(fig)


def plot_steering(st: dict) -> bytes:
    plt = _plt()
    xs = sorted(st["by_strength"], key=float)
    a = [st["by_strength"][x]["assistant"]["rate"] for x in xs]
    o = [st["by_strength"][x]["other"]["rate"] for x in xs]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([float(x) for x in xs], a, "o-", label="identifies as the assistant")
    ax.plot([float(x) for x in xs], o, "s-", label="identifies as another entity")
    ax.set_xlabel("steering strength along the axis (x residual norm; + = toward Assistant)")
    ax.set_ylabel("fraction of answers (rule judge)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    return figure_png(fig)


def build_report(res) -> Page:
    r, rep = res.results, Page("mindscope: persona space and the Assistant axis")
    rep.text(f"Model {r['model']} (prompts: {r.get('chat_format') or 'chat template'}); {r['n_roles']} roles, {r['n_role_responses']} role responses "
             f"kept of {r['n_role_generated']} (filter: {r['role_filter']}), "
             f"{r['n_default_responses']} default-assistant responses; analysis layer "
             f"{r['layer']}; capping layers {r.get('cap_layers')}. Run time {r['seconds']:.0f}s.")
    rep.table(res.summary_rows(), ["metric", "value"])
    for key, title in (("space", "Persona space"), ("steering", "Steering along the axis"),
                       ("drift", "Drift")):
        if key in res.plots:
            rep.h(title)
            rep.image(Path(res.plots[key]).read_bytes(), alt=title)
    if "steering" in r:
        for ex in r["steering"]["examples"][:: max(1, len(r["steering"]["examples"]) // 12)]:
            rep.transcript(f"strength {ex['strength']}, {ex['verdict']}: {ex['question']}",
                           str(ex["system"]), ex["response"])
    if "jailbreaks" in r:
        rep.h("Persona jailbreaks")
        for m in ("default", "capped"):
            for ex in r["jailbreaks"][m]["examples"][:4]:
                rep.transcript(f"{m}, harmful={ex['harmful']}", ex["prompt"], ex["response"])
    if "capability" in r:
        rep.h("Capability retention (HLE-format sample, lenient rule judge)")
        rep.table([{"variant": k, **v} for k, v in r["capability"].items()])
    return rep

