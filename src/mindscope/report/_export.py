"""Exports of a feature analysis: static HTML (``export_html``) and Neuronpedia's feature JSON
(``export_neuronpedia``).

The Neuronpedia layout is the one SAEDashboard's ``NeuronpediaRunner`` writes for upload:
``batch-<k>.json`` = ``{"model_id", "layer", "sae_set", "features": [...]}``, one dict per
feature with ``feature_index``, ``neg_str``/``neg_values`` and ``pos_str``/``pos_values``
(logit effects), ``frac_nonzero`` (density), ``freq_hist_data_bar_values``/``..._heights``
(activation histogram), ``logits_hist_data_bar_*`` (empty: not computed), neuron/feature
correlation fields (empty), ``n_prompts_total``, ``n_tokens_in_prompt``, ``dataset``,
``decoder_weights_dist`` (empty) and ``activations``: ``[{"tokens", "values", "bin_min",
"bin_max", "bin_contains", "qualifying_token_index"}]`` (top examples: bin_min -1; quantile
examples: their group's activation range).
"""
from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from tqdm.auto import tqdm

from . import _browser as B

from ..core import atomic_write_text

log = logging.getLogger(__name__)


def _write(path: Path, text: str) -> None:
    atomic_write_text(path, text)


# ---- static HTML ----------------------------------------------------------------------------
# The per-latent cost of the browser is ~9 DuckDB queries over the Parquet files (fs.feature and
# the map bounds); exporting thousands of pages ran them thousands of times. ``_Static`` reads
# each table once per chunk of latents instead and serves ``feature(i)`` from memory, so the page
# functions of ``_browser`` render unchanged (same HTML as the live server).

CHUNK = 512  # latents per bulk read: bounds memory (examples are the big table) and query count

_FEATURE_LINK = re.compile(r'<a href="feature-(\d+)\.html">(.*?)</a>', re.S)


def _group(rows: list) -> dict:
    out = defaultdict(list)
    for r in rows:
        out[r.pop("_g")].append(r)
    return out


def bulk_features(fs, latents: Sequence[int]) -> dict:
    """``{i: fs.feature(i)}`` for many latents with one query per table (same dicts, same row
    order as ``FeatureSet.feature``)."""
    ids = sorted({int(i) for i in latents})
    if not ids:
        return {}
    w = f"latent in ({','.join(map(str, ids))})"
    q = fs.query
    feats = {r["latent"]: dict(r) for r in q(f"select * from features where {w}")}
    top = _group(q(f"select latent _g, * from examples where {w} and kind = 'top' "
                   "order by latent, rank"))
    qua = _group(q(f"select latent _g, * from examples where {w} and kind = 'quantile' "
                   "order by latent, quantile desc, rank"))
    his = _group(q(f"select latent _g, bin, lo, hi, count from histogram where {w} "
                   "order by latent, bin"))
    lg = _group(q(f"select latent _g, kind, rank, token, token_str, value from logits where {w} "
                  "order by latent, kind, rank")) if fs.has("logits") else {}
    nb = _group(q("select n.latent _g, n.neighbour, n.cosine, f.density from neighbours n join "
                  f"features f on f.latent = n.neighbour where n.{w} order by n.latent, n.rank"))
    ex = _group(q(f"select latent _g, * from explanations where {w}")) \
        if fs.has("explanations") else {}
    sc = _group(q(f"select latent _g, * from scores where {w} order by latent, scorer")) \
        if fs.has("scores") else {}
    for i, d in feats.items():
        d["top"], d["quantiles"], d["histogram"] = top.get(i, []), qua.get(i, []), his.get(i, [])
        d["promoted"] = [r for r in lg.get(i, []) if r["kind"] == "promoted"]
        d["suppressed"] = [r for r in lg.get(i, []) if r["kind"] == "suppressed"]
        d["neighbours"] = nb.get(i, [])
        d["explanation"] = ex[i][0] if ex.get(i) else None
        d["scores"] = sc.get(i, [])
    return feats


