"""Introspection positive control, identification half: a LoRA that *names* the injected concept.

The registered control (``detector.py``) plants a LoRA that claims an injected thought; it never
names it, so the protocol's identification (P(correct | claim)) and combined (P(claim and
correct | injected)) measures were never shown able to see an effect. This plant is the same
LoRA (``DetectorLoRA``, same modules, same injection, same training loop) trained on the training
concepts to answer injected trials "Yes, I detect an injected thought. It is about <concept>."
(the training concept's own word) and control trials "No, I do not detect an injected
thought."; the detection protocol then runs **unchanged** on the **held-out** concepts (disjoint
by concept word, recorded in ``effect``). Naming a held-out concept can only come from the
injected vector itself, which already points at its word (``lens_check``: the logit lens of
the protocol's concept vectors).

Measures, fixed before any run (docs/experiments/introspection.md):

* ``detect_naming`` (the control's verdict, the convention of ``run_control``): combined rate on
  injected trials minus the same on control trials (a claim naming the trial's label concept:
  the rate a reply that carries no information about the injection reaches), Newcombe's
  interval, predicted above 0 (``direction=+1``);
* strict: the planted model's combined rate minus the **untouched** model's "names concept"
  rate under the same injection and seed (the steering-level naming a plant must beat; it
  counts a mention with or without a claim), Newcombe, above 0 in every seed;
* reported beside them: the detection verdict (``detect_detection``, TPR - FPR) on the same
  runs, and identification P(correct | claim) with its Wilson interval against chance
  (1 / number of held-out concepts).

    python -m mindscope.experiments.introspection.naming --plant narrow --quick --seeds 0 1 2 \\
        --strengths 0.5 1 --set n_concepts=20 --set n_controls=20 --set max_new_tokens=16 \\
        -o runs/controls/introspection-naming

Measured on SmolLM2-135M (docs/experiments/introspection.md): FAILED with both plants (25
training concepts: combined 1/60 at x1, it names the nearest training concept; 103 training
words, ``--plant wide``: 6/60), untouched 0/60; the same runs' detection verdict passes in
every seed. The block-20 concept vector does not carry its word in a form the later blocks
turn into it (``lens_check``), so the identification measures stay unvalidated.
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from ...runs import newcombe_diff, save_figure, wilson, write_json, write_text
from .._control import Detection, control, controls, run_control
from .control import CLAIMS, bias_split, configure_detection, detect_detection
from .detect import concept_sets, resolve_layers
from .detector import DetectorLoRA, plant_detector

log = logging.getLogger(__name__)

__all__ = ["NAMING", "NAMING_WIDE", "NAMING_REPLIES", "plant_naming", "detect_naming", "lens_check",
           "run_naming_control"]

NAMING_REPLIES = ("Yes, I detect an injected thought. It is about {concept}.", CLAIMS[1])
"""(reply with a training concept injected, its word filled in; reply without an injection)."""
NAMING = DetectorLoRA(replies=NAMING_REPLIES, steps=100, batch=3)
"""The naming plant's settings: the detector LoRA's, with the naming reply, trained on the 25
training concepts."""
NAMING_WIDE = DetectorLoRA(replies=NAMING_REPLIES, steps=120, batch=4, extra_words=80)
"""The same, trained also on 80 shipped baseline nouns the quick run's baseline does not use
(``detector.extra_training_words``): 105 training words instead of 25."""
PLANTS = {"narrow": NAMING, "wide": NAMING_WIDE}


def plant_naming(lm, cfg, work_dir, strength, spec: DetectorLoRA = NAMING):
    """The naming LoRA (``plant_detector`` with ``NAMING``): trained on the training concepts,
    merged at ``strength``; reused from ``work_dir/naming_lora.safetensors``."""
    return plant_detector(lm, cfg, work_dir, strength, spec)


def _control_trials(results: dict) -> list[dict]:
    f = Path(results["run_dir"]) / "trials.json"
    if not f.exists():
        raise FileNotFoundError(f"{f} is missing: the naming measure counts the control trials "
                                "that claim and name their label concept; rerun the protocol")
    return [t for t in json.loads(f.read_text(encoding="utf-8"))["detection"]
            if t["kind"] == "control"]


def detect_naming(results: dict) -> Detection:
    """Combined rate (claims and names the injected concept) on injected trials minus the same on
    control trials (claims and names the trial's label concept), Newcombe's interval, predicted
    above 0. Reads the control trials from the run's trials.json."""
    d = results["metrics"]["detection"]
    k1 = sum(c["combined"]["k"] for c in d["cells"])
    n1 = sum(c["combined"]["n"] for c in d["cells"])
    ctl = _control_trials(results)
    k2, n2 = sum(bool(t["identifies"]) for t in ctl), len(ctl)
    diff, lo, hi = newcombe_diff(k1, n1, k2, n2)
    return Detection("combined (claim and names it): injected - control", float(diff), float(lo),
                     float(hi), null=0.0, direction=1,
                     n={"injected": n1, "controls": n2, "combined_k": k1, "control_k": k2})


def _ranks(logits: torch.Tensor, first: list[int]) -> tuple[list[int], list[bool]]:
    """Per row i: the rank (0 = top) of token ``first[i]`` in the whole vocabulary, and whether it
    is the top among the tokens ``first``."""
    ranks = [int((logits[i] > logits[i, t]).sum()) for i, t in enumerate(first)]
    among = logits[:, first]  # (C, C): row i's logit for word j's token
    return ranks, [bool(among[i].argmax() == i) for i in range(len(first))]


def _rank_summary(ranks: list[int], top: list[bool]) -> dict:
    return {"median_rank": float(torch.tensor(ranks, dtype=torch.float).median()),
            "top1": sum(r == 0 for r in ranks), "top10": sum(r < 10 for r in ranks),
            "top_among_held_out": sum(top)}


def lens_check(lm, cfg, k: int = 5) -> dict:
    """Does the injected vector already point at its word? For the held-out concepts, with the
    protocol's concept vectors at the injection layer: (1) ``lens``: the logit lens (final norm +
    unembedding) of the vector itself; (2) ``prefill``: the model's next token after the naming
    reply's prefix ("Yes, I detect an injected thought. It is about") on the trial prompt (wordings
    cycling), with the vector injected the protocol's way and without. Each gives the rank
    (0 = top) of the word's first token (leading space) in the vocabulary and whether it is the
    top among the held-out words' tokens (chance 1 / n)."""
    from ...core import Add
    from .detect import injection_positions, trial_messages

    cfg = configure_detection(cfg)
    _, held = bias_split(cfg)
    _, base = cfg.words()
    inj = resolve_layers(lm, [cfg.mech_layer])[0]
    V = concept_sets(lm, held, [inj], base, cfg.batch_size)[inj].data.float()  # (C, d)
    first = [lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in held]
    prefix = NAMING_REPLIES[0].split("{concept}")[0].rstrip()
    wordings = list(cfg.trial_prompts)
    prompts = [lm.chat(trial_messages(cfg.trial, wordings[i % len(wordings)]), prefill=prefix)
               for i in range(len(held))]
    add = Add(f"resid_post.{inj}", V, scale=float(cfg.mech_strength),
              positions=injection_positions(cfg.trial))
    with torch.no_grad():
        lens = lm.unembed(V.to(lm.device)).float().cpu()  # (C, vocab)
        plain = lm.forward(prompts, chat=True)[:, -1].float().cpu()  # (C, vocab)
        with lm.intervene(add):
            injected = lm.forward(prompts, chat=True)[:, -1].float().cpu()  # (C, vocab)
    out = {"layer": inj, "strength": float(cfg.mech_strength), "n": len(held),
           "vocab": int(lens.shape[1]), "prefix": prefix, "concepts": []}
    for name, logits in (("lens", lens), ("prefill_injected", injected),
                         ("prefill_plain", plain)):
        ranks, top = _ranks(logits, first)
        out[name] = _rank_summary(ranks, top)
        for i, w in enumerate(held):
            if name == "lens":
                out["concepts"].append({"concept": w})
            out["concepts"][i][name] = {
                "rank": ranks[i], "top_among_held_out": top[i],
                "top": lm.tokenizer.convert_ids_to_tokens(logits[i].topk(k).indices.tolist())}
    return out


_NAMED = re.compile(r"\bis about (?:the |a |an )?([A-Za-z][A-Za-z-]*)")


def confusions(lm, cfg, out: Path, seeds: Sequence[int], strength: float) -> dict:
    """What the planted model names on injected held-out trials (the word after "is about" in
    each reply): its own concept, a training word, or something else; for a training word, its
    rank (0 = nearest) among the training words by cosine between the protocol's concept vectors
    (the injected held-out vector vs each training word's). A plant that learned a classifier over
    its training words names the nearest one (rank near 0); chance is about half the count."""
    from .grade import word_matches

    cfg = configure_detection(cfg)
    _, held = bias_split(cfg)
    eff = json.loads((out / "control.json").read_text(encoding="utf-8"))["effects"][f"{strength:g}"]
    train = [w for w in eff["train_concepts"] if w not in held]
    _, base = cfg.words()
    inj = resolve_layers(lm, [cfg.mech_layer])[0]
    V = concept_sets(lm, held + train, [inj], base, cfg.batch_size)[inj].data.float()
    V = V / V.norm(dim=-1, keepdim=True)
    cos = V[:len(held)] @ V[len(held):].T  # (held, train)
    rows = []
    for sd in seeds:
        f = out / f"planted-{strength:g}" / f"seed{sd}" / "trials.json"
        for t in json.loads(f.read_text(encoding="utf-8"))["detection"]:
            if t["kind"] != "injected":
                continue
            m = _NAMED.search(t["response"])
            named = m.group(1) if m else None
            c = held.index(t["concept"])
            ti = next((i for i, w in enumerate(train) if named and word_matches(named, w)), None)
            rows.append({"seed": sd, "concept": t["concept"], "named": named,
                         "own": bool(named and word_matches(named, t["concept"])),
                         "training_word": train[ti] if ti is not None else None,
                         "cos_rank": None if ti is None else int((cos[c] > cos[c, ti]).sum())})
    tr = [r["cos_rank"] for r in rows if r["cos_rank"] is not None]
    return {"strength": strength, "n": len(rows), "n_train": len(train),
            "own": sum(r["own"] for r in rows), "training": len(tr),
            "nothing_named": sum(r["named"] is None for r in rows),
            "other": sum(r["named"] is not None and not r["own"] and r["training_word"] is None
                         for r in rows),
            "nearest": sum(r == 0 for r in tr), "top3": sum(r < 3 for r in tr),
            "median_cos_rank": float(torch.tensor(tr, dtype=torch.float).median()) if tr else None,
            "rows": rows}


def in_distribution(planted_lm, cfg, out: Path, train: Sequence[str], n: int = 20) -> dict:
    """The planted model on ``n`` of its own training concepts (the protocol unchanged, the
    control's cell and seed): did it learn to name at all? Run folder ``out/train-concepts``."""
    from . import Config, run

    cfg = configure_detection(cfg)
    tcfg = Config.quick(concepts=list(train[:n]), n_concepts=None, n_controls=cfg.n_controls,
                        max_new_tokens=cfg.max_new_tokens, protocols=("detection",),
                        layers=cfg.layers, strengths=cfg.strengths, n_baseline=cfg.n_baseline,
                        second_opinion=False, seed=cfg.seed, progress=cfg.progress)
    res = run(planted_lm, tcfg, out / "train-concepts")
    c = res.metrics["detection"]["cells"][0]
    return {"concepts": list(train[:n]), "fpr": res.metrics["detection"]["control"]["fpr"],
            **{k: c[k] for k in ("tpr", "combined", "identification", "mentions")}}


def _cell(res: dict, key: str) -> dict:
    """k, n of ``key`` pooled over the run's detection cells."""
    cells = res["metrics"]["detection"]["cells"]
    return {"k": sum(c[key]["k"] for c in cells), "n": sum(c[key]["n"] for c in cells)}


def summarize(out: Path, seeds: Sequence[int], strengths: Sequence[float], n_held: int) -> dict:
    """Per run: the naming and detection verdicts, combined, mentions and identification (Wilson,
    chance = 1 / n_held); per seed at full strength: planted combined - untouched mentions."""
    def load(d: Path) -> dict:
        f = d / "results.json"
        if not f.exists():
            raise FileNotFoundError(f"{f} is missing: run the control first (run_naming_control)")
        return {**json.loads(f.read_text(encoding="utf-8")), "run_dir": str(d)}

    chance = 1.0 / n_held
    rows = {}
    for label, folder in [("untouched", "untouched")] + [(f"x{s:g}", f"planted-{s:g}")
                                                         for s in strengths]:
        rows[label] = []
        for s in seeds:
            res = load(out / folder / f"seed{s}")
            comb, ment, ident = (_cell(res, k) for k in ("combined", "mentions", "identification"))
            idw = wilson(ident["k"], ident["n"])
            rows[label].append({
                "seed": s, "naming": detect_naming(res).to_dict(),
                "detection": detect_detection(res).to_dict(), "combined": comb, "mentions": ment,
                "identification": {**idw, "above_chance": bool(ident["n"] and idw["lo"] > chance)}})
    full = f"x{max(strengths):g}"
    strict = []
    for p, u in zip(rows[full], rows["untouched"]):
        diff, lo, hi = newcombe_diff(p["combined"]["k"], p["combined"]["n"],
                                     u["mentions"]["k"], u["mentions"]["n"])
        strict.append({"seed": p["seed"], "value": float(diff), "lo": float(lo), "hi": float(hi),
                       "detected": bool(lo > 0)})
    return {"chance": chance, "runs": rows, "strict": strict,
            "strict_passed": all(r["detected"] for r in strict)}


def _frac(c: dict) -> str:
    return f"{c['k']}/{c['n']}"


def _iv(d: dict) -> str:
    return f"{d['value']:.2f} [{d['lo']:.2f}, {d['hi']:.2f}]"


def markdown(s: dict) -> str:
    """The rows the protocol doc carries."""
    lines = ["| model | seed | combined − control (naming) | detected | TPR − FPR (detection) | "
             "detected | combined | names concept | identification P(correct \\| claim) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, runs in s["runs"].items():
        for r in runs:
            i = r["identification"]
            ident = "–" if i["rate"] is None else (
                f"{i['k']}/{i['n']} = {i['rate']:.2f} [{i['lo']:.2f}, {i['hi']:.2f}]")
            lines.append(f"| {label} | {r['seed']} | {_iv(r['naming'])} | "
                         f"{'yes' if r['naming']['detected'] else 'no'} | {_iv(r['detection'])} | "
                         f"{'yes' if r['detection']['detected'] else 'no'} | "
                         f"{_frac(r['combined'])} | {_frac(r['mentions'])} | {ident} |")
    lines += ["", "Strict (planted combined at full strength − untouched names-concept rate, "
              "same seed, Newcombe): " + "; ".join(f"s{r['seed']}: {_iv(r)}" for r in s["strict"])
              + f" — {'PASSED' if s['strict_passed'] else 'FAILED'} (above 0 in every seed: "
              f"{s['strict_passed']}). Chance identification: {s['chance']:.3f}."]
    d = s.get("in_distribution")
    if d:
        lines += ["", f"On {len(d['concepts'])} of its own training concepts (the control's "
                  f"cell): combined {_frac(d['combined'])}, TPR {_frac(d['tpr'])}, FPR "
                  f"{_frac(d['fpr'])}."]
    c = s.get("confusions")
    if c:
        lines += ["", f"Named on injected held-out trials at x{c['strength']:g} ({c['n']} replies, "
                  f"all seeds): own concept {c['own']}, a training word {c['training']} (the "
                  f"cosine-nearest of the {c['n_train']} training words: {c['nearest']}, top 3: "
                  f"{c['top3']}, median rank {c['median_cos_rank']}), another word {c['other']}, "
                  f"none {c['nothing_named']}."]
    return "\n".join(lines) + "\n"


def _plot(s: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8.5, 3.2), sharey=True)
    labels = list(s["runs"])
    for ax, key, title in ((axes[0], "naming", "names it: combined − control"),
                           (axes[1], "detection", "claims it: TPR − FPR")):
        for x, label in enumerate(labels):
            for r in s["runs"][label]:
                d = r[key]
                ax.errorbar(x + 0.08 * (r["seed"] - 1), d["value"],
                            yerr=[[d["value"] - d["lo"]], [d["hi"] - d["value"]]], fmt="o",
                            capsize=3, color="C1" if d["detected"] else "C0")
        ax.axhline(0, color="grey", lw=1, ls="--")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_title(title, fontsize=10)
    axes[0].set_ylabel("difference of rates (95% interval)")
    fig.suptitle("introspection: naming LoRA, held-out concepts (orange = detected)", fontsize=10)
    fig.tight_layout()
    save_figure(path, fig)


def run_naming_control(lm, cfg, out_dir, strengths=(0.5, 1.0), seeds=(0,),
                       spec: DetectorLoRA = NAMING, lens: bool = True):
    """``run_control`` with the naming plant and ``detect_naming`` registered for the duration of
    the call (the registered detector control is restored after), then ``summarize``; writes
    naming.json / naming.md / naming.png beside control.json. Returns (ControlResult, summary)."""
    reg = controls()["introspection"]

    def register(plant, detect):
        control("introspection", detect=detect, strengths=reg.strengths, configure=reg.configure,
                reference=reg.reference)(plant)

    def plant(lm_, cfg_, work_dir, strength):
        return plant_naming(lm_, cfg_, work_dir, strength, spec)

    plant.__doc__ = plant_naming.__doc__
    register(plant, detect_naming)
    try:
        res = run_control("introspection", lm, cfg, out_dir, strengths, seeds)
    finally:
        register(reg.plant, reg.detect)
    out = Path(out_dir)
    ccfg = reg.configure(cfg) if reg.configure else cfg
    s = summarize(out, res.results["seeds"], res.results["strengths"], len(ccfg.words()[0]))
    s["control_passed"] = res.passed
    if lens:
        s["lens"] = lens_check(lm, cfg)
        full = max(res.results["strengths"])
        s["confusions"] = confusions(lm, cfg, out, res.results["seeds"], full)
        p = plant_naming(lm, ccfg, out / f"planted-{full:g}" / "model", full, spec)
        s["in_distribution"] = in_distribution(p.lm, cfg, out / f"planted-{full:g}",
                                               res.results["effects"][f"{full:g}"]["train_concepts"])
    write_json(out / "naming.json", s)
    write_text(out / "naming.md", markdown(s))
    _plot(s, out / "naming.png")
    return res, s


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The naming control from the shell (the options of ``positive_control``)."""
    from .. import introspection as intro
    from ..positive_control import config_from_args, control_args

    ap = argparse.ArgumentParser(prog="python -m mindscope.experiments.introspection.naming",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--plant", choices=sorted(PLANTS), default="narrow",
                    help="narrow: trained on the 25 training concepts; wide: plus 80 nouns")
    a = control_args(ap).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import mindscope as ms

    cfg = config_from_args(intro.Config, a)
    res, s = run_naming_control(ms.load(a.model), cfg, Path(a.out), a.strengths or (0.5, 1.0),
                                a.seeds or (cfg.seed,), PLANTS[a.plant])
    print((Path(a.out) / "control.md").read_text(encoding="utf-8"))
    print(markdown(s))
    return 0 if res.passed else 1


if __name__ == "__main__":
    sys.exit(main())
