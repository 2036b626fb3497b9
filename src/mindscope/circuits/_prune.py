"""Pruning by cumulative influence, replacement / completeness scores and predicted intervention
effects, on a graph's sparse edges (the definitions of circuit-tracer's ``graph.py``):

    N = |A| row-normalised;  influence = w N + w N^2 + ...   (w = logit probabilities)
    nodes kept: the most influential ones holding ``node_threshold`` of the total (tokens and
    logits always); edges kept: score = N[t, s] (influence[t] + w[t]) over the node-pruned
    graph, the largest holding ``edge_threshold``; then features and errors without outgoing
    (features also without incoming) edges are dropped until nothing changes.
    replacement = token influence / (token + error influence)
    completeness = sum_t (1 - error share of N[t]) (influence[t] + w[t]) / sum (influence + w)

>>> # keep = prune(graph, 0.8, 0.98); keep.nodes.sum(), graph.scores()
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ._graph import Graph, influence


class Pruned(NamedTuple):
    nodes: torch.Tensor       # (n_nodes,) bool
    edges: torch.Tensor       # (E,) bool over graph.edges
    cumulative: torch.Tensor  # (n_nodes,) cumulative influence share (rank order)


def find_threshold(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    s = scores.sort(descending=True).values
    c = s.cumsum(0) / s.sum().clamp(min=1e-30)
    i = min(int(torch.searchsorted(c, torch.tensor(threshold))), len(c) - 1)
    return s[i]


def _norm(r, c, v, n):
    a = v.abs()
    tot = torch.zeros(n).index_add_(0, r, a).clamp(min=1e-10)
    return a / tot[r]


def prune(g: Graph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> Pruned:
    if not 0 <= node_threshold <= 1 or not 0 <= edge_threshold <= 1:
        raise ValueError("node_threshold and edge_threshold must be in [0, 1]")
    n, (r, c), v = g.n_nodes, g.edges, g.weights
    w = g.logit_weights()
    node_inf = influence(r, c, v, n, w)
    nodes = node_inf >= find_threshold(node_inf, node_threshold)
    fixed = g.token_index(0)                                          # tokens, logits from here
    nodes[fixed:] = True
    live = nodes[r] & nodes[c]
    rl, cl, vl = r[live], c[live], v[live]
    inf2 = influence(rl, cl, vl, n, w) + w
    score = _norm(rl, cl, vl, n) * inf2[rl]
    emask_live = score >= find_threshold(score, edge_threshold) if score.numel() else score.bool()
    edges = torch.zeros(v.shape[0], dtype=torch.bool)
    edges[live.nonzero().squeeze(1)[emask_live]] = True
    nf = g.n_features
    while True:
        old = nodes.clone()
        edges &= nodes[r] & nodes[c]
        has_out = torch.zeros(n, dtype=torch.bool)
        has_out[c[edges]] = True
        has_in = torch.zeros(n, dtype=torch.bool)
        has_in[r[edges]] = True
        nodes[:fixed] &= has_out[:fixed]
        nodes[:nf] &= has_in[:nf]
        if torch.equal(nodes, old):
            break
    o = node_inf.argsort(descending=True)
    cum = torch.zeros(n)
    cum[o] = node_inf[o].cumsum(0) / node_inf.sum().clamp(min=1e-30)
    return Pruned(nodes, edges, cum)


def graph_scores(g: Graph) -> dict:
    n, (r, c), v = g.n_nodes, g.edges, g.weights
    w = g.logit_weights()
    inf = influence(r, c, v, n, w)
    e0, e1 = g.error_index(0, 0), g.token_index(0)
    tok = inf[e1:g.logit_index(0)].sum()
    err = inf[e0:e1].sum()
    nv = _norm(r, c, v, n)
    err_share = torch.zeros(n).index_add_(0, r, nv * ((c >= e0) & (c < e1)).float())
    out = inf + w
    return {"replacement": float(tok / (tok + err).clamp(min=1e-30)),
            "completeness": float(((1 - err_share) * out).sum() / out.sum())}


def total_effects(g: Graph, logit: int = 0) -> torch.Tensor:
    """(n_nodes,) predicted change of logit node ``logit``'s target when each source is removed,
    negated: the sum over all paths of the direct effects, where a feature's input change
    passes through it one-for-one (an active ReLU/JumpReLU/TopK feature stays active). Zeroing
    feature s is predicted to move the logit by -total[s]."""
    n, (r, c), v = g.n_nodes, g.edges, g.weights
    y = torch.zeros(n)
    y[g.logit_index(logit)] = 1.0
    a = torch.ones(n)
    a[:g.n_features] = g.activations.clamp(min=1e-12)
    total = torch.zeros(n)
    for _ in range(4 * g.n_layers + 8):
        x = torch.zeros(n).index_add_(0, c, v * y[r])                 # direct effects on y
        if not bool(x.any()):
            break
        total += x
        y = torch.zeros(n)
        y[:g.n_features] = x[:g.n_features] / a[:g.n_features]        # per unit of activation
    return total
