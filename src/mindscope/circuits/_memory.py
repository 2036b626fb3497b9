"""Memory of an attribution graph: the estimate the refusal uses, and an exact counter of the
tensor bytes a call allocates (the reference the estimate is tested against).

``TensorPeak`` watches every torch op run inside it (a ``TorchDispatchMode``): an op output
whose storage is not one of its inputs' is a new allocation; its bytes count until the last
tensor viewing that storage is freed. ``peak`` is the most bytes alive at once: what the
process's heap must hold for tensors, without the allocator's slack or the weights' pages.

>>> # with TensorPeak() as tp: attribute(lm, tc, prompt)
>>> # tp.peak, memory_estimate(lm, tc, T, ...)
"""
from __future__ import annotations

import weakref
from typing import Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorPeak(TorchDispatchMode):
    """Counts the bytes of tensors allocated inside the ``with`` block: ``live`` now, ``peak``
    the maximum (both in bytes). Tensors made before the block (weights) are not counted,
    views and in-place results are not new allocations."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict = {}   # storage pointer -> [bytes, ids of the live tensors viewing it]

    def _drop(self, key: int, tid: int) -> None:
        ent = self._refs.get(key)
        if ent is None or tid not in ent[1]:
            return
        ent[1].discard(tid)
        if not ent[1]:
            self.live -= ent[0]
            del self._refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ins = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
               if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = st.data_ptr()
            if key == 0:
                continue
            ent = self._refs.get(key)
            if ent is None:
                if key in ins:  # a view or in-place result of a tensor made outside: not ours
                    continue
                ent = self._refs[key] = [st.nbytes(), set()]
                self.live += ent[0]
                self.peak = max(self.peak, self.live)
            if id(t) not in ent[1]:  # an in-place op returns its input: count it once
                ent[1].add(id(t))
                weakref.finalize(t, self._drop, key, id(t))
        return out


# kept edges per row assumed before any row is computed (at most max_row_edges and the
# sources): SmolLM2's rows keep 1,700-3,200 at keep_mass 0.9999 before the edges from
# sources that never become rows are dropped (docs/circuits.md); ``attribute`` re-estimates
# with the measured rate after its first round of rows
EDGES_PER_ROW_GUESS = 2048
# under a feature budget, the share of kept edges whose source ends up a node (SmolLM2 with
# 128-1024 rows of 10k-220k active features: 0.06-0.25; docs/circuits.md)
BUDGETED_NODE_SHARE = 0.25


def memory_estimate(lm, tc, T: int, batch_size: int, max_feature_nodes: int,
                    max_row_edges: int, n_feat: Optional[int] = None,
                    edges_per_row: Optional[float] = None) -> int:
    """Peak bytes of tensors an attribution graph of a T-token prompt allocates, beyond the
    model's and the transcoders' weights (those are counted once, where they are loaded).

    The largest of four phases, each the tensors it holds at its worst moment:

    - capture: the forward's attention patterns (L H T^2, twice while it returns them, plus
      one layer's scores and softmax), the residuals it records and the frozen scales
      (~11 L T d), one layer's MLP intermediates (5 T d_ff) and the last position's logits;
    - sweep: what stays (the patterns, ~8 L T d of records and scales, 28 bytes per active
      feature, the skip maps, the kept edges at 12 bytes each) plus one batch: its dense rows
      (B x reachable sources, at most all of them), the column maps, and then either ~5 B T d
      of cotangents and attention temporaries or the per-row sort of 4 rows (~21 bytes an
      entry);
    - influence (when there are more active features than rows): the kept edges of all
      rounds but the last joined and normalised, 24 bytes an edge;
    - assembly: the edges renumbered into node ids (int64): 13 bytes per kept edge and 24 per
      edge whose source is a node (all of them when every feature is a row, else
      ``BUDGETED_NODE_SHARE``).

    ``n_feat`` (active features) is known after the forward; before it, L T min(n, 64) (or
    k for TopK) is assumed. ``edges_per_row`` (kept edges per row) is known after the first
    batches; before it, ``EDGES_PER_ROW_GUESS`` (at most the reachable sources). Given the
    kept edges, 0.86-1.14x of the counted peak (``TensorPeak``) on SmolLM2 for T = 8..128; the
    process's RSS can grow up to ~1.9x the counted peak when glibc fragments its heap
    (docs/circuits.md; tests/circuits/test_memory.py)."""
    L, d = lm.n_layers, lm.d_model
    cfg = lm.block(0).self_attn.config
    H = cfg.num_attention_heads
    d_ff = getattr(cfg, "intermediate_size", 4 * d)
    V = lm.model.get_output_embeddings().weight.shape[0]
    c = tc.cfg
    per_tok = c.k if c.activation == "topk" else min(c.n_latents, 64)
    n_feat = L * (T - 1) * per_tok if n_feat is None else n_feat  # known after the forward
    rows = min(n_feat, max_feature_nodes) + 10                      # + the logits
    n_src = n_feat + (L + 1) * T
    per_row = EDGES_PER_ROW_GUESS if edges_per_row is None else edges_per_row
    E = rows * min(per_row, max_row_edges, n_src)                   # kept edges
    B = batch_size
    capture = 4 * (2 * L * H * T * T + 3 * H * T * T + 11 * L * T * d + 5 * T * d_ff + 2 * V)
    base = (4 * (L * H * T * T + 8 * L * T * d + V + (L * d * d if c.skip else 0))
            + 28 * n_feat)
    sweep = base + 12 * E + 4 * B * n_src + 16 * n_src + max(20 * B * T * d, 21 * 4 * n_src)
    budgeted = n_feat > max_feature_nodes
    # the last influence round sees the edges of all rows but its own 4 B: joined and
    # normalised, 24 bytes an edge
    last = max(0, rows - 4 * B) / rows
    infl = base + 24 * E * last + 16 * n_feat if budgeted else 0
    # renumbering: 13 bytes an edge kept, 24 an edge to a node (a source that became a row;
    # every one when all features are rows, ~a quarter under a budget on SmolLM2)
    assemble = base + 13 * E + 24 * E * (BUDGETED_NODE_SHARE if budgeted else 1.0)
    return int(max(capture, sweep, infl, assemble))
