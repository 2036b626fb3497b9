"""The demo's steps. Each takes the Context and returns a JSON-able summary; big outputs stay in
the step's folder (``ctx.state.dir(step)``). Later steps read earlier steps' folders, so a
resumed study needs no state in memory."""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..runs import write_json

log = logging.getLogger(__name__)


@dataclass
class Context:
    state: object
    cfg: object
    lm: object = None

    def model(self):
        if self.lm is None:
            import mindscope as ms
            self.lm = ms.load(self.cfg.model)
        return self.lm

    @property
    def site(self) -> str:
        lm = self.model()
        layer = self.cfg.layer if self.cfg.layer is not None else lm.n_layers // 2
        if not 0 <= layer < lm.n_layers:
            raise ValueError(f"DemoConfig.layer={layer} is out of range for {lm.name} "
                             f"({lm.n_layers} blocks: 0..{lm.n_layers - 1})")
        return f"resid_post.{layer}"

    @property
    def store_dir(self) -> Path:
        return self.state.out / "harvest"

    @property
    def sae_dir(self) -> Path:
        return self.state.out / "sae" / "topk"

    def sae(self):
        from ..sae import SAE
        return SAE.load(self.sae_dir)

    def store(self):
        from ..activations import ActivationStore
        return ActivationStore.open(self.store_dir)


# ---- 1. harvest ----------------------------------------------------------------------------

def step_harvest(ctx: Context) -> dict:
    from ..activations import harvest

    lm = ctx.model()
    t = time.perf_counter()
    store = harvest(lm, ctx.state.dir("harvest"), sites=ctx.site, corpus="default",
                    n_tokens=ctx.cfg.n_tokens)
    dt = time.perf_counter() - t
    st = store.stats(ctx.site) if hasattr(store, "stats") else {}
    return {"site": ctx.site, "tokens": store.n_tokens, "d_model": store.d_model,
            "tokens_per_s": store.n_tokens / dt if dt else None,
            "mean_norm": st.get("mean_norm"), "path": str(ctx.store_dir)}


# ---- 2. SAE training -----------------------------------------------------------------------

