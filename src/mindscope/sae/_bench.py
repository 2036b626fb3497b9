"""SAE quality you can compare (``bench``): core metrics, k-sparse probing on offline labelled
tasks, first-letter feature absorption, targeted probe perturbation, an offline auto-interp
detection score, for several SAEs of one model, over several seeds (mean and 95 % t-interval).

Data: documents of the default corpus (prose, code, chat; built offline from the Python
install), captured at each SAE's site; position 0 and rows with norm > 10x the median are
dropped. Tasks (each binary one-vs-rest per class, balanced, 70/30 split drawn by the seed):
* ``corpus_kind``: prose vs code vs chat, on codes mean-pooled over a document;
* ``first_letter``: first letter of word tokens (alphabetic, >= 2 letters), per token;
* ``token_class``: word / number / punctuation / whitespace tokens.
A k-sparse probe keeps the k latents with the largest train mean difference and fits a logistic
regression on them; ``dense`` is the same regression on the raw activations.
Missing: spurious-correlation removal (SCR) needs a dataset with two labelled attributes that
can be made to correlate (Bias in Bios: profession x gender); nothing offline has that, so
asking for it raises BadInputError.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch

from ..core import BadInputError, atomic_write_json
from ..runs import t_ci

TASKS = ("corpus_kind", "first_letter", "token_class")
MISSING = {"scr": "spurious-correlation removal needs a dataset with two labelled attributes that "
                  "can be made to correlate (e.g. Bias in Bios: profession x gender); no such "
                  "dataset is available offline"}


@dataclass
class BenchConfig:
    n_docs: int = 90
    """Documents of the default corpus (equal numbers of prose, code and chat)."""
    max_chars: int = 600
    """Characters kept per document (about 150 tokens)."""
    seeds: int = 3
    """Seeds of the train/test splits and samples (intervals are over seeds)."""
    ks: tuple = (1, 2, 5, 20)
    """Latents kept by the k-sparse probes."""
    tasks: tuple = TASKS
    """Probing tasks (names in TASKS); 'scr' is refused (see MISSING)."""
    min_per_class: int = 20
    """A class needs this many rows (documents or tokens) in the data, else BadInputError."""
    autointerp_latents: int = 40
    """Latents scored by the offline detection judge."""
    tpp_latents: int = 10
    """Latents ablated per class by targeted probe perturbation."""
    core: bool = True
    """Also measure CE increase / KL with the SAE spliced in (model forward passes)."""
    batch_size: int = 8
    """Documents per forward pass."""
    absorption_cos: float = 0.1
    """A firing latent whose decoder has at least this cosine with the letter probe absorbs it."""

    def __post_init__(self):
        bad = [t for t in self.tasks if t not in TASKS]
        if any(t in MISSING for t in bad):
            t = next(t for t in bad if t in MISSING)
            raise BadInputError(f"task {t!r}", MISSING[t], f"use tasks from {TASKS}")
        if bad:
            raise BadInputError(f"tasks {bad}", "are not bench tasks", f"use tasks from {TASKS}")
        for f in ("n_docs", "seeds", "min_per_class", "batch_size", "max_chars"):
            if getattr(self, f) <= 0:
                raise BadInputError(f"BenchConfig.{f}={getattr(self, f)}", "must be positive")
        if not self.ks or min(self.ks) <= 0:
            raise BadInputError(f"ks={self.ks}", "need positive latent counts")


def _t_ci(xs: Sequence[float]) -> dict:
    """Mean and the half-width of its 95 % Student-t interval over seeds (``runs.t_ci``)."""
    r = t_ci(xs)
    if r["n"] == 0:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    return {"mean": r["mean"], "ci95": float("nan") if r["half"] is None else r["half"],
            "n": r["n"]}


def check_sae(sae, lm, name: str = "SAE") -> None:
    """BadInputError if ``sae`` was not made for ``lm`` (model name, width, site)."""
    c = sae.cfg
    if c.transcoder:
        raise BadInputError(name, "is a transcoder; bench scores autoencoders",
                            "pass an SAE that reconstructs its own site")
    if c.d_in != lm.d_model:
        raise BadInputError(name, f"reads width {c.d_in}, but {lm.name} has d_model {lm.d_model}",
                            "pass an SAE trained on this model (or load the model it was made for)")
    if not c.site or c.site not in lm.sites:
        raise BadInputError(name, f"has site {c.site!r}, which {lm.name} does not have",
                            f"sites look like resid_post.0..{lm.n_layers - 1}")
    if c.model and lm.name and c.model.split("/")[-1].lower() != lm.name.split("/")[-1].lower():
        raise BadInputError(name, f"was trained on {c.model!r}, not on {lm.name!r}",
                            "load the model it was made for (-m) or pass SAEs of this model")


def load_docs(n_docs: int, max_chars: int) -> list[dict]:
    """``n_docs`` documents of the default corpus, equal per kind: dicts with kind, text or
    messages (truncated to ``max_chars``)."""
    from ..activations import build_default_corpus
    path = build_default_corpus() / "corpus.jsonl"
    per = max(1, n_docs // 3)
    got = {"prose": [], "code": [], "chat": []}
    with open(path, encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            k = d.get("kind")
            if k not in got or len(got[k]) >= per:
                continue
            if d.get("messages"):
                msgs = [{**m, "content": m["content"][:max_chars]} for m in d["messages"]]
                got[k].append({"kind": k, "messages": msgs})
            elif d.get("text"):
                got[k].append({"kind": k, "text": d["text"][:max_chars]})
            if all(len(v) >= per for v in got.values()):
                break
    return [d for k in ("prose", "code", "chat") for d in got[k]]


def token_class(s: str) -> Optional[str]:
    """word / number / punct / space for a decoded token, None for mixed."""
    t = s.strip()
    if not t:
        return "space"
    if t.isalpha():
        return "word"
    if t.isdigit():
        return "number"
    if not any(ch.isalnum() for ch in t):
        return "punct"
    return None


def first_letter(s: str) -> Optional[str]:
    t = s.strip()
    return t[0].lower() if len(t) >= 2 and t.isalpha() and t.isascii() else None


@torch.no_grad()
def capture_docs(lm, docs: list[dict], site: str, batch_size: int = 8) -> dict:
    """Activations of ``docs`` at ``site``: x (N, d), doc (N,), token strings; position 0 and
    norm outliers (> 10x median) removed."""
    xs, doc_ix, toks = [], [], []
    groups = [("text", [i for i, d in enumerate(docs) if "text" in d]),
              ("chat", [i for i, d in enumerate(docs) if "messages" in d])]
    for kind, ids in groups:
        if not ids:
            continue
        prompts = [docs[i]["text"] if kind == "text" else docs[i]["messages"] for i in ids]
        cap = lm.capture(prompts, site, positions="all", batch_size=batch_size,
                         chat=kind == "chat", progress=False)
        keep = cap.pos > 0
        xs.append(cap[site][keep].float())
        doc_ix.append(torch.as_tensor(ids)[cap.row[keep]])
        toks += cap.token_ids[keep].tolist()
    x, doc = torch.cat(xs), torch.cat(doc_ix)
    nrm = x.norm(dim=1)
    ok = nrm <= 10 * nrm.median()
    strs = [lm.tokenizer.decode([t]) for t in toks]
    strs = [s for s, k in zip(strs, ok.tolist()) if k]
    return {"x": x[ok], "doc": doc[ok], "tokens": strs}


def _labels(cap: dict, docs: list[dict]) -> dict:
    return {"first_letter": [first_letter(t) for t in cap["tokens"]],
            "token_class": [token_class(t) for t in cap["tokens"]],
            "corpus_kind": [d["kind"] for d in docs]}


def _pool(v: torch.Tensor, doc: torch.Tensor, n_docs: int) -> torch.Tensor:
    """Mean over each document's rows: (n_docs, ...)."""
    out = torch.zeros(n_docs, v.shape[1], dtype=torch.float64)
    out.index_add_(0, doc, v.double())
    cnt = torch.bincount(doc, minlength=n_docs).clamp_min(1)
    return (out / cnt[:, None]).float()


