"""SAE quality metrics on held-out activations, metrics with the SAE spliced into the model,
and plots.

On activations (rows y, reconstructions y_hat = sae(x); raw units; sums over all held-out rows):

    MSE                 = (1/N) sum_b ||y_b - y_hat_b||^2
    FVU                 = sum_b ||y_b - y_hat_b||^2 / sum_b ||y_b - mean(y)||^2
    explained variance  = 1 - FVU
    L0                  = (1/N) sum_b #{i : f_bi != 0}
    density_i           = (1/N) #{b : f_bi != 0};  dead fraction = mean_i [density_i == 0]
    cosine              = (1/N) sum_b <y_b, y_hat_b> / (||y_b|| ||y_hat_b||)

In the model (``model_metrics``; the SAE output replaces the site, no error term):

    dCE          = CE(spliced) - CE(clean)
    KL           = mean over predicted tokens of KL(p_clean || p_spliced)
    CE recovered = (CE(zero-ablated) - CE(spliced)) / (CE(zero-ablated) - CE(clean))

>>> import torch
>>> from mindscope.sae import SAE, SAEConfig
>>> sae = SAE(SAEConfig("relu", 4, 8))
>>> m = evaluate(sae, [torch.randn(16, 4)], outlier_factor=None)
>>> round(m["fvu"] + m["explained_variance"], 6)
1.0
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Optional

import torch
from tqdm.auto import tqdm

from ..core import module_device
from ._data import drop_outliers

log = logging.getLogger(__name__)


@torch.no_grad()
def evaluate(sae, batches: Iterable, max_batches: Optional[int] = None,
             outlier_factor: Optional[float] = 10.0, hist_bins: int = 40) -> dict:
    """Metrics of ``sae`` on held-out ``batches`` ((B, d) or (x, y) pairs). Rows whose norm exceeds
    ``outlier_factor`` x the batch median are excluded (reported as ``excluded_rows``)."""
    n = sae.cfg.n_latents
    dev = module_device(sae) if isinstance(sae, torch.nn.Module) else torch.device("cpu")
    # batches follow the SAE's device; sums accumulate in fp64
    se = sq = 0.0
    s1 = None
    N = excluded = 0
    l0 = cos = 0.0
    counts = torch.zeros(n, dtype=torch.float64, device=dev)
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, batch)
        x, y = x.to(dev, torch.float32), y.to(dev, torch.float32)
        if outlier_factor:
            keep = drop_outliers(x, outlier_factor) & drop_outliers(y, outlier_factor)
            excluded += int((~keep).sum())
            x, y = x[keep], y[keep]
        f = sae.encode(x)                                              # (B, n)
        y_hat = sae.decode(f)                                          # (B, d)
        yd = y.double()
        se += float((y - y_hat).double().pow(2).sum())
        sq += float(yd.pow(2).sum())
        s1 = yd.sum(0) if s1 is None else s1 + yd.sum(0)
        N += y.shape[0]
        active = f != 0
        l0 += float(active.sum())
        counts += active.sum(0).double()
        cos += float(torch.nn.functional.cosine_similarity(y, y_hat, dim=-1).double().sum())
    if N == 0:
        raise ValueError("evaluate: no rows (empty batches, or all excluded as outliers)")
    total_var = sq - float(s1.pow(2).sum()) / N                        # sum ||y - mean||^2
    fvu = se / total_var
    density = (counts / N).cpu()
    logd = torch.log10(density[density > 0])
    hist, edges = (torch.histogram(logd.float(), bins=hist_bins) if logd.numel()
                   else (torch.zeros(hist_bins), torch.zeros(hist_bins + 1)))
    return {"rows": N, "excluded_rows": excluded, "mse": se / N, "fvu": fvu,
            "explained_variance": 1.0 - fvu, "l0": l0 / N,
            "dead_fraction": float((counts == 0).double().mean()), "cosine": cos / N,
            "density_hist": {"log10_density_edges": edges.tolist(), "counts": hist.tolist()},
            "density": density.float()}


@torch.no_grad()
def model_metrics(lm, sae, texts, site: Optional[str] = None, batch_size: int = 8,
                  skip_first: bool = True, progress: Optional[bool] = None) -> dict:
    """CE-loss increase, KL to the clean model and fraction of CE recovered vs zero-ablation,
    with the SAE reconstruction replacing ``site`` (default ``sae.cfg.site``). ``skip_first``
    leaves position 0 (the BOS-like outlier row) untouched in both the spliced and ablated runs.

    ``sae`` may be a dict ``{name: SAE}`` (SAEs of one site, e.g. a sweep): the clean and the
    zero-ablated runs are then done once, and the result is ``{name: metrics}``. A progress bar
    (forward passes/s) shows when there are more than 4 passes, or when ``progress=True``."""
    import mindscope as ms

    many = isinstance(sae, dict)
    saes = sae if many else {"_": sae}
    if not saes:
        raise ValueError("model_metrics: no SAEs given")
    sites = {site or s.cfg.site for s in saes.values()}
    if "" in sites or None in sites:
        raise ValueError("model_metrics: an SAE config has no site; pass site=")
    if len(sites) != 1:
        raise ValueError(f"model_metrics: the SAEs read different sites {sorted(sites)}; "
                         "call once per site")
    site = sites.pop()
    pos = slice(1, None) if skip_first else "all"
    ce = {"clean": 0.0, "zero": 0.0, **{("sae", k): 0.0 for k in saes}}
    kl = {k: 0.0 for k in saes}
    n_tok = 0
    n_batches = -(-len(texts) // batch_size)
    total = n_batches * (2 + len(saes))
    bar = tqdm(total=total, desc="model metrics", unit="pass",
               disable=not (progress if progress is not None else total > 4))
    for i in range(0, len(texts), batch_size):
        b = lm.tokenize(list(texts[i:i + batch_size]))
        m = (b.attention_mask[:, 1:] * b.attention_mask[:, :-1]).bool()   # (B, T-1) predicted tokens
        tgt = b.input_ids[:, 1:]
        m_dev = tgt_dev = None
        runs = {"clean": [], "zero": [ms.Replace(site, torch.zeros_like, positions=pos)],
                **{("sae", k): [ms.Splice(site, s, keep_error=False, positions=pos)]
                   for k, s in saes.items()}}
        lp_clean = None
        for key, ivs in runs.items():
            with lm.intervene(*ivs):
                lg = lm.forward(b).float()[:, :-1]                            # (B, T-1, V)
            if m_dev is None:         # targets and mask on the logits' device
                m_dev, tgt_dev = m.to(lg.device), tgt.to(lg.device)
            lp = lg.log_softmax(-1)
            ce[key] += float(-lp.gather(-1, tgt_dev[..., None]).squeeze(-1)[m_dev].sum())
            if key == "clean":
                lp_clean = lp[m_dev]                                         # (n, V)
            elif key != "zero":
                kl[key[1]] += float((lp_clean.exp() * (lp_clean - lp[m_dev])).sum())
            bar.update(1)
        n_tok += int(m.sum())
    bar.close()
    ce = {k: v / n_tok for k, v in ce.items()}
    den = ce["zero"] - ce["clean"]
    out = {}
    for k in saes:
        cs = ce[("sae", k)]
        out[k] = {"ce_clean": ce["clean"], "ce_spliced": cs, "ce_zero_ablation": ce["zero"],
                  "ce_increase": cs - ce["clean"], "kl": kl[k] / n_tok,
                  "ce_recovered": (ce["zero"] - cs) / den if den else float("nan"),
                  "predicted_tokens": n_tok, "positions": "1:" if skip_first else "all"}
    return out if many else out["_"]


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(history: list, path, title: str = "") -> Path:
    """Loss, FVU (train batch), L0 and dead fraction against tokens -> PNG."""
    plt = _plt()
    t = [h["tokens"] for h in history]
    fig, ax = plt.subplots(1, 4, figsize=(14, 3))
    for a, key in zip(ax, ["loss", "fvu", "l0", "dead"]):
        a.plot(t, [h.get(key) if h.get(key) is not None else math.nan for h in history])
        a.set_xlabel("tokens"); a.set_title(key)
        if key in ("loss", "fvu"):
            a.set_yscale("log")
    fig.suptitle(title); fig.tight_layout()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90); plt.close(fig)
    return path


def plot_density(metrics: dict, path, title: str = "") -> Path:
    """log10 feature-density histogram (dead latents noted in the title) -> PNG."""
    plt = _plt()
    h = metrics["density_hist"]
    e, c = h["log10_density_edges"], h["counts"]
    fig, ax = plt.subplots(figsize=(5, 3))
    if c:
        ax.bar(e[:-1], c, width=[b - a for a, b in zip(e[:-1], e[1:])], align="edge")
    ax.set_xlabel("log10 feature density"); ax.set_ylabel("latents")
    ax.set_title(f"{title} dead={100 * metrics['dead_fraction']:.1f}% L0={metrics['l0']:.1f} "
                 f"FVU={metrics['fvu']:.3f}", fontsize=8)
    fig.tight_layout()
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90); plt.close(fig)
    return path
