"""The analysis pass: SAE codes over an activation store -> per-latent statistics -> Parquet.

One streaming pass over the store's shards (whole windows per batch, so every context is
complete) feeds a ``FeatureState``; ``finalize`` turns the state into tables beside the SAE::

    <sae>/features/state.safetensors     the mergeable state (incremental analysis)
    <sae>/features/analysis.json         settings, sources, timings, conventions
    <sae>/features/features.parquet      latent, count, density, mean_act, max_act, x, y, ...
    <sae>/features/examples.parquet      latent, kind (top | quantile), quantile, rank, value,
                                         tokens, token_strs, acts, center
    <sae>/features/histogram.parquet     latent, bin, lo, hi, count
    <sae>/features/logits.parquet        latent, kind (promoted | suppressed), rank, token, value
    <sae>/features/neighbours.parquet    latent, rank, neighbour, cosine (decoder cosine)
    <sae>/features/token_features.parquet token, token_str, latent, count, sum, mean

>>> # from mindscope.features import analyze
>>> # fs = analyze(sae, "acts/l15", lm=lm)          # -> FeatureSet; fs.query("select ...")
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..core import BadInputError, atomic_write, atomic_write_text, read_json
from ..core import run_lock
from ._state import FeatureState, hist_edges

log = logging.getLogger(__name__)


@dataclass
class AnalysisConfig:
    """Settings of the analysis pass (recorded in analysis.json)."""

    top_k: int = 16
    """Top activating examples kept per latent."""
    context: tuple = (16, 7)
    """(left, right) tokens of context kept around each example token."""
    reservoir: int = 4
    """Occurrences sampled per (latent, reservoir bin); also examples per quantile."""
    n_quantiles: int = 4
    """Activation-quantile groups of the quantile examples."""
    n_logits: int = 10
    """Top promoted and suppressed tokens per latent."""
    logit_final_norm: bool = True
    """Logit effects through the final norm (lm.unembed(W_dec[i]) - lm.unembed(0)): the norm's
    gain is applied, its 1/rms is a positive per-latent scale. False: W_U @ W_dec[i] only."""
    n_neighbours: int = 10
    """Nearest latents by decoder cosine."""
    map_method: str = "auto"
    """2-D map of decoder directions: 'umap' (needs umap-learn), 'pca', or 'auto'."""
    batch_rows: int = 4096
    """Rows per SAE batch (rounded to whole windows)."""
    max_token_pairs: int = 2_000_000
    """Most (token, latent) pairs kept for token -> feature search (largest sums kept)."""

    def __post_init__(self):
        self.context = tuple(int(c) for c in self.context)
        if len(self.context) != 2 or min(self.context) < 0:
            raise ValueError(f"context must be (left, right) >= 0, got {self.context}")
        if self.map_method not in ("auto", "umap", "pca"):
            raise ValueError(f"map_method must be 'auto', 'umap' or 'pca', not {self.map_method!r}")
        for k in ("top_k", "reservoir", "n_quantiles", "batch_rows"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1")


def features_dir(sae_dir: Union[str, Path]) -> Path:
    return Path(sae_dir) / "features"


def write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str))


def _window_batches(n_rows: int, window: np.ndarray, batch_rows: int):
    """Row ranges [a, b) of about batch_rows rows that never split a window."""
    starts = np.flatnonzero(np.r_[True, window[1:] != window[:-1]])  # first row of each window
    a = 0
    while a < n_rows:
        b = min(a + batch_rows, n_rows)
        if b < n_rows:
            i = int(np.searchsorted(starts, b, side="right")) - 1
            if starts[i] > a:
                b = int(starts[i])
            else:  # one window longer than batch_rows: take it whole
                b = int(starts[i + 1]) if i + 1 < len(starts) else n_rows
        yield a, b
        a = b


@torch.no_grad()
def encode(sae, x: torch.Tensor) -> torch.Tensor:
    """Dense non-negative codes (B, n) in float32, on the CPU (where the feature state lives);
    the encoder runs on the SAE's device."""
    return sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype)).float().clamp(min=0).cpu()


