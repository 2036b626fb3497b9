"""``report.html`` of a demo study: one self-contained page (plots embedded) that links into
the static feature browser (``browser/``) and the experiments' own reports."""
from __future__ import annotations

import os
from pathlib import Path

from ..report import Page, esc, fmt, link, png, table, tokens


def _rel(path, root: Path) -> str:
    return os.path.relpath(Path(path), root).replace(os.sep, "/")


def _img(path, alt: str, width: int = None) -> str:
    p = Path(path)
    return png(p, alt, width) if p.exists() else f'<p class="note">({esc(alt)}: no plot)</p>'


def _num(x, digits: int = 3):
    return None if x is None else round(float(x), digits)


def _headline(step: str, r: dict) -> str:
    if step == "harvest":
        return f"{r['tokens']:,} tokens at {r['site']} ({r.get('tokens_per_s') or 0:,.0f} tok/s)"
    if step == "sae":
        return f"{r['tokens']:,} training tokens ({r.get('tokens_per_s') or 0:,.0f} tok/s)"
    if step == "evaluate":
        return (f"FVU {r['fvu']:.3f}, L0 {r['l0']:.1f}, dead {100 * r['dead_fraction']:.1f}%, "
                f"CE +{r['ce_increase']:.3f} nats")
    if step == "features":
        return (f"{r['live']:,}/{r['n_latents']:,} latents live; mean detection AUC "
                f"{fmt(r.get('mean_detection_auc'), 3)} over {len(r['explained'])} explained")
    if step == "steering":
        f, c = r["feature"], r["concept"]
        return (f"latent {f['latent']}: mean act {f['mean_act_unsteered_text']:.3f} -> "
                f"{f['mean_act_steered_text']:.3f}; '{c['word']}' mentioned "
                f"{c['mentions_unsteered']}/{c['n']} -> {c['mentions_steered']}/{c['n']}")
    if step == "introspection":
        s = r.get("summary", {})
        best = s.get("detection_best") or {}
        tpr = (best.get("tpr") or {}).get("rate")
        fpr = (s.get("fpr") or {}).get("rate")
        return f"best detection TPR {fmt(tpr, 3)}, FPR {fmt(fpr, 3)}"
    if step == "entropy_gap":
        rat = r.get("ratios") or {}
        return "; ".join(f"off/on {k} {fmt((v or {}).get('ratio'), 3)}" for k, v in rat.items())
    if step == "controls":
        c = r.get("controls") or {}
        ran = [v for v in c.values() if v.get("source")]
        return (f"{sum(v['passed'] for v in ran)} of {len(ran)} positive controls passed "
                f"({len(c) - len(ran)} of {len(c)} registered not run yet)")
    return ""


def _ci(d: dict) -> str:
    def n(x):
        return "–" if x is None else fmt(x, 3)
    return f"{n(d.get('value'))} [{n(d.get('lo'))}, {n(d.get('hi'))}]"


def _seeds(rows: list) -> str:
    return "; ".join(f"s{d.get('seed')}: {_ci(d)}" for d in rows) or "–"