class _Static:
    """The FeatureSet the static export hands to the page functions: ``feature(i)`` from a bulk
    read (``load``), repeated queries (the map bounds, once per page) answered once, and the
    feature list cut to the latents that get a page."""

    def __init__(self, fs, pages: frozenset):
        self.fs, self.info, self.path, self.pages = fs, fs.info, fs.path, pages
        self._feats: dict = {}
        self._memo: dict = {}

    @property
    def n_latents(self) -> int:
        return self.fs.n_latents

    def has(self, table: str) -> bool:
        return self.fs.has(table)

    def load(self, latents: Sequence[int]) -> None:
        self._feats = bulk_features(self.fs, latents)

    def feature(self, i: int, n_examples: Optional[int] = None) -> dict:
        return self._feats[int(i)] if n_examples is None else self.fs.feature(i, n_examples)

    def query(self, sql: str, params: Optional[list] = None) -> list:
        key = (sql, tuple(params or ()))
        if key not in self._memo:
            self._memo[key] = self.fs.query(sql, params)
        return self._memo[key]

    def feature_list(self, **kw) -> list:
        return [r for r in self.fs.feature_list(**kw) if r["latent"] in self.pages]


def unlink_missing(html: str, pages) -> str:
    """Drop the link (keep its text) of every ``feature-<i>.html`` not in ``pages``: a static
    export of some latents never points at a page it did not write (neighbours, map points)."""
    return _FEATURE_LINK.sub(lambda m: m.group(0) if int(m.group(1)) in pages else m.group(2),
                             html)