def step_sae(ctx: Context) -> dict:
    from ..sae import SAEConfig, StoreBatches, TrainConfig, Trainer

    lm, cfg = ctx.model(), ctx.cfg
    steps = max(1, cfg.train_tokens // cfg.batch_size)
    scfg = SAEConfig("topk", d_in=lm.d_model, n_latents=cfg.n_latents, k=cfg.k, model=lm.name,
                     site=ctx.site, excluded_rows="positions 0-1 and special tokens (store)")
    tcfg = TrainConfig(steps=steps, name="topk", seed=cfg.seed)
    out = ctx.state.dir("sae")
    t = time.perf_counter()
    tr = Trainer([(scfg, tcfg)], out_dir=out, checkpoint_every=max(10, steps // 10))
    [sae] = tr.fit(StoreBatches.open(ctx.store_dir, cfg.batch_size, seed=cfg.seed))
    dt = time.perf_counter() - t
    hist = tr.slots[0].history
    last = hist[-1] if hist else {}
    return {"steps": steps, "tokens": tr.tokens, "tokens_per_s": tr.tokens / dt if dt else None,
            "train_fvu_last": last.get("fvu"), "train_l0_last": last.get("l0"),
            "n_latents": cfg.n_latents, "k": cfg.k, "path": str(ctx.sae_dir),
            "training_png": str(ctx.sae_dir / "training.png")}


# ---- 3. evaluation -------------------------------------------------------------------------

def heldout_texts(n: int, skip_tokens: int, max_chars: int = 600) -> list[str]:
    """``n`` plain-text documents of the default corpus past its first ~``skip_tokens`` tokens
    (the harvested prefix, at ~4 characters per token), cut to ``max_chars``."""
    from ..activations import open_corpus

    out, chars = [], 0
    for doc in open_corpus("default"):
        text = doc.text
        if text is None:  # chat documents: rendered later with the template; skip them here
            continue
        chars += len(text)
        if chars < skip_tokens * 4 or len(text.strip()) < 200:
            continue
        out.append(text[:max_chars])
        if len(out) >= n:
            break
    if len(out) < n:
        raise ValueError(f"the default corpus has fewer than {n} documents past the first "
                         f"{skip_tokens} tokens; lower ce_texts or n_tokens")
    return out


def step_evaluate(ctx: Context) -> dict:
    from ..sae import evaluate, model_metrics, plot_density

    lm, sae, store = ctx.model(), ctx.sae(), ctx.store()
    d = ctx.state.dir("evaluate")
    m = evaluate(sae, store.reader(4096, site=ctx.site, shuffle=False, split="heldout"))
    plot_density(m, d / "density.png", title=f"{ctx.site} TopK k={ctx.cfg.k}")
    texts = heldout_texts(ctx.cfg.ce_texts, ctx.cfg.n_tokens)
    mm = model_metrics(lm, sae, texts, batch_size=4)
    res = {"fvu": m["fvu"], "explained_variance": m["explained_variance"], "l0": m["l0"],
           "dead_fraction": m["dead_fraction"], "cosine": m["cosine"], "rows": m["rows"],
           "excluded_rows": m["excluded_rows"], **mm, "ce_texts": len(texts),
           "tokens": mm["predicted_tokens"],  # the report's name for it
           "density_png": str(d / "density.png")}
    from safetensors.torch import save_file
    save_file({"density": m["density"].contiguous()}, str(d / "density.safetensors"))
    res["registered"] = _register(ctx, m)
    return res


def _register(ctx: Context, m: dict):
    """Name the demo's SAE in the local registry (``MODEL/SITE/topk-N``; ``mindscope sae
    list``), so ``--sae smollm2-135m-instruct/resid_post.15/topk-4608`` finds it."""
    from ..sae import register

    try:
        return register(ctx.sae_dir, release="mindscope-demo",
                        metrics={"fvu": m["fvu"], "l0": m["l0"], "dead_fraction": m["dead_fraction"]})
    except (OSError, ValueError) as e:  # a read-only cache must not fail the study
        log.warning("could not register the demo SAE: %s", e)
        return None


# ---- 4. features ---------------------------------------------------------------------------

def step_features(ctx: Context) -> dict:
    from ..features import analyze, explain, score
    from ..report import export_html

    lm, cfg = ctx.model(), ctx.cfg
    fs = analyze(ctx.sae_dir, ctx.store_dir, lm=lm)
    top = fs.query("select latent from features where density > 0 and density <= 0.05 "
                   "order by density desc limit ?", [cfg.n_explain])
    latents = [r["latent"] for r in top]
    judge_kw = {"lm": lm} if cfg.judge == "lm" else {}
    explain(fs, judge=cfg.judge, latents=latents, **judge_kw)
    score(fs, judge=cfg.judge, latents=latents, scorers=("detection",), **judge_kw)
    rows = fs.query(
        "select f.latent, f.density, f.max_act, e.explanation, s.auc, s.accuracy "
        "from features f join explanations e using (latent) "
        "left join scores s on s.latent = f.latent and s.scorer = 'detection' "
        "order by f.density desc")
    rows = [r for r in rows if r["latent"] in set(latents)]
    pages = browser_latents(fs, latents)
    browser = export_html(ctx.sae_dir, ctx.state.out / "browser", latents=pages, progress=True)
    n_live = fs.query("select count(*) as n from features where count > 0")[0]["n"]
    aucs = [r["auc"] for r in rows if r.get("auc") is not None]
    return {"n_latents": fs.n_latents, "live": n_live, "explained": latents,
            "table": rows, "mean_detection_auc": sum(aucs) / len(aucs) if aucs else None,
            "browser_index": str(browser), "browser_pages": len(pages),
            "features_dir": str(ctx.sae_dir / "features")}


BROWSER_TOP = 256  # static pages for the most frequent latents, besides the explained ones


def browser_latents(fs, explained: list, top: int = BROWSER_TOP) -> list[int]:
    """The latents the demo's static browser gets pages for: the explained (and scored) ones -
    report.html links them, and the steering step clamps one of them - their decoder
    neighbours, and the ``top`` most frequent live latents. Every latent stays in the live
    browser (`mindscope serve`); a page for each of thousands of latents took minutes."""
    ids = sorted({int(i) for i in explained})
    keep = set(ids)
    if ids:
        keep |= {int(r["neighbour"]) for r in fs.query(
            f"select neighbour from neighbours where latent in ({','.join(map(str, ids))})")}
    keep |= {int(r["latent"]) for r in fs.query(
        "select latent from features where count > 0 order by density desc, latent limit ?",
        [int(top)])}
    return sorted(keep)


# ---- 5. steering ---------------------------------------------------------------------------

def _pick_feature(ctx: Context) -> dict:
    """The explained latent with the best detection AUC (ties: the denser one)."""
    rows = ctx.state.done("features")["table"]
    ok = [r for r in rows if r.get("auc") is not None] or rows
    return max(ok, key=lambda r: ((r.get("auc") or 0.0), r["density"]))


def step_steering(ctx: Context) -> dict:
    import mindscope as ms
    from ..steering import DEFAULT_PROMPTS, concept_vector, mentions, sae_clamp, steer

    lm, cfg, sae = ctx.model(), ctx.cfg, ctx.sae()
    d = ctx.state.dir("steering")
    prompts = list(DEFAULT_PROMPTS[:cfg.steer_prompts])
    gen = dict(max_new_tokens=cfg.steer_tokens, chat=True, temperature=0.0)
    base = [g.text for g in lm.generate(prompts, **gen)]

    # (a) an SAE feature clamped at multiple x its max activation (Scaling Monosemanticity)
    feat = _pick_feature(ctx)
    i = int(feat["latent"])
    iv = sae_clamp(ctx.site, sae, i, value=cfg.feature_multiple * float(feat["max_act"]))
    steered_f = [g.text for g in lm.generate(prompts, interventions=[iv], **gen)]

    def feat_act(texts: list[str]) -> float:
        """Mean activation of latent i over the tokens of ``texts`` (a read-out, no steering)."""
        texts = [t if t.strip() else "." for t in texts]
        cap = lm.capture(texts, sites=[ctx.site], positions="all", dtype=torch.float32)
        h = cap[ctx.site][cap.pos >= 1]
        with torch.no_grad():
            return float(sae.encode(h)[:, i].mean())

    act_base, act_steer = feat_act(base), feat_act(steered_f)

    # (b) a concept vector (word minus baseline words at the last token), relative strength
    v = concept_vector(lm, cfg.concept, ctx.site)
    v.save(d / f"{cfg.concept}.safetensors")
    steered_c = [g.text for g in lm.generate(
        prompts, interventions=steer(lm, v, scale=cfg.concept_strength, relative=True), **gen)]
    m_base = sum(mentions(t, cfg.concept) for t in base)
    m_steer = sum(mentions(t, cfg.concept) for t in steered_c)
    rows = [{"prompt": p, "unsteered": b, "feature": f, "concept": c}
            for p, b, f, c in zip(prompts, base, steered_f, steered_c)]
    write_json(d / "texts.json", rows)
    return {"feature": {"latent": i, "explanation": feat.get("explanation"),
                        "detection_auc": feat.get("auc"), "clamp_value":
                        cfg.feature_multiple * float(feat["max_act"]),
                        "mean_act_unsteered_text": act_base, "mean_act_steered_text": act_steer},
            "concept": {"word": cfg.concept, "relative_strength": cfg.concept_strength,
                        "mentions_unsteered": m_base, "mentions_steered": m_steer,
                        "n": len(prompts)},
            "texts": rows}


# ---- 6-7. experiments ----------------------------------------------------------------------

def step_introspection(ctx: Context) -> dict:
    from ..experiments import introspection as intro

    over = dict(ctx.cfg.introspection)
    if "layers" in over:
        over["layers"] = tuple(over["layers"])
    if "strengths" in over:
        over["strengths"] = tuple(over["strengths"])
    if "protocols" in over:
        over["protocols"] = tuple(over["protocols"])
    icfg = intro.Config.quick(**over)
    d = ctx.state.dir("introspection")
    res = intro.run(ctx.model(), icfg, d)
    res.report()
    return {"summary": res.summary(), "report": str(d / "report.html"),
            "config": dataclasses.asdict(icfg)}


def step_entropy_gap(ctx: Context) -> dict:
    from ..experiments import onpolicy

    ocfg = onpolicy.Config.quick(**ctx.cfg.entropy_gap)
    d = ctx.state.dir("entropy_gap")
    res = onpolicy.run_entropy_gap(ctx.model(), ocfg, d)
    res.report()
    gap = res.gap
    return {"conditions": gap.get("conditions"), "ratios": gap.get("ratios"),
            "auc_entropy": gap.get("auc_entropy"), "report": str(d / "report.html"),
            "n_prompts": ocfg.n_prompts}


# ---- 8. positive controls ------------------------------------------------------------------

def control_command(name: str) -> str:
    """The command that runs protocol ``name``'s positive control into the default folder."""
    return (f"python -m mindscope.experiments.positive_control {name} --quick --seeds 0 1 2 "
            f"-o runs/controls/{name}")


def _control_summary(d: Path, ran_here: bool) -> dict:
    """What the report shows of a finished control folder (its control.json, control.md)."""
    r = json.loads((d / "control.json").read_text(encoding="utf-8"))
    full = f"{r['full_strength']:g}"
    return {"source": str(d), "ran_here": ran_here, "model": r.get("model"),
            "passed": bool(r.get("passed")), "seeds": r.get("seeds"), "null": r.get("null"),
            "measure": (r.get("untouched") or [{}])[0].get("measure"),
            "untouched": r.get("untouched", []), "planted": r.get("planted", {}).get(full, []),
            "full_strength": r["full_strength"], "mde_strength": r.get("mde_strength"),
            "effect": (r.get("effects", {}).get(full) or {}).get("summary")
            or (r.get("effects", {}).get(full) or {}).get("kind"),
            "minutes": r.get("minutes"), "markdown": (d / "control.md").read_text(encoding="utf-8")
            if (d / "control.md").exists() else "", "png": str(d / "control.png")}


def step_controls(ctx: Context) -> dict:
    """Each registered positive control: read from ``controls_dir/<protocol>/`` (or this study's
    ``controls/<protocol>/``) where it has run, else run here for ``cfg.run_controls`` (quick
    config, this seed), else listed with the command that runs it."""
    from ..experiments import protocols, run_control
    from ._study import registered_controls

    cfg, out = ctx.cfg, {}
    for name in registered_controls():
        here = ctx.state.out / "controls" / name
        found = next((d for d in (Path(cfg.controls_dir) / name, here)
                      if (d / "control.json").exists()), None)
        if found is None and name in cfg.run_controls:
            t = time.perf_counter()
            run_control(name, ctx.model(), protocols()[name].config.quick(), here,
                        seeds=(cfg.seed,))
            log.info("demo: %s control ran in %.0f s", name, time.perf_counter() - t)
            found = here
        out[name] = (_control_summary(found, found == here) if found is not None else
                     {"source": None, "command": control_command(name)})
    return {"controls": out}


# ---- 9. report -----------------------------------------------------------------------------

def step_report(ctx: Context) -> dict:
    from ._report import build_report

    path = build_report(ctx.state.out, ctx.state.results(), ctx.cfg, ctx.model().name)
    return {"report": str(path)}