def _controls_section(p, results: dict, out: Path, model: str) -> None:
    """Each registered positive control beside the real result (the demo's own, where the
    protocol is a demo step, and the untouched model's in the control)."""
    from ._study import demo_protocols

    c = (results.get("controls") or {}).get("controls")
    if c is None:
        return
    steps = demo_protocols()
    rows, parts = [], []
    for name, v in c.items():
        demo_res = results.get(steps.get(name, ""), None)
        real = _headline(steps[name], demo_res) if demo_res else "(not a demo step)"
        if not v.get("source"):
            rows.append({"protocol": esc(name), "this demo (real model)": esc(real),
                         "untouched model in the control": "–", "planted effect": "–",
                         "control": "not run yet", "source": f"<code>{esc(v['command'])}</code>"})
            continue
        k = sum(d.get("detected", False) for d in v["planted"])
        other = f" (control on {esc(v['model'])})" if v.get("model") != model else ""
        md = Path(v["source"]) / "control.md"
        src = link(_rel(md, out), _rel(md, out)) if md.exists() else esc(v["source"])
        rows.append({"protocol": esc(name), "this demo (real model)": esc(real),
                     "untouched model in the control": esc(_seeds(v["untouched"])),
                     "planted effect": f"{esc(v.get('effect') or '')} x{v['full_strength']:g}: "
                                       f"{esc(_seeds(v['planted']))}",
                     "control": f"<b>{'PASSED' if v['passed'] else 'FAILED'}</b> (planted "
                                f"detected in {k}/{len(v['planted'])} seeds){other}",
                     "source": src + (" (run by this demo)" if v.get("ran_here") else "")})
        parts.append(f"<h3>{esc(name)}: {esc(v.get('measure') or '')} (no effect = "
                     f"{fmt(v.get('null'), 3)})</h3>" + _img(v["png"], f"{name} control", 480)
                     + f"<pre>{esc(v.get('markdown', ''))}</pre>")
    p.section("8. Positive controls: the pipeline sees a planted effect",
              "<p>A null result means something only if the same pipeline detects an effect of "
              "known size. For each protocol with a registered control, an effect was planted in "
              "the model (a trained bias, a LoRA or a direction) and the protocol run unchanged "
              "on the planted and on the untouched model; it passes when the planted effect's "
              "interval excludes no effect at full strength in every seed and the untouched "
              "model's does not in any seed.</p>",
              table(rows, ["protocol", "this demo (real model)", "untouched model in the control",
                           "planted effect", "control", "source"],
                    raw=("protocol", "this demo (real model)", "untouched model in the control",
                         "planted effect", "control", "source")), *parts)


def _pages_note(f: dict) -> str:
    n = f.get("browser_pages")  # absent in studies run before the browser was cut down
    if n is None or n >= f["n_latents"]:
        return ""
    return (f" (pages for {n:,} latents: the explained ones, their decoder neighbours and the "
            "most frequent)")


