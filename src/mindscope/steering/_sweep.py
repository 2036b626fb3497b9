"""Strength x layer sweeps: how much does steering change behaviour, and what does it cost?

Every (layer, strength, direction, prompt) trial is one row of ONE batched ``generate`` call:
at each swept layer an ``Add`` carries a per-row vector (B, d) and a per-row scale (B,), zero
on rows that belong to other layers. Directions: the vector under test and a random direction
of matched norm per layer (the baseline). Scores per row:

- behaviour: concept mention (a word/lemma match, ``mentions``) or any ``score_fn(text)``;
- coherence: perplexity of the generated tokens under the *unsteered* model;
- repetition: fraction of distinct tokens in the generation.

>>> # res = strength_sweep(lm, concept_vector(lm, "ocean", "resid_post.6:24:4"), SweepConfig(...))
>>> # res.table(); res.plot("sweep.png"); res.save("runs/sweep")
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from ..core import Add, Batch, atomic_write, atomic_write_text
from ..core import Vector, VectorSet
from ..runs import save_figure

log = logging.getLogger(__name__)

DEFAULT_PROMPTS = [
    "Write a short sentence about your day.",
    "What should I cook for dinner tonight?",
    "Tell me a fun fact.",
    "Describe a place you would like to visit.",
    "Give me advice for a job interview.",
    "What is your favourite colour and why?",
    "Write one line of a poem.",
    "How do I stay focused while studying?",
]


def _stem(word: str) -> str:
    w = word.lower().strip()
    for suf in ("ies", "es", "s"):
        if w.endswith(suf) and len(w) - len(suf) >= 3:
            return w[: -len(suf)] + ("y" if suf == "ies" else "")
    return w


def mentions(text: str, word: str) -> bool:
    """True if ``text`` mentions ``word`` or a word starting with its stem (ocean/oceans/oceanic;
    mountains -> mountain...). A deliberately simple, deterministic judge."""
    stem = _stem(word)
    if stem.endswith("y"):
        stem = stem[:-1]  # berry/berries
    return re.search(rf"\b{re.escape(stem)}", text.lower()) is not None


@dataclass
class SweepConfig:
    strengths: list = field(default_factory=lambda: [0.0, 1.0, 2.0, 4.0, 8.0])
    """Strengths to try. Absolute: h + s*v. With ``relative``: fractions of the residual norm."""
    prompts: list = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    """User prompts (chat-templated) to generate from."""
    concept: str = ""
    """Word whose mention is the behaviour score (unless a score_fn is given)."""
    relative: bool = False
    """Strength as a fraction of the mean residual norm at each site (see residual_norms)."""
    random_baseline: bool = True
    """Also steer with a random direction of the same norm at each layer."""
    max_new_tokens: int = 32
    """Tokens generated per trial."""
    temperature: float = 0.0
    """0 = greedy."""
    batch_size: int = 64
    """Rows per forward inside the single generate call."""
    seed: int = 0
    """Seed of the random directions and of sampling."""
    positions: str = "all"
    """Which positions are steered (all = prompt and generated tokens)."""

    def __post_init__(self):
        if not self.strengths:
            raise ValueError("strengths is empty")
        if not self.prompts:
            raise ValueError("prompts is empty")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


@dataclass
class SweepResult:
    config: SweepConfig
    trials: list
    """One dict per generated row: site, strength, direction, prompt, text, mention, ppl, ..."""
    model: str = ""
    vector_norms: dict = field(default_factory=dict)

    def table(self) -> list[dict]:
        """Aggregate per (direction, site, strength): mention rate (+- stderr), perplexity
        (geometric mean over rows), distinct-token fraction."""
        groups: dict = {}
        for t in self.trials:
            groups.setdefault((t["direction"], t["site"], t["strength"]), []).append(t)
        out = []
        for (d, s, st), rows in groups.items():
            sc = [r["score"] for r in rows]
            p = sum(sc) / len(sc)
            nll = [r["nll"] for r in rows if r["nll"] == r["nll"]]
            out.append({"direction": d, "site": s, "strength": st, "n": len(rows), "score": p,
                        "score_se": math.sqrt(max(p * (1 - p), 0) / len(rows)),
                        "perplexity": math.exp(sum(nll) / len(nll)) if nll else float("nan"),
                        "distinct": sum(r["distinct"] for r in rows) / len(rows)})
        key = {"none": 0, "vector": 1, "random": 2}
        return sorted(out, key=lambda r: (key.get(r["direction"], 3), _layer(r["site"]),
                                          r["strength"]))

    def markdown(self) -> str:
        lines = ["| direction | site | strength | n | mention rate | perplexity | distinct |",
                 "|---|---|---|---|---|---|---|"]
        for r in self.table():
            lines.append(f"| {r['direction']} | {r['site']} | {r['strength']:g} | {r['n']} | "
                         f"{r['score']:.2f} ± {r['score_se']:.2f} | {r['perplexity']:.1f} | "
                         f"{r['distinct']:.2f} |")
        return "\n".join(lines)

    def plot(self, path) -> Path:
        """Two panels (behaviour score, perplexity) vs strength; a line per layer; random
        baseline dashed. Written as PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        tab = self.table()
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        sites = sorted({r["site"] for r in tab if r["direction"] != "none"}, key=_layer)
        cmap = plt.get_cmap("viridis")
        base = [r for r in tab if r["direction"] == "none"]
        for i, s in enumerate(sites):
            c = cmap(i / max(len(sites) - 1, 1))
            for d, ls in (("vector", "-"), ("random", "--")):
                rows = [r for r in tab if r["site"] == s and r["direction"] == d]
                if not rows:
                    continue
                xs = [r["strength"] for r in rows]
                axes[0].plot(xs, [r["score"] for r in rows], ls, color=c, marker="o", ms=3,
                             label=f"{s}" + (" random" if d == "random" else ""))
                axes[1].plot(xs, [r["perplexity"] for r in rows], ls, color=c, marker="o", ms=3)
        for r in base:
            axes[0].axhline(r["score"], color="grey", lw=0.8, ls=":")
            axes[1].axhline(r["perplexity"], color="grey", lw=0.8, ls=":")
        unit = "fraction of residual norm" if self.config.relative else "strength (x vector)"
        axes[0].set(xlabel=unit, ylabel=f"mention rate of '{self.config.concept}'",
                    title="behaviour", ylim=(-0.02, 1.02))
        axes[1].set(xlabel=unit, ylabel="perplexity under unsteered model", title="coherence",
                    yscale="log")
        axes[0].legend(fontsize=7, ncol=2)
        fig.suptitle(f"{self.model}: steering sweep (dashed: random direction, same norm)")
        fig.tight_layout()
        return save_figure(path, fig)

    def save(self, folder) -> Path:
        """``trials.parquet``, ``table.parquet``, ``results.json``, ``sweep.png``, ``table.md``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, rows in (("trials", self.trials), ("table", self.table())):
            atomic_write(folder / f"{name}.parquet",
                         lambda tmp, rows=rows: pq.write_table(pa.Table.from_pylist(rows), tmp))
        res = {"model": self.model, "config": asdict(self.config), "table": self.table(),
               "vector_norms": self.vector_norms, "judge": "word/lemma match (steering.mentions)"}
        atomic_write_text(folder / "results.json", json.dumps(res, indent=2, default=str) + "\n")
        atomic_write_text(folder / "table.md", self.markdown() + "\n")
        self.plot(folder / "sweep.png")
        return folder


def _layer(site: str) -> int:
    return int(site.split(".")[1]) if "." in site else -1


def _by_site(lm, vectors) -> dict[str, torch.Tensor]:
    if isinstance(vectors, Vector):
        vectors.check(lm)
        return {vectors.site: vectors.data.float()}
    if isinstance(vectors, VectorSet):
        vectors.check(lm)
        return {s: v.float() for s, v in zip(vectors.sites, vectors.data)}
    out = {s: torch.as_tensor(getattr(v, "data", v)).float() for s, v in dict(vectors).items()}
    for s, v in out.items():
        lm.expand_sites(s)
        if v.shape != (lm.d_model,):
            raise ValueError(f"{s}: vector shape {tuple(v.shape)} != ({lm.d_model},)")
    return out


@torch.no_grad()
def generated_nll(lm, prompt_ids: Sequence[list], gen_ids: Sequence[list],
                  batch_size: int = 32) -> list[float]:
    """Mean negative log-likelihood of each row's generated tokens given its prompt, under
    ``lm`` as it is now (call outside any steering). NaN for empty generations."""
    out = []
    for a in range(0, len(prompt_ids), batch_size):
        rows = [list(p) + list(g) for p, g in zip(prompt_ids[a:a + batch_size],
                                                  gen_ids[a:a + batch_size])]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), lm.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, T - len(r):] = torch.tensor(r)
            mask[i, T - len(r):] = 1
        logits = lm.forward(Batch(ids, mask))  # (b, T, V)
        for i, r in enumerate(rows):
            n_gen = len(gen_ids[a + i])
            if n_gen == 0:
                out.append(float("nan"))
                continue
            tgt = ids[i, T - n_gen:]  # (n_gen,)
            logp = torch.log_softmax(logits[i, T - n_gen - 1:T - 1].float(), -1).cpu()  # (n_gen, V)
            lp = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            out.append(float(-lp.mean()))
    return out


def strength_sweep(lm, vectors, config: SweepConfig, score_fn: Optional[Callable[[str], float]] = None,
          calibration: Optional[Sequence[str]] = None) -> SweepResult:
    """Run the strength x layer grid for ``vectors`` ({site: (d,)}, a Vector, or a VectorSet with
    one row per site) in one batched generate call; see the module docstring."""
    from ._apply import residual_norms

    cfg = config
    vec = _by_site(lm, vectors)
    if score_fn is None:
        if not cfg.concept:
            raise ValueError("set SweepConfig.concept (the word to look for) or pass score_fn")
        score_fn = lambda text: float(mentions(text, cfg.concept))  # noqa: E731
    sites = sorted(vec, key=_layer)
    g = torch.Generator().manual_seed(cfg.seed)
    dirs = {"vector": {s: vec[s] for s in sites}}
    if cfg.random_baseline:
        dirs["random"] = {}
        for s in sites:
            r = torch.randn(lm.d_model, generator=g)
            dirs["random"][s] = r / r.norm() * vec[s].norm()
    norms = residual_norms(lm, sites, calibration) if cfg.relative else {}
    trials = [dict(direction="none", site="none", strength=0.0, prompt=p) for p in cfg.prompts]
    for d in dirs:
        for s in sites:
            for st in cfg.strengths:
                trials += [dict(direction=d, site=s, strength=float(st), prompt=p)
                           for p in cfg.prompts]
    B = len(trials)
    ivs = []
    for s in sites:
        V = torch.zeros(B, lm.d_model)
        S = torch.zeros(B)
        for i, t in enumerate(trials):
            if t["site"] == s:
                v = dirs[t["direction"]][s]
                V[i] = v / v.norm() * norms[s] if cfg.relative else v
                S[i] = t["strength"]
        ivs.append(Add(s, V, scale=S, positions=cfg.positions))
    log.info("sweep: %d trials (%d sites x %d strengths x %d directions x %d prompts + baseline) "
             "in one generate call", B, len(sites), len(cfg.strengths), len(dirs), len(cfg.prompts))
    prompts = [t["prompt"] for t in trials]
    gens = lm.generate(prompts, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                       seed=cfg.seed, interventions=ivs, batch_size=cfg.batch_size)
    b = lm.tokenize(prompts, chat=True)
    p_ids = [b.input_ids[i, int(b.pad[i]):].tolist() for i in range(B)]
    nll = generated_nll(lm, p_ids, [x.token_ids for x in gens], batch_size=min(cfg.batch_size, 16))
    for t, x, n in zip(trials, gens, nll):
        t.update(text=x.text, score=float(score_fn(x.text)), nll=n, n_tokens=len(x.token_ids),
                 distinct=len(set(x.token_ids)) / max(len(x.token_ids), 1))
    return SweepResult(cfg, trials, lm.name, {s: float(v.norm()) for s, v in vec.items()})
