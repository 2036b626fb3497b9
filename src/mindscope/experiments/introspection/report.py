"""The HTML report of an introspection run: heatmaps (layer x strength), tables with Wilson
CIs, per-layer plots, and example transcripts."""
from __future__ import annotations

from ...runs import Page, figure_png, heatmap_png
from .detect import trial_messages


def _grid(cells, key, sub="rate"):
    layers = sorted({c["layer"] for c in cells})
    strengths = sorted({c["strength"] for c in cells})
    at = {(c["layer"], c["strength"]): c[key][sub] for c in cells}
    return [[at.get((L, s)) for s in strengths] for L in layers], layers, strengths


def _line_plot(xs, series: dict, title: str, ylabel: str) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, ys in series.items():
        ax.plot(xs, ys, marker=".", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return figure_png(fig)


def _examples(rep: Page, trials, pred, label, k: int = 4, prompt: str = "") -> None:
    shown = [t for t in trials if pred(t)][:k]
    for t in shown:
        rep.transcript(label(t), t.get("prompt", prompt), t["response"])
    if not shown:
        rep.text("(no such trials)")


def build_report(res) -> Page:
    m, cfg = res.metrics, res.config
    rep = Page(f"Introspection experiments — {res.model}")
    rep.text(f"Model {res.model} (prompts: {res.chat_format or 'chat template'}); grader {res.grader.get('name')}; runtime {res.runtime_s:.0f} s; "
             f"layers {m.get('layers')}; strengths {list(cfg.strengths)}; "
             f"{len(cfg.words()[0])} concepts; temperature {cfg.temperature}; "
             f"{cfg.max_new_tokens} new tokens. Rates are k/n with 95% Wilson intervals.")
    rep.table([{"key": k, "value": v} for k, v in res.summary().items()])
    d = m.get("detection")
    if d:
        rep.h("1. Injected-thought detection")
        rep.text("Injection from the token before 'Trial N' through the response at resid_post.L. "
                 f"Controls (no injection): false-positive rate {d['control']['fpr']['k']}/"
                 f"{d['control']['fpr']['n']}; control P(Yes) = {d['control']['p_yes']:.3f}.")
        for key, title, sub, fmt in (("tpr", "detection rate (TPR)", "rate", "{:.2f}"),
                                     ("combined", "detection ∧ identification", "rate", "{:.2f}"),
                                     ("coherence", "coherent responses", "rate", "{:.2f}"),
                                     ("yes_shift", "shift of log P(Yes)/P(No) vs control",
                                      "mean", "{:+.2f}")):
            g, rows, cols = _grid(d["cells"], key, sub)
            rep.image(heatmap_png(g, rows, cols, title, "layer", "strength", fmt=fmt,
                                  cmap="coolwarm" if key == "yes_shift" else "viridis"), title)
        rep.table([{k: c.get(k) for k in ("layer", "strength", "tpr", "fpr", "identification",
                                          "combined", "mentions", "coherence", "yes_shift",
                                          "p_yes")} for c in d["cells"]])
        if "mentions" in d["control"]:
            rep.text("mentions = the response names the injected concept anywhere (a steering "
                     "effect, not introspection); controls name their (unused) label concept "
                     f"{d['control']['mentions']['k']}/{d['control']['mentions']['n']} times.")
        tr = res.trials.get("detection", [])
        prompt = "\n".join(f"[{x['role']}] {x['content']}" for x in trial_messages(cfg.trial))
        rep.h("Example transcripts: injected trials graded as claims", 3)
        _examples(rep, tr, lambda t: t["kind"] == "injected" and t["claims"],
                  lambda t: f"{t['concept']} L{t['layer']} s{t['strength']} (identified: "
                            f"{t['identifies']})", prompt=prompt)
        rep.h("Example transcripts: other injected trials", 3)
        _examples(rep, tr, lambda t: t["kind"] == "injected" and not t["claims"],
                  lambda t: f"{t['concept']} L{t['layer']} s{t['strength']}", prompt=prompt)
        rep.h("Example transcripts: controls", 3)
        _examples(rep, tr, lambda t: t["kind"] == "control",
                  lambda t: f"control (claims: {t['claims']})", prompt=prompt)
    if m.get("thoughts"):
        rep.h("2. Thoughts vs text")
        rep.table(m["thoughts"]["cells"])
        _examples(rep, res.trials.get("thoughts", []), lambda t: t["layer"] is not None,
                  lambda t: f"{t['concept']} L{t['layer']}: {t['sentence']}")
    if m.get("prefill"):
        rep.h("3. Prefill detection")
        rep.table(m["prefill"]["cells"])
        _examples(rep, res.trials.get("prefill", []), lambda t: True,
                  lambda t: f"{t['word']} L{t['layer']} (apology: {t['apology']})", k=6)
    c = m.get("control")
    if c:
        rep.h("4. Intentional control")
        xs = [r["layer"] for r in c["cells"]]
        series = {f"{v} (on-target)": [r[f"{v}_on"]["mean"] for r in c["cells"]]
                  for v in c["variants"]}
        series["think (off-target words)"] = [r["think_off"]["mean"] for r in c["cells"]]
        rep.image(_line_plot(xs, series, "cosine of response tokens with the concept vector",
                             "mean cosine"))
        rep.table([{"layer": r["layer"], **{f"{v}": r[f"{v}_on"] for v in c["variants"]},
                    "think_off": r["think_off"], "think − dont (paired)": r.get("think_minus_dont")}
                   for r in c["cells"]])
        _examples(rep, res.trials.get("control", []), lambda t: True,
                  lambda t: f"{t['variant']}: {t['concept']}", k=5)
    mech = m.get("mechanisms")
    if mech:
        rep.h("5. Mechanisms")
        r = mech["refusal"]
        rep.text(f"Refusal direction at resid_post.{r['layer']} (norm {r['direction_norm']:.1f}), "
                 f"projected out at every layer; injection at L{mech['inj_layer']}, "
                 f"strength {mech['strength']}.")
        keys = ("tpr", "fpr", "combined", "coherence", "yes_shift")
        rep.table([{"condition": n, **{k: r[n][k] for k in keys}} for n in ("baseline", "ablated")])
        b = mech["bias"]
        rep.text(f"Trained bias at {b['site']} (norm {b['norm']:.2f}) on {b['train_concepts']}; "
                 f"held out: {b['test_concepts']}.")
        rep.table([{"condition": n, **{k: b[n][k] for k in keys}}
                   for n in ("held_out_before", "held_out_after")])
        rep.table([{"concepts": s, "when": w, "P(Yes) injected": b[f"p_yes_{s}"][w]["injected"],
                    "P(Yes) control": b[f"p_yes_{s}"][w]["control"]}
                   for s in ("train", "test") for w in ("before", "after")])
        h = b["history"]
        if h:
            rep.image(_line_plot([x["step"] for x in h],
                                 {"z injected": [x["z_injected"] for x in h],
                                  "z control": [x["z_control"] for x in h]},
                                 "bias training: log P(Yes)/P(No)", "log-odds"))
    ag = m.get("grader_agreement")
    if ag:
        rep.h("Grader agreement with the hand-labelled set")
        rep.table([{"grader": ag["grader"], "n": ag["n"], "claims": ag["claims"],
                    "identifies": ag["identifies"]}])
        if ag["disagreements"]:
            rep.table(ag["disagreements"])
    return rep
