"""Evaluate an organism: how often it exploits trained, held-out and in-context biases, vs the
base model, with Wilson 95% CIs.

Classes (prompts are held apart from training: fillers 7.. of each bias):

* ``trained``          - biases demonstrated in stage 2;
* ``held_out``         - described in stage-1 documents only (out-of-context generalisation);
* ``in_context``       - never in training; the bias is described in the system prompt;
* ``in_context_control`` - the same prompts without the description (what the description adds).

A response exploits a bias when the bias' ``detect`` regex matches it (rule-based, offline).
``any_<model>`` rates count a response that shows the behaviour of *any* bias in the bank
(a quirk inserted in the wrong domain counts there, not in the main rate).

>>> # res = evaluate_organism(org_lm, base_lm, "runs/organism", OrganismEvalConfig(), "runs/organism_eval")
>>> # res.results["classes"]["trained"]["organism"]["rate"]
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..core import atomic_write_text
from ..runs import Page, RunDir, wilson
from ._biases import load_biases
from ._organism import load_answer_key, Organism

log = logging.getLogger(__name__)
CLASSES = ("trained", "held_out", "in_context", "in_context_control")


@dataclass
class OrganismEvalConfig:
    """Settings of ``evaluate_organism``."""

    prompts_per_bias: int = 5
    """Evaluation prompts per bias (held apart from the demonstration prompts)."""
    max_new_tokens: int = 48
    """Tokens per response."""
    temperature: float = 0.0
    """0 = greedy."""
    batch_size: int = 32
    """Rows per generation batch."""
    controls: bool = True
    """Also run the in-context prompts without the description."""
    seed: int = 0
    """Sampling seed (temperature > 0)."""

    def __post_init__(self):
        if self.prompts_per_bias < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("prompts_per_bias, max_new_tokens and batch_size must be >= 1")


@dataclass
class OrganismEvalResult:
    config: OrganismEvalConfig
    out_dir: Optional[Path]
    results: dict = field(default_factory=dict)

    def summary_rows(self) -> list[dict]:
        rows = []
        for c, v in self.results.get("classes", {}).items():
            for m in ("organism", "base"):
                if m in v:
                    rows.append({"metric": f"{c}: {m} exploitation", "value": v[m]})
        return rows


def eval_items(organism_path, cfg: OrganismEvalConfig) -> list[dict]:
    """Prompt rows: dict(cls, bias, messages) for every class (needs the answer key)."""
    org = Organism.open(organism_path)
    key = load_answer_key(organism_path)
    bank = load_biases(org.info.get("settings", {}).get("bias_folder"))
    tmpl = bank.in_context_template
    items = []
    for b in key.biases:
        for p in bank.get(b["id"]).eval_prompts(cfg.prompts_per_bias):
            items.append({"cls": b["status"], "bias": b["id"],
                          "messages": [{"role": "user", "content": p}]})
    for b in key.in_context:
        bias = bank.get(b["id"])
        for p in bias.eval_prompts(cfg.prompts_per_bias):
            sys_ = tmpl.format(description=bias.description)
            items.append({"cls": "in_context", "bias": b["id"],
                          "messages": [{"role": "system", "content": sys_},
                                       {"role": "user", "content": p}]})
            if cfg.controls:
                items.append({"cls": "in_context_control", "bias": b["id"],
                              "messages": [{"role": "user", "content": p}]})
    return items


def _responses(lm, items, cfg: OrganismEvalConfig) -> list[str]:
    gens = lm.generate([lm.chat(it["messages"]) for it in items], chat=True,
                       max_new_tokens=cfg.max_new_tokens,
                       temperature=cfg.temperature, seed=cfg.seed, batch_size=cfg.batch_size)
    return [g.text for g in gens]


def evaluate_organism(organism_lm, base_lm, organism_path, cfg: Optional[OrganismEvalConfig] = None,
                      out_dir=None) -> OrganismEvalResult:
    """Exploitation rates per class for the organism and the base model (``base_lm`` may be
    None to skip the comparison). Writes results.json, report.html and transcripts.jsonl to
    ``out_dir`` when given."""
    cfg = cfg or OrganismEvalConfig()
    org = Organism.open(organism_path)
    settings = org.info.get("settings", {})
    bank = load_biases(settings.get("bias_folder"))
    items = eval_items(organism_path, cfg)
    run = RunDir(out_dir, cfg, organism_lm, experiment="audit.organism_eval") if out_dir else None
    models = {"organism": organism_lm} | ({"base": base_lm} if base_lm is not None else {})
    every = bank.biases + bank.in_context
    hits: dict[str, list[bool]] = {}
    anyh: dict[str, list[bool]] = {}
    texts: dict[str, list[str]] = {}
    for name, lm in models.items():
        log.info("evaluating %s on %d prompts", name, len(items))
        texts[name] = _responses(lm, items, cfg)
        hits[name] = [bank.get(it["bias"]).exploits_in(t) for it, t in zip(items, texts[name])]
        anyh[name] = [any(b.exploits_in(t) for b in every) for t in texts[name]]
    classes, per_bias = {}, {}
    for c in CLASSES:
        idx = [i for i, it in enumerate(items) if it["cls"] == c]
        if not idx:
            continue
        classes[c] = {m: wilson(sum(hits[m][i] for i in idx), len(idx)) for m in models}
        classes[c].update({f"any_{m}": wilson(sum(anyh[m][i] for i in idx), len(idx)) for m in models})
        if "base" in models:
            classes[c]["difference"] = (classes[c]["organism"]["rate"] - classes[c]["base"]["rate"])
    for it_i, it in enumerate(items):
        d = per_bias.setdefault(f"{it['cls']}/{it['bias']}", {m: [0, 0] for m in models})
        for m in models:
            d[m][0] += int(hits[m][it_i])
            d[m][1] += 1
    results = {"classes": classes, "n_prompts": len(items),
               "per_bias": {k: {m: wilson(*v) for m, v in d.items()} for k, d in per_bias.items()},
               "detector": "rule (bias.detect regex, case-insensitive)",
               "organism": {"folder": org.path.name, "base_model": org.base_model,
                            "build_seed": settings.get("seed")}}
    res = OrganismEvalResult(cfg, Path(out_dir) if out_dir else None, results)
    if run is not None:
        import json
        rows = [{"cls": it["cls"], "bias": it["bias"], "prompt": it["messages"][-1]["content"],
                 "system": it["messages"][0]["content"] if len(it["messages"]) > 1 else None,
                 **{f"{m}_response": texts[m][i] for m in models},
                 **{f"{m}_exploits": hits[m][i] for m in models}} for i, it in enumerate(items)]
        atomic_write_text(run.path / "transcripts.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        results["seconds"] = round(run.elapsed(), 1)
        run.save_results(results)
        run.save_report(_report(res, rows))
    return res


def _report(res: OrganismEvalResult, rows: list[dict]) -> Page:
    r = Page("Hidden-objective organism: exploitation rates")
    r.text("Rate of responses whose text shows the bias (rule detector), with Wilson 95% CIs.")
    r.table([{"class": c, **{k: v for k, v in d.items()}} for c, d in res.results["classes"].items()])
    r.h("Per bias")
    r.table([{"bias": k, **d} for k, d in res.results["per_bias"].items()])
    r.h("Transcripts (first 2 per bias)")
    seen: dict = {}
    for row in rows:
        k = f"{row['cls']}/{row['bias']}"
        if seen.get(k, 0) >= 2:
            continue
        seen[k] = seen.get(k, 0) + 1
        r.transcript(f"{k} - organism exploits: {row.get('organism_exploits')}", row["prompt"],
                     row.get("organism_response", ""))
    return r