class _Clock:
    """Adds the seconds since the previous call to ``parts[name]``."""

    def __init__(self, parts: dict):
        self.parts, self.t = parts, time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.parts[name] = self.parts.get(name, 0.0) + now - self.t
        self.t = now


@torch.no_grad()
def bench(saes: dict, lm, cfg: Optional[BenchConfig] = None, progress: bool = True) -> dict:
    """Score ``saes`` ({name: SAE}) on ``lm``; returns a JSON-able dict (see module docstring).
    Every SAE is checked against the model first (``check_sae``)."""
    from ._bench_tasks import absorption, detection, sparse_probing, task_rows, tpp
    from ._metrics import model_metrics

    cfg = cfg or BenchConfig()
    if not saes:
        raise BadInputError("bench", "got no SAEs", "pass one or more --sae")
    for name, sae in saes.items():
        check_sae(sae, lm, name)
    t0 = time.perf_counter()
    docs = load_docs(cfg.n_docs, cfg.max_chars)
    res = {"config": asdict(cfg), "model": lm.name, "missing": MISSING, "saes": {}, "dense": {}}
    caps = {}
    for site in sorted({s.cfg.site for s in saes.values()}):
        caps[site] = capture_docs(lm, docs, site, cfg.batch_size)
        labels = _labels(caps[site], docs)
        rows = {t: task_rows(labels[t], cfg.min_per_class, t) for t in cfg.tasks}
        caps[site]["rows"] = rows
    timing = {"capture_s": time.perf_counter() - t0}
    texts = [d.get("text") or d["messages"][-1]["content"] for d in docs][::6]  # all kinds
    for name, sae in saes.items():
        t1 = time.perf_counter()
        cap = caps[sae.cfg.site]
        x, rows = cap["x"], cap["rows"]
        codes = sae.encode(x).float()                                          # (N, L)
        x_hat = sae.decode(codes)
        xd = x.double()
        fired = (codes != 0)
        r = {"arch": sae.cfg.arch, "site": sae.cfg.site, "n_latents": sae.cfg.n_latents,
             "rows": int(x.shape[0]),
             "l0": float(fired.sum(1).double().mean()),
             "fvu": float((xd - x_hat.double()).pow(2).sum() / (xd - xd.mean(0)).pow(2).sum()),
             "dead": float((fired.sum(0) == 0).double().mean())}
        part = {"encode_s": time.perf_counter() - t1}  # seconds per part, summed over seeds
        if cfg.core:
            t2 = time.perf_counter()
            mm = model_metrics(lm, sae, texts, batch_size=cfg.batch_size, progress=False)
            r.update({k: mm[k] for k in ("ce_increase", "kl", "ce_recovered") if k in mm})
            part["model_metrics_s"] = time.perf_counter() - t2
        W_raw = sae.W_dec.detach().float() / sae.cfg.scale_out                 # (L, d) raw units
        pooled_x = _pool(x, cap["doc"], len(docs))
        pooled_z = _pool(codes, cap["doc"], len(docs))
        per_seed = {}
        for seed in range(cfg.seeds):
            s = {}
            clock = _Clock(part)
            for t in cfg.tasks:
                z, xx = (pooled_z, pooled_x) if t == "corpus_kind" else (codes, x)
                for k, v in sparse_probing(z, xx, rows[t], cfg.ks, seed).items():
                    s[f"probe/{t}/{k}"] = v
            clock("probing_s")
            if "first_letter" in cfg.tasks:
                a = absorption(codes, x, W_raw, rows["first_letter"], seed, cfg.absorption_cos)
                s["absorption"], s["main_latent_silent"] = a["absorption"], a["main_latent_silent"]
                clock("absorption_s")
            if "corpus_kind" in cfg.tasks:
                s.update({f"tpp/{k}": v for k, v in
                          tpp(pooled_x, pooled_z, W_raw, rows["corpus_kind"], seed, cfg.tpp_latents).items()})
                clock("tpp_s")
            s["detection"] = detection(codes, cap["tokens"], seed, cfg.autointerp_latents)["detection"]
            clock("detection_s")
            for k, v in s.items():
                per_seed.setdefault(k, []).append(v)
        r["scores"] = {k: _t_ci(v) for k, v in per_seed.items()}
        r["seconds"] = time.perf_counter() - t1
        r["timing"] = part
        res["saes"][name] = r
        if progress:
            print(f"bench {name}: L0 {r['l0']:.1f}, FVU {r['fvu']:.3f}, {r['seconds']:.0f}s", flush=True)
    timing["total_s"] = time.perf_counter() - t0
    res["timing"] = timing
    return res


def pareto_plot(res: dict, path, metrics: Sequence[str] = ("fvu", "ce_increase", "absorption",
                                                           "probe/first_letter/k=1", "detection")):
    """One panel per metric against L0, a point (with its seed interval) per SAE."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in metrics if any(m in r or m in r["scores"] for r in res["saes"].values())]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for name, r in res["saes"].items():
            v = r["scores"].get(m) or {"mean": r.get(m, float("nan")), "ci95": 0.0}
            ax.errorbar([r["l0"]], [v["mean"]], yerr=[v["ci95"] if v["ci95"] == v["ci95"] else 0],
                        fmt="o", label=name, capsize=3)
        ax.set_xscale("log")
        ax.set_xlabel("L0")
        ax.set_title(m, fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_bench(res: dict, out) -> "Path":
    """``out/bench.json`` (atomic) and ``out/pareto.png``; returns the folder."""
    from pathlib import Path
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "bench.json", res)
    pareto_plot(res, out / "pareto.png")
    return out
