"""The binding run folder: results.json, run_config.json, PNG plots, a self-contained
report.html, and the slot probes as direction files (probes/L{layer}_{slot}.safetensors + .json)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...probes import save_probe
from ...runs import (Page, figure_png, git_hash, png, save_html, save_png, table, versions,
                     weights_note, write_json)


def _plots(res, out: Path) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    L = [r["layer"] for r in res.probes]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, pair, title in ((axes[0], ("current", "prior"), "entity identity"),
                            (axes[1], ("current_attr", "prior_attr"), "entity attribute")):
        for slot, col in zip(pair, ("C0", "C3")):
            ax.plot(L, [r["slots"][slot]["test"] for r in res.probes], "o-", color=col, label=slot)
            if "control" in res.probes[0]["slots"][slot]:
                ax.plot(L, [r["slots"][slot]["control"] for r in res.probes], "x--", color=col,
                        alpha=0.6, label=f"{slot} control")
        ax.plot(L, [r["slots"][pair[0]]["chance"] for r in res.probes], ":", color="gray",
                label="chance (majority)")
        ax.set_title(title), ax.set_xlabel("layer (resid_post)"), ax.legend(fontsize=7)
    axes[0].set_ylabel("held-out accuracy")
    fig.tight_layout()
    paths["probes"] = Path(save_png(out / "probe_accuracy.png", figure_png(fig)))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(L, [g["entity"]["overlap"] for g in res.geometry], "o-", label="current vs prior entity")
    ax.plot(L, [g["attribute"]["overlap"] for g in res.geometry], "s-", label="current vs prior attribute")
    ax.plot(L, [g["entity"]["null_overlap"] for g in res.geometry], "--", color="gray",
            label="permuted-label probes (covariance-matched null)")
    ax.plot(L, [g["entity"]["isotropic_overlap"] for g in res.geometry], ":", color="lightgray",
            label="isotropic random subspaces (wrong null)")
    ax.set_xlabel("layer"), ax.set_ylabel("mean cos² of principal angles")
    ax.set_title("slot subspace overlap (0 = orthogonal)"), ax.legend(fontsize=7), fig.tight_layout()
    paths["geometry"] = Path(save_png(out / "slot_geometry.png", figure_png(fig)))

    tasks = list(res.causal["none"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    w = 0.2
    for j, c in enumerate(res.causal):
        acc = [res.causal[c][t]["acc"] for t in tasks]
        sem = [res.causal[c][t]["sem"] for t in tasks]
        ax.bar(np.arange(len(tasks)) + (j - 1.5) * w, acc, w, yerr=sem, label=f"ablate {c}")
    for i, t in enumerate(tasks):
        ax.hlines(res.causal["none"][t]["chance"], i - 0.45, i + 0.45, colors="k", linestyles=":")
    ax.set_xticks(np.arange(len(tasks)), tasks, fontsize=8), ax.set_ylabel("accuracy")
    ax.set_title(f"slot ablations at layers {res.ablate_layers} (dotted: chance)")
    ax.legend(fontsize=7), fig.tight_layout()
    paths["causal"] = Path(save_png(out / "causal.png", figure_png(fig)))
    return paths


def _table(rows: list[list], head: list[str]) -> str:
    return table([dict(zip(head, r)) for r in rows], head, formats={h: _fmt for h in head})


def _fmt(x) -> str:
    return f"{x:.3f}" if isinstance(x, float) else str(x)


def _page(res, plots: dict) -> Page:
    prow = [[r["layer"]] + [r["slots"][s]["test"] for s in ("current", "prior", "current_attr",
                                                           "prior_attr")]
            + [r["slots"]["prior"].get("control", float("nan")), r["joint"],
               r["slots"]["current"]["chance"]] for r in res.probes]
    grow = [[g["layer"], g["entity"]["min_angle_deg"], g["entity"]["overlap"],
             str(g["entity"].get("bootstrap", {}).get("overlap_ci", "–")),
             g["attribute"]["overlap"], g["entity"]["null_overlap"]] for g in res.geometry]
    tasks = list(res.causal["none"])
    crow = [[t, res.causal["none"][t]["chance"]] + [res.causal[c][t]["acc"] for c in res.causal]
            + [res.causal["none"][t]["n"]] for t in tasks]
    brow = [[k, v["acc"], v["sem"], v["chance"], v["n"]] for k, v in res.binding.items()
            if isinstance(v, dict)]
    p = Page(f"Multi-slot entity binding — {res.model}")
    p.text(f"{len(res.probes)} layers probed on {res.n_rows} tokens (of {res.n_tokens}) from "
           f"{res.config['n_stories']} stories; {len(res.names)} names, {len(res.adjectives)} "
           f"adjectives; probe {res.config['probe_kind']} C={res.config['C']}, split by story; "
           f"control: {res.config['control']}. Prompts: {res.chat_format}. "
           f"Total {res.timings['total_s']:.0f} s.")
    p.text(f"Example story: {res.example}")
    p.section("Probes: held-out accuracy per slot", png(plots["probes"]),
              _table(prow, ["layer", "current", "prior", "cur attr", "prior attr", "prior control",
                            "joint (cur & prior & attrs)", "chance"]))
    p.section("Slot geometry", png(plots["geometry"]),
              _table(grow, ["layer", "min angle cur/prior (deg)", "overlap entity",
                            "entity overlap 95% CI (story bootstrap)", "overlap attr",
                            "null overlap (permuted-label probes)"]))
    where = {"names": "the story's name tokens", "story": "every story token"}.get(
        res.config.get("ablate_positions", "story"), "story tokens")
    arow = [[a["layer"]] + [f"{a['slots'][k]['test']:.3f} [{a['slots'][k]['lo']:.3f}, "
                            f"{a['slots'][k]['hi']:.3f}]" for k in ("prior", "current")]
            + [f"{a['slots']['prior']['chance']:.3f}", a["slots"]["prior"]["n_test"],
               "ablated" if a["layer"] in res.ablate_layers else ""]
            for a in res.ablation_probes]
    how = ("LEACE concept erasure; random = mean of {n} variance-matched random erasers"
           if res.config.get("ablate_method", "probe") == "leace" else
           "probe-subspace projection; random = mean of {n} random subspaces")
    parts = [_table(crow, ["task", "chance"] + [f"ablate {c}" for c in res.causal] + ["n"]),
             _table(arow, ["layer", "prior probe held-out acc [95% CI]", "current probe",
                           "chance (prior)", "n test tokens", ""])]
    if res.erasure_check:
        erow = [[r["layer"], r["probe_clean"], r["probe_erased"], r.get("probe_random", "–"),
                 r.get("refit_clean", "–"), r.get("refit_erased", "–"), r["chance"], r["n_test"],
                 r["edit_rms"], r.get("random_edit_rms", "–"), r["x_rms"]]
                for r in res.erasure_check]
        parts.append(_table(erow, ["layer", "prior probe: clean", "erased", "random erasure",
                                   "refit (CV): clean", "refit: erased", "chance (majority)",
                                   "n held-out tokens", "edit rms", "random edit rms",
                                   "activation rms"]))
    p.section(f"Causal tests (on {where} at layers {res.ablate_layers}; "
              + how.format(n=res.config.get("n_random", 1)) + "; the last table: the erasure "
              "checked on held-out stories, valid where the erased accuracy is at chance)",
              png(plots["causal"]), *parts)
    p.section("Double binding on one token",
              _table(brow, ["condition", "acc", "sem", "chance", "n"]))
    p.text(f"Rate of answering the first-mentioned name: "
           f"{res.binding.get('first_name_rate', float('nan')):.3f}")
    return p


def write_report(res, out) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes").mkdir(exist_ok=True)
    cfg = {"experiment": "binding", "config": res.config, "model": res.model,
           "weights": weights_note(res.model), "chat_format": res.chat_format,
           "seeds": [res.config.get("seed")],
           "data_hash": res.data_hash, "git": git_hash(), "versions": versions()}
    write_json(out / "run_config.json", cfg)
    write_json(out / "results.json", res.to_json())
    keep = set(res.ablate_layers) | {res.best_layer("prior"), res.best_layer("current")}
    for L in sorted(keep):
        msp = res.multislot.get(L)
        if msp is None:
            continue
        for slot, e in msp.slots.items():
            save_probe(e.probe, out / "probes" / f"L{L}_{slot}", site=f"resid_post.{L}",
                       model=res.lm_name, data_hash=res.data_hash)
    plots = _plots(res, out)
    return save_html(out / "report.html", _page(res, plots))