def run_pass(sae, store, state: FeatureState, shards=None, max_rows: Optional[int] = None,
             batch_rows: int = 4096, progress: bool = True) -> dict:
    """Feed ``shards`` (default all) of ``store`` through ``sae`` into ``state``.
    Returns dict(rows, shards, seconds)."""
    from ..activations import to_float32

    site = sae.cfg.site or None
    if site and site not in store.sites:
        raise ValueError(f"the SAE reads site {site!r} but the store {store.path} holds "
                         f"{store.sites}; harvest that site or pick the matching SAE")
    site = site or store._site(None)
    if store.d_model != sae.cfg.d_in and store.manifest["stats"].get(site) is not None:
        raise ValueError(f"store rows have d={store.d_model}, the SAE expects d_in={sae.cfg.d_in}")
    shards = list(range(len(store.shards))) if shards is None else list(shards)
    total = sum(store.shards[k]["rows"] for k in shards)
    if max_rows is not None:
        total = min(total, max_rows)
    bar = tqdm(total=total, unit="tok", unit_scale=True, desc="features", disable=not progress)
    t0, done, used = time.time(), 0, []
    for k in shards:
        if max_rows is not None and done >= max_rows:
            break
        arr = store.load(site, k)
        meta = store.metadata(k, columns=["token", "window"])
        tok = meta.column("token").to_numpy().astype(np.int64)
        win = meta.column("window").to_numpy().astype(np.int64)
        n = len(tok)
        if max_rows is not None and done + n > max_rows:  # stop at a window boundary
            n = max_rows - done
            while n > 0 and n < len(win) and win[n] == win[n - 1]:
                n -= 1
            if n == 0:
                break
        for a, b in _window_batches(n, win[:n], batch_rows):
            x = to_float32(arr[a:b], store.manifest["dtype"])  # (B, d)
            state.update(encode(sae, x), torch.from_numpy(tok[a:b]), torch.from_numpy(win[a:b]))
            bar.update(b - a)
        done += n
        used.append(k)
    bar.close()
    return {"rows": done, "shards": used, "seconds": time.time() - t0}


# ---- per-latent tables ------------------------------------------------------------------------

class TokenStrings:
    """Cached ``tokenizer.decode([id])`` per token id."""

    def __init__(self, tokenizer):
        self.tok, self.cache = tokenizer, {}

    def __call__(self, ids) -> list[str]:
        out = []
        for i in ids:
            i = int(i)
            if i not in self.cache:
                self.cache[i] = self.tok.decode([i]) if self.tok is not None else f"<{i}>"
            out.append(self.cache[i])
        return out