def export_html(root, out, latents: Optional[Sequence[int]] = None, progress: bool = True) -> Path:
    """Write the browser as static files into ``out``: index.html, feature-<i>.html (every latent
    that fired, or ``latents``), map.svg, live-only.html (the text and steering pages need the
    model and are omitted). The index lists exactly the latents that got a page, and no page
    links to a feature page it did not write (`mindscope serve` shows every latent). Returns the
    index path.

    >>> # export_html("runs/sae", "runs/sae/html", latents=[3, 17, 40])   # 3 pages + index
    """
    from ..features import FeatureSet

    fs = FeatureSet(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if latents is None:
        latents = [r["latent"] for r in fs.query("select latent from features where count > 0 "
                                                 "order by latent")]
    latents = sorted({int(i) for i in latents})
    bad = [i for i in latents if not 0 <= i < fs.n_latents]
    if bad:
        raise IndexError(f"feature {bad[0]} out of range: this analysis has {fs.n_latents} latents")
    pages = frozenset(latents)
    view = _Static(fs, pages)
    index = unlink_missing(B.index_page(view, "static", "density", True), pages)
    if len(pages) < fs.n_latents:
        note = (f'<p class="note">Static pages for {len(pages):,} of {fs.n_latents:,} latents; '
                "<code>mindscope serve</code> shows every latent, the text and the steering "
                "pages.</p>")
        index = index.replace("<section><h2>Features</h2>", note + "<section><h2>Features</h2>", 1)
    _write(out / "index.html", index)
    _write(out / "map.svg", unlink_missing(B.map_svg(fs, "static"), pages))
    _write(out / "live-only.html", B.live_only_page())
    bar = tqdm(total=len(latents), desc="export html", disable=not progress)
    for a in range(0, len(latents), CHUNK):
        chunk = latents[a:a + CHUNK]
        view.load(chunk)
        for i in chunk:
            _write(out / f"feature-{i}.html", unlink_missing(B.feature_page(view, i, "static"),
                                                             pages))
        bar.update(len(chunk))
    bar.close()
    log.info("exported %d feature pages to %s", len(latents), out)
    return out / "index.html"


def neuronpedia_feature(fs, i: int, n_tokens_in_prompt: int = 128, dataset: str = "") -> dict:
    """One feature in the SAEDashboard/Neuronpedia upload layout (see module doc)."""
    d = fs.feature(i)
    acts = []
    for x in d["top"]:
        acts.append({"tokens": x["token_strs"], "values": [round(float(v), 4) for v in x["acts"]],
                     "bin_min": -1, "bin_max": -1, "bin_contains": -1,
                     "qualifying_token_index": int(x["center"])})
    for q in sorted({x["quantile"] for x in d["quantiles"]}, reverse=True):
        ex = [x for x in d["quantiles"] if x["quantile"] == q]
        lo, hi = min(x["value"] for x in ex), max(x["value"] for x in ex)
        for x in ex:
            acts.append({"tokens": x["token_strs"],
                         "values": [round(float(v), 4) for v in x["acts"]],
                         "bin_min": round(lo, 4), "bin_max": round(hi, 4),
                         "bin_contains": len(ex), "qualifying_token_index": int(x["center"])})
    h = d["histogram"]
    return {
        "feature_index": int(i),
        "neuron_alignment_indices": [], "neuron_alignment_values": [], "neuron_alignment_l1": [],
        "correlated_neurons_indices": [], "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [], "correlated_features_indices": [],
        "correlated_features_l1": [], "correlated_features_pearson": [],
        "neg_str": [r["token_str"] for r in d["suppressed"]],
        "neg_values": [round(float(r["value"]), 4) for r in d["suppressed"]],
        "pos_str": [r["token_str"] for r in d["promoted"]],
        "pos_values": [round(float(r["value"]), 4) for r in d["promoted"]],
        "frac_nonzero": float(d["density"]),
        "freq_hist_data_bar_values": [round((r["lo"] * r["hi"]) ** 0.5 if r["lo"] > 0 and
                                            r["hi"] != float("inf") else r["lo"] or r["hi"], 5)
                                      for r in h],
        "freq_hist_data_bar_heights": [int(r["count"]) for r in h],
        "logits_hist_data_bar_heights": [], "logits_hist_data_bar_values": [],
        "n_prompts_total": int(fs.info.get("n_rows", 0)) // max(n_tokens_in_prompt, 1),
        "n_tokens_in_prompt": n_tokens_in_prompt, "dataset": dataset,
        "decoder_weights_dist": [],
        "activations": acts,
    }


def export_neuronpedia(root, out, model_id: str = "", layer: Optional[int] = None,
                       sae_set: str = "", batch_size: int = 128,
                       latents: Optional[Sequence[int]] = None, progress: bool = True) -> list[Path]:
    """Write ``batch-<k>.json`` files of ``batch_size`` features each into ``out``."""
    from ..features import FeatureSet

    fs = FeatureSet(root)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    site = fs.info.get("sae", {}).get("site", "") or ""
    if layer is None:
        tail = site.rsplit(".", 1)[-1]
        layer = int(tail) if tail.isdigit() else 0
    model_id = model_id or str(fs.info.get("model") or fs.info.get("sae", {}).get("model", ""))
    sae_set = sae_set or f"{layer}-mindscope-{site.split('.')[0] or 'sae'}"
    n_tok = int((fs.info.get("config", {}).get("context") or [16, 7])[0]) + 1 + \
        int((fs.info.get("config", {}).get("context") or [16, 7])[1])
    if latents is None:
        latents = list(range(fs.n_latents))
    paths = []
    for k, a in enumerate(tqdm(range(0, len(latents), batch_size), desc="export neuronpedia",
                               disable=not progress)):
        feats = [neuronpedia_feature(fs, int(i), n_tok) for i in latents[a:a + batch_size]]
        p = out / f"batch-{k}.json"
        _write(p, json.dumps({"model_id": model_id, "layer": layer, "sae_set": sae_set,
                              "features": feats}))
        paths.append(p)
    return paths
