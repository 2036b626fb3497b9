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

from ._common import seed_spread, weights_note, write_json, write_text

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
    n_roles = r.get("n_roles")
    if sp:
        rows.append({"measure": f"|cos(PC1, Assistant axis)| at layer {L}", "paper": "PC1 aligns "
                     "with the axis (cos ≈ 0.7-0.9 at middle layers)", "value": sp["cos_pc1_axis"][L],
                     "n": f"{n_roles} roles", "grader": "role filter (rule role score = 3): "
                     + fmt_agreement(lab.get("persona_role")) + "; rule vs LM judge on this run: "
                     + fmt_agreement(run.get("role_score"))})
        rows.append({"measure": f"PC1 explained variance at layer {L}", "paper": "PC1 dominant "
                     "(low-dimensional persona space)", "value": sp["explained_variance_ratio"][L][0],
                     "n": f"{n_roles} roles", "grader": "as above"})
    st = r.get("steering", {}).get("by_strength", {})
    if st:
        ks = sorted(st, key=float)
        for c in (ks[0], ks[-1]):
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
                     "value": acc, "lo": None if acc is None or hw is None else acc - hw,
                     "hi": None if acc is None or hw is None else acc + hw, "n": v.get("n"),
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


EXTRACT: dict[str, Callable[[dict], list[dict]]] = {"persona": persona_rows,
                                                     "introspection": introspection_rows}
PAPERS = {"persona": "The Assistant axis (2026)",
          "introspection": "Emergent introspective awareness (2025) + mechanisms (2026)"}


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
    if name == "binding":
        res = mod.run(cfg, lm=lm)
        res.report(out)
    else:
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
        weights = weights or (rc.get("model") or {}).get("weights")
        model = model or (rc.get("model") or {}).get("name", "")
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
        this = (f"SmolLM2-135M, n={r['n']}, {sp['n_seeds']} seeds: mean {_f(sp['mean'])} "
                f"(sd {_f(sp['sd'])}; {per})") if sp["n_seeds"] else "–"
        lines.append(f"| {r['measure']} | {r['paper']} | {this} | {r['grader']} |")
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
            if (out / f"seed{s}" / "results.json").exists():
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