@torch.no_grad()
def logit_effects(lm, W_dec: torch.Tensor, n: int = 10, final_norm: bool = True,
                  chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top promoted / suppressed tokens of each decoder row.

    final_norm=True: e_i = lm.unembed(W_dec[i]) - lm.unembed(0) (the final norm's gain applied,
    the direction divided by its own rms; bias terms cancel). final_norm=False: e_i = W_U @ W_dec[i].
    Returns (pos_vals, pos_ids, neg_vals, neg_ids), each (n_latents, n)."""
    head = lm.module(lm.family_spec.lm_head)
    W = W_dec.detach().to(lm.device, lm.dtype)
    base = lm.unembed(torch.zeros(1, W.shape[1])).float() if final_norm else None
    pv, pi, nv, ni = [], [], [], []
    for a in range(0, W.shape[0], chunk):
        w = W[a:a + chunk]
        e = (lm.unembed(w).float() - base) if final_norm else (w @ head.weight.T).float()  # (c, V)
        v, i = e.topk(n, dim=1)
        pv.append(v.cpu()), pi.append(i.cpu())
        v, i = (-e).topk(n, dim=1)
        nv.append(-v.cpu()), ni.append(i.cpu())
    return torch.cat(pv), torch.cat(pi), torch.cat(nv), torch.cat(ni)


@torch.no_grad()
def decoder_neighbours(W_dec: torch.Tensor, n: int = 10, chunk: int = 1024):
    """(cosines (N, n), indices (N, n)) of the nearest other rows by cosine."""
    W = torch.nn.functional.normalize(W_dec.detach().float().cpu(), dim=1)
    n = min(n, W.shape[0] - 1)
    vals, idx = [], []
    for a in range(0, W.shape[0], chunk):
        c = W[a:a + chunk] @ W.T  # (c, N)
        c[torch.arange(c.shape[0]), torch.arange(a, a + c.shape[0])] = -float("inf")
        v, i = c.topk(n, dim=1)
        vals.append(v), idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def decoder_map(W_dec: torch.Tensor, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """2-D coordinates (N, 2) of the unit decoder directions: UMAP (cosine) or PCA."""
    W = torch.nn.functional.normalize(W_dec.detach().float().cpu(), dim=1)
    if method in ("auto", "umap"):
        try:
            import umap  # type: ignore
            xy = umap.UMAP(n_components=2, metric="cosine", random_state=seed,
                           n_neighbors=min(15, max(2, W.shape[0] - 1))).fit_transform(W.numpy())
            return np.asarray(xy, dtype=np.float32), "umap"
        except ImportError:
            if method == "umap":
                raise ImportError("map_method='umap' needs umap-learn (pip install umap-learn); "
                                  "use 'pca' or 'auto'") from None
    X = W - W.mean(0)
    _, _, V = torch.linalg.svd(X, full_matrices=False)
    return (X @ V[:2].T).numpy().astype(np.float32), "pca"


def _ctx_lists(tok: np.ndarray, act: np.ndarray, left: int):
    """Drop -1 pads; returns (tokens, acts, center)."""
    keep = tok >= 0
    center = int(keep[:left].sum())
    return tok[keep].astype(np.int32), act[keep].astype(np.float32), center


def finalize(state: FeatureState, out: Path, sae, lm=None, cfg: Optional[AnalysisConfig] = None,
             tokenizer=None, info: Optional[dict] = None, progress: bool = True) -> dict:
    """Write every table of ``state`` into ``out`` (see module doc). Returns analysis.json."""
    import pyarrow as pa

    cfg = cfg or AnalysisConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("features.parquet", "analysis.json"):  # rewritten last: their absence marks
        (out / name).unlink(missing_ok=True)              # an unfinished analysis
    tokenizer = tokenizer if tokenizer is not None else getattr(lm, "tokenizer", None)
    ts = TokenStrings(tokenizer)
    n = state.n
    W_dec = sae.W_dec.detach().float().cpu()
    t0 = time.time()
    # examples
    rows: dict[str, list] = {k: [] for k in ("latent", "kind", "quantile", "rank", "value", "row",
                                              "tokens", "token_strs", "acts", "center")}

    def add(j, kind, q, rank, value, row, tok, act):
        t, a, c = _ctx_lists(np.asarray(tok), np.asarray(act), state.left)
        for k, v in zip(rows, (j, kind, q, rank, float(value), int(row), t.tolist(), ts(t),
                               a.tolist(), c)):
            rows[k].append(v)

    top_val, top_row = state.top_val.numpy(), state.top_row.numpy()
    top_tok, top_act = state.top_tok.numpy(), state.top_act.numpy().astype(np.float32)
    for j in tqdm(range(n), desc="examples", disable=not progress or n < 2048, leave=False):
        for r in range(state.K):
            if top_row[j, r] >= 0:
                add(j, "top", -1, r, top_val[j, r], top_row[j, r], top_tok[j, r], top_act[j, r])
        if state.count[j] > 0:
            for q, group in enumerate(state.quantile_samples(j, cfg.n_quantiles)):
                for r, e in enumerate(group):
                    add(j, "quantile", q, r, e["value"], e["row"], e["tokens"],
                        e["acts"].astype(np.float32))
    write_parquet(pa.table(rows), out / "examples.parquet")
    # histogram (non-empty bins)
    h = state.hist.numpy()
    jj, bb = np.nonzero(h)
    edges = hist_edges()
    write_parquet(pa.table({"latent": jj.astype(np.int32), "bin": bb.astype(np.int32),
                            "lo": [edges[b][0] for b in bb], "hi": [edges[b][1] for b in bb],
                            "count": h[jj, bb]}), out / "histogram.parquet")
    # neighbours
    nv, ni = decoder_neighbours(W_dec, cfg.n_neighbours)
    m = nv.shape[1]
    write_parquet(pa.table({"latent": np.repeat(np.arange(n), m).astype(np.int32),
                            "rank": np.tile(np.arange(m), n).astype(np.int32),
                            "neighbour": ni.numpy().ravel().astype(np.int32),
                            "cosine": nv.numpy().ravel()}), out / "neighbours.parquet")
    # logit effects
    top_promoted = [""] * n
    if lm is not None and W_dec.shape[1] == lm.d_model:
        pv, pi, lv, li = logit_effects(lm, W_dec, cfg.n_logits, cfg.logit_final_norm)
        k = pv.shape[1]
        ids = torch.cat([pi, li], 1).numpy()
        vals = torch.cat([pv, lv], 1).numpy()
        strs = ts(ids.ravel())
        write_parquet(pa.table({
            "latent": np.repeat(np.arange(n), 2 * k).astype(np.int32),
            "kind": (["promoted"] * k + ["suppressed"] * k) * n,
            "rank": np.tile(np.r_[np.arange(k), np.arange(k)], n).astype(np.int32),
            "token": ids.ravel().astype(np.int32), "token_str": strs, "value": vals.ravel()}),
            out / "logits.parquet")
        top_promoted = [" ".join(repr(s) for s in strs[j * 2 * k: j * 2 * k + 3]) for j in range(n)]
    # background contexts (negatives for detection scoring) and their sparse codes
    ok = np.flatnonzero(state.bg_row >= 0)
    bt, ba, bi, bp, bl, bv = [], [], [], [], [], []
    for b in ok:
        t = state.bg_tok[b]
        keep = np.flatnonzero(t >= 0)
        bt.append(t[keep].tolist())
        ba.append(ts(t[keep]))
        for p_new, p_old in enumerate(keep):
            idx, val = state.bg_idx[b, p_old], state.bg_val[b, p_old]
            m = idx >= 0
            bi += [int(b)] * int(m.sum()); bp += [p_new] * int(m.sum())
            bl += idx[m].tolist(); bv += val[m].astype(np.float32).tolist()
    write_parquet(pa.table({"bg": ok.astype(np.int32), "row": state.bg_row[ok],
                            "tokens": bt, "token_strs": ba,
                            "center": [int((state.bg_tok[b][:state.left] >= 0).sum()) for b in ok]}),
                  out / "background.parquet")
    write_parquet(pa.table({"bg": np.asarray(bi, np.int32), "pos": np.asarray(bp, np.int32),
                            "latent": np.asarray(bl, np.int32), "act": np.asarray(bv, np.float32)}),
                  out / "background_codes.parquet")
    # token -> features
    tk, lat, cnt, sm = state.token_pairs()
    write_parquet(pa.table({"token": tk.astype(np.int32), "token_str": ts(tk),
                            "latent": lat.astype(np.int32), "count": cnt, "sum": sm,
                            "mean": sm / np.maximum(cnt, 1)}), out / "token_features.parquet")
    # features table
    xy, method = decoder_map(W_dec, cfg.map_method)
    cnt_all = state.count.numpy()
    N = max(state.n_rows, 1)
    features = pa.table({
        "latent": np.arange(n, dtype=np.int32), "count": cnt_all,
        "density": cnt_all / N, "mean_act": state.total.numpy() / np.maximum(cnt_all, 1),
        "max_act": state.max.numpy(), "x": xy[:, 0], "y": xy[:, 1],
        "top_logits": top_promoted})
    doc = {"format": "mindscope-features/1", "n_latents": n, "n_rows": state.n_rows,
           "config": asdict(cfg), "sae": {"arch": sae.cfg.arch, "site": sae.cfg.site,
                                          "model": sae.cfg.model, "k": sae.cfg.k},
           "model": getattr(lm, "name", None), "map_method": method,
           "logit_effects": ("lm.unembed(W_dec[i]) - lm.unembed(0): final norm applied (gain; "
                             "the direction is divided by its own rms)" if cfg.logit_final_norm
                             else "W_U @ W_dec[i]: final norm NOT applied"),
           "density": "fraction of analysed rows with f_i > 0",
           "token_pairs_pruned": state.tp_pruned,
           "finalize_seconds": time.time() - t0, **(info or {})}
    write_json(out / "analysis.json", doc)
    write_parquet(features, out / "features.parquet")  # last: FeatureSet opens only finished ones
    return doc


def analyze(sae, store, lm=None, out: Optional[Union[str, Path]] = None,
            cfg: Optional[AnalysisConfig] = None, append: bool = False,
            max_tokens: Optional[int] = None, shards=None, tokenizer=None,
            progress: bool = True):
    """Analyse every latent of ``sae`` (an SAE or its folder) over activation ``store`` (an
    ActivationStore or its folder). ``lm`` gives token strings and logit effects (optional:
    ``tokenizer=`` alone gives strings). ``out`` defaults to ``<sae folder>/features``.
    ``append=True`` adds this store's not-yet-analysed shards to an existing analysis (the
    states merge: top-k merge, counts and histograms add, reservoirs merge). Returns a FeatureSet."""
    from ..sae import load_any

    sae_dir = None
    if isinstance(sae, (str, Path)):
        sae_dir = Path(sae)
        sae = load_any(sae_dir)
    if out is None:
        if sae_dir is None:
            raise ValueError("pass out= (or give the SAE as a folder path)")
        out = features_dir(sae_dir)
    with run_lock(out, "feature analysis"):
        return _analyze(sae, store, lm, Path(out), cfg, append, max_tokens, shards, tokenizer,
                        progress)


def _previous(state: FeatureState, info_p: Path) -> dict:
    """Sources and settings of the analysis a state belongs to: saved inside the state (written
    in the same atomic step), else (older states) in analysis.json."""
    if state.extra.get("sources") is not None:
        return state.extra
    if not info_p.exists():
        return {}
    return read_json(info_p, expect=dict, what="analysis record",
                     fix="delete the features folder and analyse again without --append")


def _analyze(sae, store, lm, out: Path, cfg, append, max_tokens, shards, tokenizer, progress):
    from ..activations import ActivationStore
    from ._tables import FeatureSet

    store = store if isinstance(store, ActivationStore) else ActivationStore.open(store)
    cfg = cfg or AnalysisConfig()
    if lm is not None:
        sae = sae.to(lm.device)     # the device policy: the SAE follows the model
    state_p, info_p = out / "state.safetensors", out / "analysis.json"
    sources: list = []
    if append and state_p.exists():
        state = FeatureState.load(state_p)
        old = _previous(state, info_p)
        sources = old.get("sources", [])
        try:
            cfg = AnalysisConfig(**{**old.get("config", {}), "batch_rows": cfg.batch_rows}) \
                if old.get("config") else cfg
            if not isinstance(sources, list) or not all(
                    isinstance(x, dict) and isinstance(x.get("shards"), list) for x in sources):
                raise ValueError("'sources' should be a list of {store, shards, ...}")
        except (TypeError, ValueError) as e:
            raise BadInputError(info_p, f"the previous analysis' record is unusable ({e})",
                                "analyse again without --append") from None
        if state.n != sae.cfg.n_latents:
            raise ValueError(f"{state_p} has {state.n} latents, the SAE {sae.cfg.n_latents}")
    else:
        state = FeatureState(sae.cfg.n_latents, cfg.top_k, cfg.context, cfg.reservoir,
                             max_token_pairs=cfg.max_token_pairs)
    sha = store.manifest.get("tokens_sha256")
    seen = {k for s in sources if s.get("tokens_sha256") == sha for k in s["shards"]}
    todo = [k for k in (range(len(store.shards)) if shards is None else shards) if k not in seen]
    if not todo:
        log.warning("every shard of %s is already in this analysis; nothing added", store.path)
    run = run_pass(sae, store, state, todo, max_tokens, cfg.batch_rows, progress)
    sources.append({"store": str(store.path), "tokens_sha256": sha, "shards": run["shards"],
                    "rows": run["rows"], "seconds": run["seconds"]})
    state.save(state_p, extra={"sources": sources, "config": asdict(cfg)})
    rate = run["rows"] / max(run["seconds"], 1e-9)
    log.info("analysed %d rows in %.1fs (%.0f tok/s)", run["rows"], run["seconds"], rate)
    finalize(state, out, sae, lm, cfg, tokenizer,
             {"sources": sources, "pass_seconds": run["seconds"], "pass_tokens_per_s": rate},
             progress=progress)
    return FeatureSet(out)


def analyze_corpus(sae, lm, corpus="default", n_tokens: int = 100_000,
                   out: Optional[Union[str, Path]] = None, window: int = 128,
                   keep_activations: bool = False, **kw):
    """Run ``lm`` over ``n_tokens`` of ``corpus`` (harvesting the SAE's site into
    ``<out>/_acts``, bfloat16), then ``analyze``. The activations are deleted afterwards unless
    ``keep_activations`` (analysing a store you already have is cheaper: no model runs)."""
    import shutil

    from ..activations import harvest
    from ..sae import SAE

    sae_obj = SAE.load(sae) if isinstance(sae, (str, Path)) else sae
    if out is None:
        if not isinstance(sae, (str, Path)):
            raise ValueError("pass out= (or give the SAE as a folder path)")
        out = features_dir(sae)
    acts = Path(out) / "_acts"
    if not sae_obj.cfg.site:
        raise ValueError("the SAE config names no site; harvest a store and use analyze(store=)")
    store = harvest(lm, acts, sites=sae_obj.cfg.site, corpus=corpus, n_tokens=n_tokens,
                    window=window, store_dtype="bfloat16", progress=kw.get("progress", True))
    try:
        return analyze(sae_obj, store, lm=lm, out=out, **kw)
    finally:
        if not keep_activations:
            shutil.rmtree(acts, ignore_errors=True)
