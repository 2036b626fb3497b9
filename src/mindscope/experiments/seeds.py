"""Run a protocol under several seeds and write the headline table its doc opens with.

``python -m mindscope.experiments.seeds PROTOCOL --seeds 0 1 2 [--quick] [--set key=value ...]
-o runs/trust/PROTOCOL`` loads the model once, runs the protocol once per seed into
``OUT/seed<k>/`` (each with its own run_config.json naming its seed and the weights), then
writes ``OUT/headline.json`` and ``OUT/headline.md``: the table

    measure | paper | this project (model, n, seeds, interval) | grader agreement

where "this project" gives the across-seed mean, the per-seed values, the across-seed spread
(sd) and, per seed, the run's own 95% interval. ``--table-only`` rebuilds the table from the
seed folders already there (no model needed). Every number comes from the runs' results.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..runs import seed_spread, weights_note, wilson, write_json, write_text
from ._control import finished

log = logging.getLogger(__name__)


def _num(x):
    return None if x is None else float(x)


def _w(d: Optional[dict]):
    """A wilson() dict -> (rate, lo, hi, n)."""
    if not d or d.get("rate") is None:
        return None, None, None, (d or {}).get("n")
    return d["rate"], d["lo"], d["hi"], d["n"]


# ---- per-protocol headline extractors: results.json -> rows --------------------------------
# a row: {"measure", "paper", "value", "lo", "hi", "n", "grader"}

def persona_rows(r: dict) -> list[dict]:
    from .graders import fmt_agreement

    rows = []
    sp = r.get("space", {})
    L = r.get("layer")
    ga = r.get("grader_agreement", {})
    lab, run = ga.get("labelled_test", {}), ga.get("run_rule_vs_judge", {})
    n_roles = (f"{r.get('n_roles')} of {r.get('n_roles_asked')} roles kept, "
               f"{r.get('n_role_responses')} role + {r.get('n_default_responses')} default responses")
    if sp:
        rows.append({"measure": f"|cos(PC1, Assistant axis)| at layer {L}", "paper": "PC1 of the role vectors aligns "
                     "with the axis", "value": sp["cos_pc1_axis"][L],
                     "n": n_roles, "grader": "role filter (rule role score = 3): "
                     + fmt_agreement(lab.get("persona_role")) + "; rule vs LM judge on this run: "
                     + fmt_agreement(run.get("role_score"))})
        rows.append({"measure": f"PC1 explained variance at layer {L}", "paper": "PC1 dominant "
                     "(low-dimensional persona space)", "value": sp["explained_variance_ratio"][L][0],
                     "n": n_roles, "grader": "as above"})
    st = r.get("steering", {}).get("by_strength", {})
    if st:
        ks = sorted(st, key=float)
        for c in ks:
            v, lo, hi, n = _w(st[c].get("assistant"))
            rows.append({"measure": f"steer c={c}: answers identify as the assistant",
                         "paper": "− moves away from the Assistant identity, + toward it",
                         "value": v, "lo": lo, "hi": hi, "n": n,
                         "grader": "identity rule: " + fmt_agreement(lab.get("persona_identity"))
                         + "; rule vs LM judge on this run: "
                         + fmt_agreement(run.get("identity_steering"))})
    jb = r.get("jailbreaks")
    if jb:
        for m in ("default", "capped"):
            v, lo, hi, n = _w(jb[m]["harmful"])
            rows.append({"measure": f"persona-jailbreak harmful rate, {m}", "paper": "capping cut "
                         "harmful persona-jailbreak responses by ≈ 60%" if m == "capped" else "–",
                         "value": v, "lo": lo, "hi": hi, "n": n,
                         "grader": "jailbreak rule: " + fmt_agreement(lab.get("persona_jailbreak"))
                         + "; rule vs LM judge on this run: " + fmt_agreement(run.get("jailbreak"))})
        rows.append({"measure": "capping vs default, paired exact McNemar p", "paper": "–",
                     "value": jb.get("mcnemar", {}).get("p"), "n": jb.get("mcnemar", {}).get("n_pairs"),
                     "grader": "–"})
    for k, v in r.get("capability", {}).items():
        acc = v.get("accuracy")
        hw = v.get("half_width")
        rows.append({"measure": f"capability accuracy % ({k})", "paper": "no capability loss",
                     "value": acc, "lo": None if acc is None or hw is None else max(0.0, acc - hw),
                     "hi": None if acc is None or hw is None else min(100.0, acc + hw),
                     "n": v.get("n"),
                     "grader": "rule-lenient (evals)"})
    return rows


def introspection_rows(r: dict) -> list[dict]:
    from .graders import fmt_agreement, validate

    m = r.get("metrics", r)
    lab = {n: validate(n, "test")["rule"] for n in ("introspection_detection",
                                                      "introspection_identification",
                                                      "introspection_apology")}
    so = m.get("second_opinion") or {}
    rows = []
    d = m.get("detection")
    if d:
        best = max(d["cells"], key=lambda c: ((c["combined"]["rate"] or 0), c["tpr"]["rate"] or 0))
        tag = f"layer {best['layer']}, strength {best['strength']:g}"
        g_claim = "claims rule: " + fmt_agreement(lab["introspection_detection"]) + \
            "; rule vs LM judge on this run: " + fmt_agreement(so.get("claims"))
        for key, paper in (("tpr", "–"), ("combined", "≈ 20% at 0 FP (strongest models)")):
            v, lo, hi, n = _w(best[key])
            rows.append({"measure": f"detection {key} (best cell: {tag})", "paper": paper,
                         "value": v, "lo": lo, "hi": hi, "n": n, "grader": g_claim if key == "tpr"
                         else "identification rule: " + fmt_agreement(lab["introspection_identification"])})
        v, lo, hi, n = _w(d["control"]["fpr"])
        rows.append({"measure": "false-positive rate, all wordings pooled", "paper": "0% (0 FP)",
                     "value": v, "lo": lo, "hi": hi, "n": n, "grader": g_claim})
        for w, x in sorted(d["control"].get("fpr_by_wording", {}).items()):
            v, lo, hi, n = _w(x)
            rows.append({"measure": f"false-positive rate, trial wording {w}", "paper": "0%",
                         "value": v, "lo": lo, "hi": hi, "n": n, "grader": "as above"})
    p = m.get("prefill")
    if p:
        g_ap = "apology rule: " + fmt_agreement(lab["introspection_apology"]) + \
            "; rule vs LM judge on this run: " + fmt_agreement(so.get("apology"))
        for c in p["cells"]:
            for key, lab_ in (("apology_control", "no injection"), ("apology_injected",
                              "prefilled word's vector injected"), ("apology_unrelated",
                              "unrelated word's vector injected")):
                v, lo, hi, n = _w(c.get(key))
                rows.append({"measure": f"prefill apology rate, layer {c['layer']}, {lab_}",
                             "paper": "matched injection lowers apologies (peak past mid-depth)"
                             if key == "apology_injected" else "–", "value": v, "lo": lo,
                             "hi": hi, "n": n, "grader": g_ap})
            mc = c.get("mcnemar_matched_vs_unrelated")
            if mc:
                rows.append({"measure": f"prefill layer {c['layer']}: matched vs unrelated, "
                             "paired McNemar p", "paper": "–", "value": mc["p"], "n": mc["n_pairs"],
                             "grader": "–"})
    return rows


def _ci(d: Optional[dict], key: str = "mean"):
    """A bootstrap dict {key, ci: [lo, hi], n} -> (value, lo, hi, n)."""
    if not d:
        return None, None, None, None
    ci = d.get("ci") or [None, None]
    return d.get(key), ci[0], ci[1], d.get("n")


def onpolicy_rows(r: dict) -> list[dict]:
    rows = []
    g = r.get("gap", {})
    for cond, v in g.get("ratios", {}).items():
        val, lo, hi, n = _ci(v, "ratio")
        rows.append({"measure": f"off/on entropy ratio, {cond}", "paper": "3-4x in post-trained "
                     "models", "value": val, "lo": lo, "hi": hi, "n": f"{n} prompts",
                     "grader": "none (entropy, no grader)"})
    su = r.get("surprise")
    if su:
        bs = su["best_site"]
        rows.append({"measure": "surprise probe held-out R², best layer (split by token source)",
                     "paper": "a linear readout of s_t exists", "value": max(
                         x for x in su["r2_test"] if x is not None),
                     "n": f"{su['n_test']} test rows; s0 site {bs}",
                     "grader": "none"})
        be = (su.get("beyond_entropy") or {}).get(bs)
        if be:
            rows.append({"measure": "R² of entropy at t-1 alone (= expected surprisal)", "paper": "–",
                         "value": be["r2_prev_entropy"], "n": f"{su['n_test']} test rows",
                         "grader": "none"})
            rows.append({"measure": "partial R² the probe adds beyond entropy at t-1",
                         "paper": "(not reported; needed to separate surprise from entropy)",
                         "value": be["partial_r2"], "n": f"{su['n_test']} test rows",
                         "grader": "none"})
        st = su.get("steering", {})
        for kind, lab in (("probe", "raw probe direction"), ("orth", "probe ⟂ entropy readout"),
                          ("random", "variance-matched random")):
            if kind in st:
                sl = st[kind]["slope"]
                rows.append({"measure": f"steering slope dH/d(surprise), {lab}", "paper": "surprise "
                             "readout causally modulates next entropy",
                             "value": sl["nats_entropy_per_nat_surprise"], "lo": sl["ci"][0],
                             "hi": sl["ci"][1], "n": f"{st.get('n_texts')} texts", "grader": "none"})
    it = r.get("intent")
    if it:
        rows.append({"measure": f"topic entropy per prompt, bits (text topics: {it.get('method')})",
                     "paper": "post-trained models collapse topic uncertainty before output",
                     "value": it["topic_entropy_bits"], "lo": it["null_ci"][0], "hi": it["null_ci"][1],
                     "n": f"{it['n_prompts']} prompts x {it['samples']}", "grader": "interval = "
                     "permutation null's 95% range"})
        rows.append({"measure": "… permutation null: mean topic entropy, bits", "paper": "–",
                     "value": it["null_bits"], "n": f"{it['n_prompts']} prompts", "grader": "–"})
        rows.append({"measure": "… one-sided permutation p (entropy below the null)", "paper": "–",
                     "value": it["p_value"], "n": f"{it['n_prompts']} prompts", "grader": "–"})
        pf = it.get("prefill", {}).get("opening", {})
        for key, lab in (("topic_effect", "topic effect H(diff topic) − H(same topic, other prompt)"),
                         ("offpolicy_effect", "off-policy effect H(same topic, other prompt) − H(own)")):
            if key in pf:
                val, lo, hi, n = _ci(pf[key])
                rows.append({"measure": f"prefill opening: {lab}", "paper": "different-topic "
                             "prefill raises entropy", "value": val, "lo": lo, "hi": hi,
                             "n": f"{n} prompts", "grader": "none"})
    return rows


def binding_rows(r: dict) -> list[dict]:
    rows = []
    probes = {p["layer"]: p for p in r.get("probes", [])}
    if probes:
        best = max(probes.values(), key=lambda p: p["slots"]["prior"]["test"])
        for slot in ("current", "prior"):
            v = best["slots"][slot]
            rows.append({"measure": f"{slot}-entity probe held-out accuracy (layer {best['layer']})",
                         "paper": "two linear slots per token", "value": v["test"],
                         "n": f"{r.get('n_rows')} tokens", "grader": f"chance {v['chance']:.3f}; "
                         f"control task {v.get('control', float('nan')):.3f}"})
        geo = {g["layer"]: g for g in r.get("geometry", [])}
        g = geo.get(best["layer"], {}).get("entity")
        if g:
            b = g.get("bootstrap", {})
            ci = b.get("overlap_ci") or [None, None]
            rows.append({"measure": f"current/prior slot overlap, mean cos² (layer {best['layer']})",
                         "paper": "slots largely orthogonal", "value": g["overlap"], "lo": ci[0],
                         "hi": ci[1], "n": f"{r['config'].get('n_stories')} stories (bootstrap)",
                         "grader": "none"})
            rows.append({"measure": "… covariance-matched null overlap (permuted-label probes)",
                         "paper": "–", "value": g.get("null_overlap"),
                         "n": f"{r['config'].get('n_null')} probe pairs", "grader": "none"})
            rows.append({"measure": "… isotropic random-subspace overlap (the old, wrong null)",
                         "paper": "–", "value": g.get("isotropic_overlap"), "n": "20 draws",
                         "grader": "none"})
    abl = {a["layer"]: a for a in r.get("ablation_probes", [])}
    if abl and r.get("config", {}).get("ablate_positions") == "names":
        best = max(abl.values(), key=lambda a: a["slots"]["prior"]["test"])
        for slot in ("current", "prior"):
            v = best["slots"][slot]
            rows.append({"measure": f"{slot}-entity probe held-out accuracy at name tokens "
                         f"(layer {best['layer']})", "paper": "two linear slots per token",
                         "value": v["test"], "lo": v.get("lo"), "hi": v.get("hi"),
                         "n": f"{v['n_test']} name tokens", "grader": f"chance {v['chance']:.3f}"
                         f"; control task {v.get('control', float('nan')):.3f}"})
    chk = r.get("erasure_check") or []
    if chk:  # the LEACE erasure's validity: the prior probe on erased held-out name tokens
        e = max(chk, key=lambda x: x["probe_clean"])
        w = wilson(int(round(e["probe_erased"] * e["n_test"])), e["n_test"])
        rows.append({"measure": f"prior-entity probe on LEACE-erased held-out name tokens (layer "
                     f"{e['layer']})", "paper": "erasure check: at chance", "value":
                     e["probe_erased"], "lo": w["lo"], "hi": w["hi"], "n": f"{e['n_test']} name "
                     "tokens", "grader": f"chance {e['chance']:.3f}; clean {e['probe_clean']:.3f}"})
    for c, tasks in r.get("causal", {}).items():
        for t in ("induction", "conflict"):
            if t in tasks:
                v = tasks[t]
                rows.append({"measure": f"{t} accuracy, ablate {c}", "paper": "prior slot supports "
                             "induction and conflict", "value": v["acc"],
                             "lo": max(0.0, v["acc"] - 1.96 * v["sem"]),
                             "hi": min(1.0, v["acc"] + 1.96 * v["sem"]),
                             "n": v["n"], "grader": "answer-token log-probs (no grader)"})
    for c, tasks in r.get("contrasts", {}).items():
        for t in ("induction", "conflict"):
            v = tasks.get(t)
            if v and v.get("n"):
                rows.append({"measure": f"{t}: right-answer score, {c.replace('_', ' ')} "
                             "(paired, same prompts)", "paper": "ablating the prior slot hurts "
                             "induction and conflict", "value": v["mean"], "lo": v["lo"],
                             "hi": v["hi"], "n": v["n"], "grader": "answer-token log-probs "
                             "(no grader); Student-t interval"})
    b = r.get("binding", {})
    for k in ("binding/double", "binding/single"):
        if k in b:
            v = b[k]
            rows.append({"measure": f"{k} accuracy", "paper": "near chance on double bindings",
                         "value": v["acc"], "lo": max(0.0, v["acc"] - 1.96 * v["sem"]),
                         "hi": min(1.0, v["acc"] + 1.96 * v["sem"]), "n": v["n"],
                         "grader": "log-probs"})
    return rows


def emotions_rows(r: dict) -> list[dict]:
    rows = []
    c = r.get("classify")
    if c:
        v, lo, hi, n = _w(c["accuracy"])
        rows.append({"measure": "held-out story classification accuracy", "paper": "–",
                     "value": v, "lo": lo, "hi": hi, "n": n, "grader": f"chance {c['chance']:.3f}"})
    g = r.get("geometry")
    if g:
        for key, lab, paper in (("pc1_valence", "PC1 vs valence", "r ≈ 0.81 (human ratings)"),
                                ("pc2_arousal", "PC2 vs arousal", "PC2 ≈ arousal")):
            x = g.get(key)
            if x:
                rows.append({"measure": f"{lab}, Pearson r (AUTHOR ratings, not a published norm set)",
                             "paper": paper, "value": x["r"], "lo": x.get("lo"), "hi": x.get("hi"),
                             "n": f"{r.get('n_emotions')} emotions", "grader": "ratings written by "
                             "the project authors"})
    for ctx, t in (r.get("tracking_test") or {}).items():
        if isinstance(t, dict) and "macro_auc" in t:
            ci = t.get("auc_ci") or [None, None]
            rows.append({"measure": f"tracking: macro AUC for the operative emotion, held-out "
                         f"{ctx} passages" + (" (cross-context)" if ctx == "dialogue" else ""),
                         "paper": "vectors track the operative emotion", "value": t["macro_auc"],
                         "lo": ci[0], "hi": ci[1], "n": f"{t['n_passages']} passages, "
                         f"{t['n_emotions']} emotions", "grader": "labels written with the passages"})
            v, lo, hi, n = _w(t["top1"])
            rows.append({"measure": f"tracking: top-1 accuracy, {ctx} passages",
                         "paper": "–", "value": v, "lo": lo, "hi": hi, "n": n,
                         "grader": f"chance {t['chance']:.3f}"})
    for s in r.get("intensity", []):
        rows.append({"measure": f"intensity '{s['name']}': Spearman rho", "paper": "rises with dose",
                     "value": s["spearman_rho"], "n": len(s.get("projection", [])), "grader": "none"})
    p = r.get("preferences")
    if p:
        x = p["r_probe_vs_steering"]
        rows.append({"measure": "probe-preference r vs steering effect", "paper": "r ≈ 0.85",
                     "value": x["r"], "n": f"{len(p.get('steering', {}))} emotions",
                     "grader": "choice log-probs"})
    return rows


EXTRACT: dict[str, Callable[[dict], list[dict]]] = {"persona": persona_rows,
                                                     "introspection": introspection_rows,
                                                     "onpolicy": onpolicy_rows,
                                                     "binding": binding_rows,
                                                     "emotions": emotions_rows}
PAPERS = {"persona": "The Assistant axis (2026)",
          "introspection": "Emergent introspective awareness (2025) + mechanisms (2026)",
          "onpolicy": "On-policy recognition (2026)", "binding": "Multi-slot entity binding (2026)",
          "emotions": "Emotion concepts (2026)"}


# ---- running ----------------------------------------------------------------------------------

def _parse_sets(pairs: Sequence[str]) -> dict:
    out = {}
    for p in pairs:
        if "=" not in p:
            raise SystemExit(f"error: --set takes key=value; got {p!r}")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def run_protocol(name: str, lm, seed: int, quick: bool, over: dict, out: Path) -> None:
    """One run of protocol ``name`` with ``seed`` into ``out`` (its own run folder)."""
    import importlib

    mod = importlib.import_module(f"mindscope.experiments.{name}")
    kw = {**over, "seed": seed}
    cfg = mod.Config.quick(**kw) if quick and hasattr(mod.Config, "quick") else mod.Config(**kw)
    mod.run(lm, cfg, out)


def aggregate(name: str, out: Path, model: str = "") -> dict:
    """Read OUT/seed*/results.json, extract the headline rows per seed, combine across seeds."""
    seeds = sorted((p for p in out.glob("seed*") if (p / "results.json").exists()),
                   key=lambda p: int(p.name[4:]))
    if not seeds:
        raise SystemExit(f"error: no finished seed runs under {out} (expected {out}/seed0/results.json)")
    per = {}
    weights = None
    for p in seeds:
        r = json.loads((p / "results.json").read_text())
        rc = json.loads((p / "run_config.json").read_text()) if (p / "run_config.json").exists() else {}
        m = rc.get("model") if isinstance(rc.get("model"), dict) else {"name": rc.get("model")}
        weights = weights or m.get("weights") or rc.get("weights")
        model = model or m.get("name") or ""
        for row in EXTRACT[name](r):
            per.setdefault(row["measure"], []).append((int(p.name[4:]), row))
    rows = []
    for measure, lst in per.items():
        vals = [_num(row.get("value")) for _, row in lst]
        sp = seed_spread([v for v in vals if v is not None])
        first = lst[0][1]
        rows.append({"measure": measure, "paper": first.get("paper", "–"), "seeds": [s for s, _ in lst],
                     "per_seed": [{"seed": s, "value": row.get("value"), "lo": row.get("lo"),
                                   "hi": row.get("hi"), "n": row.get("n")} for s, row in lst],
                     "spread": sp, "n": first.get("n"), "grader": first.get("grader", "–")})
    head = {"protocol": name, "paper": PAPERS.get(name, ""), "model": model, "weights": weights,
            "seeds": [int(p.name[4:]) for p in seeds], "rows": rows}
    write_json(out / "headline.json", head)
    write_text(out / "headline.md", table_md(head) + "\n")
    return head


def _f(x) -> str:
    if x is None:
        return "–"
    x = float(x)
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def table_md(head: dict) -> str:
    lines = [f"Model: {head['model']} ({head['weights'] or 'weights as loaded'}); seeds "
             f"{head['seeds']}.", "",
             "| measure | paper | this project (model, n, seeds, interval) | grader agreement |",
             "|---|---|---|---|"]
    for r in head["rows"]:
        sp = r["spread"]
        per = "; ".join(f"s{p['seed']}: {_f(p['value'])}" + (f" [{_f(p['lo'])}, {_f(p['hi'])}]"
                                                             if p.get("lo") is not None else "")
                        for p in r["per_seed"])
        k = sp["n_seeds"]
        spread = f"sd {_f(sp['sd'])}; " if k > 1 else ""
        this = (f"{head.get('model') or 'model'}, n={r['n']}, {k} seed{'s' if k != 1 else ''}: "
                f"{'mean ' if k > 1 else ''}{_f(sp['mean'])} ({spread}{per})") if k else "–"
        cells = [str(c).replace("|", "\\|") for c in (r["measure"], r["paper"], this, r["grader"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mindscope.experiments.seeds",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("protocol", choices=sorted(EXTRACT))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="start from Config.quick()")
    ap.add_argument("--set", dest="sets", action="append", default=[],
                    help="a Config field as key=value (JSON value), repeatable")
    ap.add_argument("-m", "--model", default="smollm2-135m-instruct")
    ap.add_argument("-o", "--out", required=True)
    ap.add_argument("--table-only", action="store_true", help="only rebuild headline.md")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = Path(a.out)
    if not a.table_only:
        import mindscope as ms

        lm = ms.load(a.model)
        log.info("model %s (%s)", lm.name, weights_note(lm))
        over = _parse_sets(a.sets)
        for s in a.seeds:
            if finished(out / f"seed{s}"):  # a partial results.json is resumed, not skipped
                log.info("seed %d already done; skipped", s)
                continue
            t0 = time.time()
            run_protocol(a.protocol, lm, s, a.quick, over, out / f"seed{s}")
            log.info("seed %d done in %.0fs", s, time.time() - t0)
    head = aggregate(a.protocol, out)
    print(table_md(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
