"""Attribution graphs: the direct linear effects between transcoder features, error nodes, token
embeddings and output logits of one prompt in its local replacement model (``_linear``),
computed with batched transposed sweeps and kept sparse.

Nodes, in circuit-tracer's order: [features (layer, pos, latent) | errors (layer-major,
n_layers x T) | tokens (T) | logits]. ``A[t, s]`` = the direct effect of source s on target t:

    A[t, s] = a_s * sum_{l} <d target_t / d mlp_out.l [pos_s], W_dec,s->l>   (features)
    A[t, s] = <d target_t / d mlp_out.l [p], error_l[p]>                      (errors)
    A[t, s] = <d target_t / d embed [p], embed[p]>                             (tokens)

where a target is a feature's pre-activation minus its bias (encoder row . mlp_in) or a logit
minus the mean logit (de-meaned unembedding row . final-norm output). Position 0 (the BOS) has
no feature or error nodes, as in circuit-tracer. Rows are stored sparse: per row, the largest
edges that hold ``keep_mass`` of its absolute mass (at most ``max_row_edges``), so memory grows
with nodes x kept edges, never with nodes squared.

>>> # g = attribute(lm, tc, "The capital of France is"); g.n_nodes, g.scores()
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..core import BadInputError
from ._linear import LinearModel, Target, capture
from ._memory import memory_estimate

log = logging.getLogger(__name__)


@dataclass
class GraphConfig:
    max_n_logits: int = 10
    """At most this many logit nodes."""
    desired_logit_prob: float = 0.95
    """Take the most likely next tokens until their probabilities sum to this."""
    batch_size: int = 64
    """Targets per transposed sweep."""
    max_feature_nodes: int = 4096
    """At most this many feature nodes (rows); chosen by influence as they are computed."""
    keep_mass: float = 0.9999
    """Per row, keep the largest edges holding this fraction of its absolute mass."""
    max_row_edges: int = 4096
    """Per row, keep at most this many edges."""
    max_memory_gb: float = 6.0
    """Refuse prompts whose estimated memory (``memory_estimate``: the graph's tensors beyond
    the model's and transcoders' weights) exceeds this many GiB; the estimate is in the error.
    Checked before the forward, after it, and after every round of rows."""

    def __post_init__(self):
        for f in ("max_n_logits", "batch_size", "max_feature_nodes", "max_row_edges"):
            if getattr(self, f) <= 0:
                raise ValueError(f"GraphConfig.{f} must be positive")
        if not 0 < self.desired_logit_prob <= 1 or not 0 < self.keep_mass <= 1:
            raise ValueError("GraphConfig.desired_logit_prob and keep_mass must be in (0, 1]")


@dataclass
class Graph:
    prompt: str
    tokens: list            # token ids (T,)
    token_strs: list
    features: torch.Tensor  # (n_f, 3) layer, pos, latent of the feature nodes
    activations: torch.Tensor  # (n_f,)
    logit_tokens: list      # vocab ids of the logit nodes
    logit_strs: list
    logit_probs: torch.Tensor  # (n_logits,)
    n_layers: int
    edges: torch.Tensor     # (2, E) target, source node indices
    weights: torch.Tensor   # (E,)
    target_values: torch.Tensor = None  # (n_nodes,) value of each row's target (0 for sources)
    model: str = ""
    transcoders: str = ""
    stats: dict = field(default_factory=dict)

    @property
    def T(self) -> int:
        return len(self.tokens)

    @property
    def n_features(self) -> int:
        return self.features.shape[0]

    @property
    def n_nodes(self) -> int:
        return self.n_features + (self.n_layers + 1) * self.T + len(self.logit_tokens)

    def error_index(self, layer: int, pos: int) -> int:
        return self.n_features + layer * self.T + pos

    def token_index(self, pos: int) -> int:
        return self.n_features + self.n_layers * self.T + pos

    def logit_index(self, i: int) -> int:
        return self.n_features + (self.n_layers + 1) * self.T + i

    def node_kind(self, i: int) -> str:
        if i < self.n_features:
            return "feature"
        if i < self.token_index(0):
            return "error"
        return "token" if i < self.logit_index(0) else "logit"

    def dense(self) -> torch.Tensor:
        """The (n_nodes, n_nodes) adjacency (tests and small graphs only)."""
        A = torch.zeros(self.n_nodes, self.n_nodes)
        A[self.edges[0], self.edges[1]] = self.weights
        return A

    def logit_weights(self) -> torch.Tensor:
        w = torch.zeros(self.n_nodes)
        w[self.logit_index(0):] = self.logit_probs
        return w

    def scores(self) -> dict:
        from ._prune import graph_scores
        return graph_scores(self)


def prepare_ids(lm, prompt) -> torch.Tensor:
    """Token ids of ``prompt`` with a special token in front (the BOS-like position 0 that
    gets no feature nodes), as circuit-tracer does; a list/tensor of ids is taken as is."""
    tok = lm.tokenizer
    if not isinstance(prompt, str):
        ids = torch.as_tensor(prompt, dtype=torch.long).reshape(-1)
        if ids.numel() < 2:
            raise BadInputError("prompt", "needs at least 2 token ids (position 0 gets no nodes)",
                                "give a longer prompt")
        return ids
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise BadInputError("prompt", f"{prompt[:40]!r} tokenizes to nothing", "give some text")
    special = set(tok.all_special_ids)
    if ids[0] not in special:
        bos = next(t for t in (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id,
                               *tok.all_special_ids) if t is not None)
        ids = [bos] + ids
    return torch.tensor(ids)


def _logit_targets(lm, logits: torch.Tensor, cfg: GraphConfig):
    probs = logits.softmax(-1)
    p, idx = probs.topk(min(cfg.max_n_logits, probs.numel()))
    n = int(torch.searchsorted(p.cumsum(0), torch.tensor(cfg.desired_logit_prob))) + 1
    p, idx = p[:n], idx[:n]
    W = lm.model.get_output_embeddings().weight.float().detach()     # (V, d)
    vecs = W[idx] - W.mean(0)                                         # (k, d) de-meaned
    return idx, p, vecs


class _Sources:
    """Active features, error vectors and token embeddings; fills dense rows from gradients.

    Features are ordered (layer, pos, latent), so the columns of one layer and position are a
    contiguous range. Nothing per feature is stored but its (layer, pos, latent) and activation:
    the decoder rows a read needs are gathered from the transcoder weights when it is read
    (a copy of n_p x d, against the B x n_p x d product), so memory does not grow with
    active features x d_model."""

    def __init__(self, lin: LinearModel, tc):
        L, T = lin.L, lin.T
        self.tc = tc
        feats, vals, acts_all = [], [], []
        for l in range(L):
            a = tc.encode_layer(lin.mlp_in[l], l).detach()            # (T, n)
            a[0] = 0                                                  # no nodes at the BOS
            acts_all.append(a)
            p, i = a.nonzero(as_tuple=True)
            feats.append(torch.stack([torch.full_like(p, l), p, i], 1))
            vals.append(a[p, i])
        self.features = torch.cat(feats)                              # (n_f, 3)
        self.acts = torch.cat(vals)                                   # (n_f,)
        self.error = torch.stack([lin.mlp_out[l] - tc.decode_layer(acts_all, lin.mlp_in[l], l)
                                  .detach() for l in range(L)])       # (L, T, d)
        self.error[:, 0] = 0
        del acts_all
        self.embed = lin.embed                                        # (T, d)
        self.n_f, self.L, self.T = self.features.shape[0], L, T
        # layer_start[l]: first column of layer l; spans[l]: (pos, c0, c1) of its positions
        key = self.features[:, 0] * T + self.features[:, 1]           # (n_f,) sorted
        self.bounds = bounds = torch.searchsorted(key, torch.arange(L * T + 1)).tolist()
        self.layer_start = [bounds[l * T] for l in range(L + 1)]
        self.spans = [[(p, bounds[l * T + p], bounds[l * T + p + 1]) for p in range(T)
                       if bounds[l * T + p + 1] > bounds[l * T + p]] for l in range(L)]
        self.n_src = self.n_f + (L + 1) * T

    def reach(self) -> torch.Tensor:
        """(L, T): sources a feature row at (layer, pos) can reach (features of lower layers at
        positions <= pos, their errors, the tokens); its kept edges are at most that."""
        cnt = torch.tensor([[c1 - c0 for c0, c1 in zip(b[:-1], b[1:])] for b in
                            (self.bounds[l * self.T:(l + 1) * self.T + 1] for l in range(self.L))])
        below = (cnt.cumsum(0) - cnt).cumsum(1)                       # (L, T) features
        lp = torch.arange(self.L)[:, None] * torch.arange(1, self.T + 1)  # errors
        return below + lp + torch.arange(1, self.T + 1)               # + tokens

    def encoder_rows(self, idx: torch.Tensor) -> torch.Tensor:
        """(k, d) raw-unit encoder rows of features ``idx``."""
        f = self.features[idx]
        return self.tc.W_enc[f[:, 0], f[:, 2]].detach() * self.tc.s_in[f[:, 0], None]

    def columns(self, top: int, T: int) -> torch.Tensor:
        """Source columns a batch of targets can reach: features of layers < ``top`` (all
        layers for logits, top = L), errors of those layers, tokens; positions < T only."""
        feats = torch.arange(self.layer_start[min(top, self.L)])
        pos = self.features[feats, 1]
        err = self.n_f + torch.arange(min(top, self.L))[:, None] * self.T + torch.arange(T)
        tok = self.n_f + self.L * self.T + torch.arange(T)
        return torch.cat([feats[pos < T], err.reshape(-1), tok])

    def reader(self, rows: torch.Tensor, col_of: torch.Tensor, top: int):
        """``read(l, g)`` for ``LinearModel.backward``: writes g . (decoder row x activation)
        of every feature writing to mlp_out.l, and g . error_l, into ``rows`` (B, n_cols),
        where source s is column ``col_of[s]`` (the ``columns(top, T')`` of the batch)."""
        tc, kind = self.tc, self.tc.cfg.kind
        W_dec = tc.W_dec

        def read(l: int, g: torch.Tensor):                            # g (B, T', d)
            if l >= top:  # nothing above the targets' layer is read (g is still 0 there)
                return
            Tg = g.shape[1]
            for m in ([l] if kind == "plt" else range(l + 1)):
                scale = 1.0 / float(tc.s_out[l])
                for p, c0, c1 in self.spans[m]:
                    if p >= Tg:
                        break
                    lat = self.features[c0:c1, 2]
                    W = W_dec[m][lat] if kind == "plt" else W_dec[m][lat, l - m]  # (n_p, d)
                    v = (g[:, p] @ W.detach().T) * (self.acts[c0:c1] * scale)      # (B, n_p)
                    j = int(col_of[c0])
                    rows[:, j:j + c1 - c0] += v
            e0 = int(col_of[self.n_f + l * self.T])
            if e0 >= 0:
                rows[:, e0:e0 + Tg] = (g * self.error[l, :Tg]).sum(-1)  # (B, T')
        return read


def _sparsify(rows: torch.Tensor, keep_mass: float, cap: int, chunk: int = 4):
    """Per row, the largest |entries| holding ``keep_mass`` of the row's mass (at most cap);
    ``chunk`` rows at a time, so the sort's temporaries (~21 bytes an entry) stay small."""
    out_r, out_c, out_v = [], [], []
    for s in range(0, rows.shape[0], chunk):
        part = rows[s:s + chunk]                                      # (b, n)
        v, i = part.abs().sort(-1, descending=True)                   # (b, n)
        c = v.cumsum(-1)
        del v
        tot = c[:, -1:].clamp(min=1e-30)
        k = ((c / tot) < keep_mass).sum(-1) + 1                       # (b,)
        k = k.clamp(max=min(cap, rows.shape[1]))
        k = torch.where(tot[:, 0] > 1e-30, k, torch.zeros_like(k))
        del c
        r = torch.repeat_interleave(torch.arange(len(k)), k)          # the first k of each row
        j = torch.arange(r.numel()) - torch.repeat_interleave(k.cumsum(0) - k, k)
        cols = i[r, j]
        out_r.append(r + s)
        out_c.append(cols)
        out_v.append(part[r, cols])
    return torch.cat(out_r), torch.cat(out_c), torch.cat(out_v)


class _Edges:
    """The kept edges (row id, source column, weight) of the rows computed so far: int32
    indices, 12 bytes an edge. ``all()`` joins the batches' parts into one, one field at a
    time (the join's copy is of one field, and is made once, not at every influence round)."""

    def __init__(self):
        self.f: list = [[], [], []]

    @property
    def n(self) -> int:
        return sum(x.numel() for x in self.f[2])

    def add(self, r: torch.Tensor, c: torch.Tensor, v: torch.Tensor) -> None:
        for part, x in zip(self.f, (r.int(), c.int(), v)):
            part.append(x)

    def all(self) -> tuple:
        for i in range(3):
            if len(self.f[i]) != 1:
                self.f[i] = [torch.cat(self.f[i]) if self.f[i] else
                             torch.zeros(0, dtype=torch.float32 if i == 2 else torch.int32)]
        return tuple(x[0] for x in self.f)

    def take(self) -> tuple:
        """``all()``, handing the tensors over (this object is empty afterwards)."""
        out = self.all()
        self.f = [[], [], []]
        return out


def _peak_rss() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def attribute(lm, tc, prompt: str, cfg: Optional[GraphConfig] = None,
              progress: bool = True) -> Graph:
    """The attribution graph of ``prompt`` (unpruned, sparse rows); see the module docstring."""
    cfg = cfg or GraphConfig()
    t0 = time.perf_counter()
    ids = prepare_ids(lm, prompt)
    T = ids.shape[0]

    def estimate(**kw):
        return memory_estimate(lm, tc, T, cfg.batch_size, cfg.max_feature_nodes,
                               cfg.max_row_edges, **kw)
    est = est0 = estimate()
    _budget(est, T, cfg, "")
    with torch.no_grad():
        lin = capture(lm, tc, ids)
        src = _Sources(lin, tc)
        tidx, tprob, tvec = _logit_targets(lm, lin.logits, cfg)
    # again with the real number of active features, before the expensive sweeps
    est = est1 = estimate(n_feat=src.n_f)
    _budget(est, T, cfg, f" and {src.n_f} active features")
    n_logit = len(tidx)
    L, n_f = lin.L, src.n_f
    kept = _Edges()
    # row ids in the source-column space: feature j -> j, logit i -> n_src + i

    def run(layers, pos, vecs, row_ids):
        top, Tb = int(layers.max()), int(pos.max()) + 1
        cols = src.columns(top, Tb)                                   # (n_cols,) reachable
        col_of = torch.full((src.n_src,), -1, dtype=torch.long)
        col_of[cols] = torch.arange(cols.numel())
        rows = torch.zeros(len(row_ids), cols.numel())
        with torch.no_grad():
            g = lin.backward(Target(layers, pos, vecs), src.reader(rows, col_of, top))
            t0 = int(col_of[src.n_f + L * T])
            rows[:, t0:t0 + Tb] = (g * src.embed[:Tb]).sum(-1)       # tokens
        r, c, v = _sparsify(rows, cfg.keep_mass, cfg.max_row_edges)
        del rows
        kept.add(row_ids[r], cols[c], v)

    B = cfg.batch_size
    for a in range(0, n_logit, B):
        k = tidx[a:a + B].numel()
        run(torch.full((k,), L), torch.full((k,), T - 1), tvec[a:a + B],
            src.n_src + torch.arange(a, a + k))
    n_rows = min(n_f, cfg.max_feature_nodes)
    e_logit = kept.n
    reach = src.reach().clamp(max=cfg.max_row_edges)                  # (L, T) edges at most
    visited = torch.zeros(n_f, dtype=torch.bool)
    bar = tqdm(total=n_rows, desc="attribution", unit="row", disable=not progress)
    done, est_rows = 0, None
    while done < n_rows:
        if done:  # the kept edges per row so far replace the guess (checked every round)
            # kept edges per reachable source so far, projected on the rows to come, taken
            # to reach as far as the unvisited features do on average (exact when all are rows)
            r_f = reach[src.features[:, 0], src.features[:, 1]].double()  # (n_f,)
            r_done = float(r_f[visited].sum())
            r_all = r_done + (n_rows - done) * float(r_f[~visited].mean())
            e_all = e_logit + (kept.n - e_logit) * r_all / max(r_done, 1.0)
            per_row = e_all / (n_rows + n_logit)
            e = estimate(n_feat=n_f, edges_per_row=per_row)
            est_rows = est_rows or e                                  # the first, reported
            _budget(e, T, cfg, f", {n_f} active features and {per_row:.0f} kept edges per row")
        if n_rows == n_f:
            pending = (~visited).nonzero().squeeze(1)
            if not done:  # first the top batch (the rows reaching the most sources), then
                pending = pending[-B:]  # the estimate with its kept edges, then the rest
        else:  # the most influential unvisited features given the rows so far
            infl = influence(*kept.all(), src.n_src + n_logit, _start(src.n_src, tprob))[:n_f]
            order = infl.argsort(descending=True)
            pending = order[~visited[order]][:min(4 * B, n_rows - done)]
        # in (layer, pos) order: a batch's sweep starts at its top layer and runs on the
        # prefix up to its last position (the same rows, fewer flops)
        pending = pending.sort().values
        for a in range(0, len(pending), B):
            sel = pending[a:a + B]
            f = src.features[sel]
            with torch.no_grad():
                vecs = src.encoder_rows(sel)                          # (b, d)
            run(f[:, 0], f[:, 1], vecs, sel)
            visited[sel] = True
            done += len(sel)
            bar.update(len(sel))
    bar.close()
    n_kept = kept.n                    # before assembly drops the edges from unvisited features
    graph = _assemble(lm, tc, prompt, ids, lin, src, visited, kept, tidx, tprob, tvec)
    graph.stats = {"seconds": time.perf_counter() - t0, "peak_rss_bytes": _peak_rss(),
                   "estimate_bytes": est_rows or est, "estimate_guess_bytes": est0,
                   "estimate_forward_bytes": est1, "estimate_final_bytes": estimate(
                       n_feat=n_f, edges_per_row=n_kept / (n_rows + n_logit)),
                   "active_features": n_f, "T": T,
                   "config": asdict(cfg), "edges": int(graph.weights.numel()),
                   "edges_kept": n_kept}
    return graph


def _budget(est: int, T: int, cfg: GraphConfig, more: str) -> None:
    if est > cfg.max_memory_gb * 2 ** 30:
        raise BadInputError("prompt", f"of {T} tokens{more} needs about {est / 2 ** 30:.2f} GiB "
                                      f"for its graph (attention patterns grow with T^2, sources "
                                      f"with the active features), over the budget of "
                                      f"{cfg.max_memory_gb:g} GiB",
                            "shorten the prompt, or raise --max-memory (--max-features and "
                            "--batch-size also lower it)")


def _start(n_src: int, probs: torch.Tensor) -> torch.Tensor:
    w = torch.zeros(n_src + len(probs))
    w[n_src:] = probs
    return w


def influence(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n: int,
              w: torch.Tensor, max_iter: int = 1000) -> torch.Tensor:
    """circuit-tracer's node influence on sparse edges: with N = |A| row-normalised,
    w N + w N^2 + ... (the graph is acyclic, so the series ends)."""
    a = vals.abs()
    tot = torch.zeros(n).index_add_(0, rows, a).clamp(min=1e-10)
    a = a / tot[rows]
    x, out = w, torch.zeros(n)
    for _ in range(max_iter):
        x = torch.zeros(n).index_add_(0, cols, a * x[rows])
        if not bool(x.any()):
            return out
        out += x
    raise RuntimeError(f"influence did not converge after {max_iter} steps (a cycle?)")


def _assemble(lm, tc, prompt, ids, lin, src, visited, kept: _Edges, tidx, tprob,
              tvec) -> Graph:
    n_f, n_src = src.n_f, src.n_src
    sel = visited.nonzero().squeeze(1)
    n_sel = sel.numel()
    remap = torch.full((n_src + len(tidx),), -1, dtype=torch.int32)  # column -> node index
    remap[sel] = torch.arange(n_sel, dtype=torch.int32)
    rest = torch.arange(n_f, n_src + len(tidx), dtype=torch.int32)
    remap[rest] = rest - n_f + n_sel
    r, c, v = kept.take()                                             # (E,) each
    ok = remap[r] >= 0
    ok &= remap[c] >= 0                                                # unvisited sources go
    edges = torch.empty(2, int(ok.sum()), dtype=torch.long)           # (2, E') target, source
    edges[0] = remap[r[ok]]
    del r
    edges[1] = remap[c[ok]]
    del c
    v = v[ok]
    feats = src.features[sel]
    n_nodes = n_sel + (n_src - n_f) + len(tidx)
    target = torch.zeros(n_nodes)
    if n_sel:
        with torch.no_grad():
            enc = src.encoder_rows(sel)                               # (n_sel, d)
        target[:n_sel] = (enc * lin.mlp_in[feats[:, 0], feats[:, 1]]).sum(-1)
    final = lin.resid_final[-1] * lin.nf[-1]                          # (d,) final-norm output
    target[n_nodes - len(tidx):] = tvec @ final
    tok = lm.tokenizer
    if not isinstance(prompt, str):
        prompt = tok.decode(ids.tolist())
    return Graph(prompt=prompt, tokens=ids.tolist(),
                 token_strs=[tok.decode([t]) for t in ids.tolist()], features=feats,
                 activations=src.acts[sel], logit_tokens=tidx.tolist(),
                 logit_strs=[tok.decode([t]) for t in tidx.tolist()], logit_probs=tprob,
                 n_layers=lin.L, edges=edges, weights=v,
                 target_values=target, model=lm.name,
                 transcoders=str(tc.cfg.meta.get("path", "")))