def build_report(out, results: dict, cfg, model: str) -> Path:
    from ..features import FeatureSet

    out = Path(out)
    total = sum(r.get("seconds", 0) for r in results.values())
    p = Page(f"mindscope study of {model}",
             subtitle=f"{len(results)} steps, {total / 60:.1f} min of compute (summed over "
                      f"resumed runs). Every number below was measured in this run.")
    p.section("Summary", table([{"step": s, "seconds": round(r.get("seconds", 0), 1),
                                 "result": _headline(s, r)} for s, r in results.items()
                                if s != "report"]))
    h = results.get("harvest")
    if h:
        p.section("1. Activations", f"<p>{h['tokens']:,} tokens of the default corpus (stdlib "
                  f"prose, code and chat; BOS and special tokens dropped) at "
                  f"<code>{esc(h['site'])}</code>, d = {h['d_model']}, stored in "
                  f"<code>{esc(_rel(h['path'], out))}</code>.</p>")
    s = results.get("sae")
    if s:
        p.section("2. Sparse autoencoder (TopK)",
                  f"<p>{cfg.n_latents:,} latents, k = {cfg.k}, {s['steps']} steps of "
                  f"{cfg.batch_size} tokens ({s['tokens']:,} tokens); saved in "
                  f"<code>{esc(_rel(s['path'], out))}</code>.</p>",
                  _img(s["training_png"], "training curves", 900))
    e = results.get("evaluate")
    if e:
        rows = [{"metric": k, "value": _num(e.get(k), 4)} for k in
                ("fvu", "explained_variance", "l0", "dead_fraction", "cosine", "ce_clean",
                 "ce_spliced", "ce_increase", "kl", "ce_zero_ablation", "ce_recovered")]
        p.section("3. Evaluation on held-out data",
                  f"<p>Reconstruction metrics over {e['rows']:,} held-out rows (documents the SAE "
                  f"never saw); CE / KL with the SAE spliced in (error term dropped) over "
                  f"{e['tokens']:,} tokens of {e['ce_texts']} documents past the harvested "
                  "prefix.</p>", table(rows), _img(e["density_png"], "feature density", 480))
    f = results.get("features")
    if f:
        bdir = Path(f["browser_index"]).parent
        frows = [{"latent": link(_rel(bdir / f"feature-{r['latent']}.html", out), r["latent"]),
                  "density": _num(r["density"], 5), "max act": _num(r["max_act"]),
                  "explanation": r["explanation"], "detection AUC": _num(r.get("auc"))}
                 for r in f["table"]]
        ex_html = []
        try:
            fs = FeatureSet(f["features_dir"])
            for r in f["table"][:3]:
                feat = fs.feature(int(r["latent"]), n_examples=3)
                ex_html.append(f"<h3>latent {r['latent']}: {esc(r['explanation'])}</h3>")
                for x in feat.get("top", [])[:3]:
                    ex_html.append(tokens(x["token_strs"], x["acts"], center=x.get("center")))
        except Exception as err:  # noqa: BLE001 - examples are a nicety; say why they're missing
            ex_html.append(f'<p class="warn">examples unavailable: {esc(err)}</p>')
        p.section("4. Features",
                  f"<p>{f['live']:,} of {f['n_latents']:,} latents fired. The {len(f['table'])} "
                  f"most frequent (density ≤ 5%) were explained by the <b>{esc(cfg.judge)}</b> "
                  "judge and scored by detection (AUC of the judge telling activating from "
                  "non-activating examples; 0.5 = chance). "
                  f"Static browser: {link(_rel(f['browser_index'], out), 'browser/index.html')}"
                  f"{_pages_note(f)}; live browser with every latent, text and steering pages: "
                  f"<code>mindscope serve {esc(_rel(Path(f['features_dir']).parent, out))}"
                  f" --model {esc(cfg.model)}</code> (run inside <code>{esc(str(out))}</code>) "
                  "then open http://127.0.0.1:8765/.</p>",
                  table(frows, raw=("latent",)), *ex_html)
    st = results.get("steering")
    if st:
        ft, c = st["feature"], st["concept"]
        page = Path(f["browser_index"]).parent / f"feature-{ft['latent']}.html" if f else None
        name = (link(_rel(page, out), ft["latent"]) if page is not None and page.exists()
                else esc(ft["latent"]))
        p.section("5. Steering",
                  f"<p><b>SAE feature</b> {name} (“{esc(ft['explanation'])}”, detection "
                  f"AUC {fmt(ft['detection_auc'], 3)}) clamped to {ft['clamp_value']:.2f} "
                  f"({cfg.feature_multiple}× its max activation) at every position, error term "
                  f"kept. Its mean activation read back on the generated text: "
                  f"{ft['mean_act_unsteered_text']:.3f} unsteered vs "
                  f"{ft['mean_act_steered_text']:.3f} steered.</p>"
                  f"<p><b>Concept vector</b> ‘{esc(c['word'])}’ added at relative strength "
                  f"{c['relative_strength']} (fraction of the mean residual norm): responses "
                  f"mentioning it {c['mentions_unsteered']}/{c['n']} unsteered vs "
                  f"{c['mentions_steered']}/{c['n']} steered (greedy decoding).</p>",
                  table(st["texts"], ["prompt", "unsteered", "feature", "concept"]))
    for key, title in (("introspection", "6. Introspection: concept injection with controls"),
                       ("entropy_gap", "7. On-policy recognition: the entropy gap")):
        r = results.get(key)
        if not r:
            continue
        if key == "introspection":
            sm = r.get("summary", {})
            best = sm.get("detection_best") or {}
            rows = [{"measure": k, "value": fmt((best.get(k) or {}).get("rate")
                                                if isinstance(best.get(k), dict) else best.get(k), 3)}
                    for k in ("layer", "strength", "tpr", "combined", "identification")]
            rows.append({"measure": "false-positive rate (no injection)",
                         "value": fmt((sm.get("fpr") or {}).get("rate"), 3)})
            body = table(rows)
        else:
            rows = [{"condition": k, **({"ratio": _num(v.get("ratio")), "lo": _num(v.get("lo")),
                                          "hi": _num(v.get("hi"))} if isinstance(v, dict) else
                                        {"ratio": _num(v)})}
                    for k, v in (r.get("ratios") or {}).items()]
            body = table(rows)
        p.section(title, body, f"<p>Full report with transcripts and CIs: "
                  f"{link(_rel(r['report'], out), _rel(r['report'], out))}.</p>")
    _controls_section(p, results, out, model)
    p.section("Reproduce", f"<pre>mindscope demo --model {esc(cfg.model)} --out {esc(str(out))}"
              f"{' --quick' if cfg.n_tokens < 50_000 else ''}</pre><p class=\"note\">Settings in "
              "demo.json; per-step results in steps/*.json; rerunning resumes.</p>")
    return p.save(out / "report.html")
