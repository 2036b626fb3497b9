"""Graph files and interventions.

- ``save_graph`` / ``load_graph``: a graph as ``graph.safetensors`` (tensors) + JSON metadata.
- ``graph_json``: the pruned graph in the JSON schema circuit-tracer's ``create_graph_files``
  writes and Neuronpedia's graph viewer reads (metadata, qParams, nodes, links; node ids
  ``{layer}_{feature}_{pos}``, errors ``0_{layer}_{pos}``, tokens ``E_{vocab}_{pos}``, logits
  ``{n_layers+1}_{vocab}_{pos}``).
- ``intervene``: the model's last-position logits with features set (error terms kept), and
  ``check_interventions``: zero / clamp the most influential features and compare the measured
  change of the target logit with the change the graph predicts.

>>> # d = graph_json(g, prune(g), slug="capital"); d["nodes"][0]["node_id"]
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch

from ..core import BadInputError, atomic_save_tensors, atomic_write_json, load_safetensors, read_json
from ._graph import Graph
from ._prune import Pruned, prune, total_effects
from ._splice import splice

GRAPH_FORMAT = "mindscope-graph/1"


def save_graph(g: Graph, path) -> Path:
    path = Path(path)
    t = {"features": g.features, "activations": g.activations, "logit_probs": g.logit_probs,
         "edges": g.edges, "weights": g.weights, "target_values": g.target_values}
    meta = {"format": GRAPH_FORMAT, "prompt": g.prompt, "tokens": g.tokens,
            "token_strs": g.token_strs, "logit_tokens": g.logit_tokens,
            "logit_strs": g.logit_strs, "n_layers": g.n_layers, "model": g.model,
            "transcoders": g.transcoders, "stats": g.stats}
    atomic_save_tensors(path / "graph.safetensors", t)
    atomic_write_json(path / "graph_meta.json", meta)
    return path


def load_graph(path) -> Graph:
    path = Path(path)
    m = read_json(path / "graph_meta.json", expect=dict, what="graph metadata",
                  fix="write it again with `mindscope circuits graph`")
    if m.get("format") != GRAPH_FORMAT:
        raise BadInputError(path / "graph_meta.json", f"is not a {GRAPH_FORMAT} file",
                            "point at a folder written by `mindscope circuits graph`")
    t = load_safetensors(path / "graph.safetensors", "graph tensors", "write the graph again")
    m.pop("format")
    return Graph(**m, **t)


def _node(g: Graph, i: int, infl: float, n_layers: int) -> dict:
    kind = g.node_kind(i)
    base = {"influence": infl, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
            "reverse_ctx_idx": 0, "clerp": "", "activation": None}
    if kind == "feature":
        l, p, f = (int(v) for v in g.features[i])
        return {**base, "node_id": f"{l}_{f}_{p}", "feature": (l + f) * (l + f + 1) // 2 + f,
                "layer": str(l), "ctx_idx": p, "feature_type": "cross layer transcoder",
                "jsNodeId": f"{l}_{f}-0", "activation": float(g.activations[i])}
    if kind == "error":
        l, p = divmod(i - g.n_features, g.T)
        return {**base, "node_id": f"0_{l}_{p}", "feature": -1, "layer": str(l), "ctx_idx": p,
                "feature_type": "mlp reconstruction error", "jsNodeId": f"{l}_{p}-0"}
    if kind == "token":
        p = i - g.token_index(0)
        v = g.tokens[p]
        return {**base, "node_id": f"E_{v}_{p}", "feature": p, "layer": "E", "ctx_idx": p,
                "feature_type": "embedding", "jsNodeId": f"E_{v}-{p}"}
    j = i - g.logit_index(0)
    v, prob = g.logit_tokens[j], float(g.logit_probs[j])
    layer = str(n_layers + 1)
    return {**base, "node_id": f"{layer}_{v}_{g.T - 1}", "feature": v, "layer": layer,
            "ctx_idx": g.T - 1, "feature_type": "logit", "token_prob": prob,
            "is_target_logit": j == 0, "jsNodeId": f"L_{v}-{g.T - 1}",
            "clerp": f'Output "{g.logit_strs[j]}" (p={prob:.3f})'}


def graph_json(g: Graph, pruned: Optional[Pruned] = None, slug: str = "graph", scan: str = "",
               node_threshold: float = 0.8, edge_threshold: float = 0.98) -> dict:
    """The pruned graph as circuit-tracer / Neuronpedia graph JSON (schema_version 1)."""
    pr = pruned if pruned is not None else prune(g, node_threshold, edge_threshold)
    keep = pr.nodes.nonzero().squeeze(1).tolist()
    nodes = {i: _node(g, i, float(pr.cumulative[i]), g.n_layers) for i in keep}
    r, c = g.edges[:, pr.edges]
    w = g.weights[pr.edges]
    links = [{"source": nodes[s]["node_id"], "target": nodes[t]["node_id"], "weight": float(x)}
             for t, s, x in zip(r.tolist(), c.tolist(), w.tolist()) if s in nodes and t in nodes]
    used = {x for link in links for x in (link["source"], link["target"])}
    out_nodes = [n for n in nodes.values()
                 if n["node_id"] in used or n["feature_type"] in ("embedding", "logit")]
    return {"metadata": {"slug": slug, "scan": scan or g.transcoders or "mindscope",
                         "transcoder_list": [], "prompt_tokens": g.token_strs,
                         "prompt": g.prompt, "node_threshold": node_threshold,
                         "schema_version": 1,
                         "info": {"generator": "mindscope", "model": g.model,
                                  "scores": g.scores(), "edge_threshold": edge_threshold}},
            "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "",
                        "sg_pos": ""},
            "nodes": out_nodes, "links": links}


def _target_vec(lm, token: int) -> torch.Tensor:
    W = lm.model.get_output_embeddings().weight.float().detach()
    return W[token] - W.mean(0)


@torch.no_grad()
def intervene(lm, tc, ids: torch.Tensor, edits: dict) -> torch.Tensor:
    """Last-position logits (V,) of ``ids`` (T,) with transcoder features set by ``edits``
    {(layer, pos, feature): value}; every MLP keeps its error term, so only the edits change
    the model (attention and norms recompute: this is the real model, not the linearisation)."""
    with splice(lm, tc, keep_error=True, edits=edits):
        out = lm.model(input_ids=ids[None].to(lm.device), use_cache=False)
    return out.logits[0, -1].float().cpu()


def demeaned(logits: torch.Tensor, token: int) -> float:
    return float(logits[token] - logits.mean())


def check_interventions(lm, tc, g: Graph, ids: torch.Tensor, n: int = 20, mode: str = "zero",
                        seed: int = 0) -> dict:
    """For the ``n`` features with the largest predicted effect on the top logit: set each to 0
    (``zero``) or to twice its activation (``clamp``), error terms kept, and measure the change
    of the de-meaned target logit. Predicted: -total effect (zero) or +total effect (clamp).
    Returns rows, Pearson r with a 95% bootstrap interval, sign agreement and the slope."""
    if mode not in ("zero", "clamp"):
        raise ValueError("mode must be 'zero' or 'clamp'")
    tot = total_effects(g, 0)[:g.n_features]
    order = tot.abs().argsort(descending=True)[:n].tolist()
    tok = g.logit_tokens[0]
    base = demeaned(intervene(lm, tc, ids, {}), tok)
    rows = []
    for i in order:
        l, p, f = (int(v) for v in g.features[i])
        a = float(g.activations[i])
        val = 0.0 if mode == "zero" else 2 * a
        got = demeaned(intervene(lm, tc, ids, {(l, p, f): val}), tok) - base
        rows.append({"layer": l, "pos": p, "feature": f, "activation": a,
                     "predicted": float(-tot[i] if mode == "zero" else tot[i]), "measured": got})
    pred = torch.tensor([r["predicted"] for r in rows], dtype=torch.float64)
    meas = torch.tensor([r["measured"] for r in rows], dtype=torch.float64)
    r, lo, hi = pearson_ci(pred, meas, seed=seed)
    slope = float((pred * meas).sum() / (pred * pred).sum().clamp(min=1e-30))
    return {"mode": mode, "rows": rows, "pearson": r, "ci95": [lo, hi],
            "sign_agreement": float((torch.sign(pred) == torch.sign(meas)).double().mean()),
            "slope": slope, "target": g.logit_strs[0]}


def pearson_ci(x: torch.Tensor, y: torch.Tensor, n_boot: int = 2000, seed: int = 0):
    """Pearson r and a 95% percentile bootstrap interval over the pairs."""
    def r_of(a, b):
        a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
        return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp(min=1e-30)
    r = float(r_of(x, y))
    if len(x) < 3:
        return r, math.nan, math.nan
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(x), (n_boot, len(x)), generator=g)
    rs = r_of(x[idx], y[idx])
    rs = rs[torch.isfinite(rs)].sort().values
    return r, float(rs[int(0.025 * len(rs))]), float(rs[int(0.975 * len(rs)) - 1])


