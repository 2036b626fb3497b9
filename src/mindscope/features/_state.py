"""Mergeable streaming statistics of SAE latents (one pass, bounded memory).

For every latent ``j`` the state keeps, over all rows seen so far:

- ``count[j]`` rows with ``f_j > 0``, ``total[j]`` = sum of ``f_j``, ``max[j]``;
- ``hist[j, b]``: counts of non-zero activations in fixed, global, log-spaced bins
  (``HIST_EDGES``: 8 per decade from 1e-3 to 1e3, plus an under- and an overflow bin), so
  histograms of two states simply add;
- top-``K`` activating rows (value, row id) with a context window of ``C`` tokens around each
  (token ids and the latent's activation on each token);
- reservoirs for quantile examples: for each (latent, reservoir bin) the ``R`` occurrences with the
  smallest hash key ``u(row, latent)`` (a deterministic uniform number). Keeping the ``R``
  smallest keys is a uniform sample without replacement, and the ``R`` smallest keys of a union
  are among the ``R`` smallest of each part, so two states merge exactly into the state of one
  pass over both streams. Reservoir bins are pairs of histogram bins (4 per decade).

Row ids are global: the n-th row ever given to the state has id ``n``; ``merge`` needs the two
states to have been fed disjoint id ranges (``FeatureState(row_offset=...)``).

>>> import torch
>>> st = FeatureState(n_latents=8, top_k=2, context=(2, 1), reservoir=2)
>>> f = torch.relu(torch.randn(10, 8)); tok = torch.arange(10); win = torch.zeros(10, dtype=torch.long)
>>> st.update(f, tok, win)
>>> int(st.n_rows), st.count.shape
(10, torch.Size([8]))
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

HIST_EDGES = np.logspace(-3, 3, 49)
"""Upper edges of the histogram bins 0..47 (bin 48 is >= 1e3; bin 0 holds everything < 1e-3)."""
N_HIST = len(HIST_EDGES) + 1
RES_PER_HIST = 2
"""Histogram bins per reservoir bin."""
N_RES = -(-N_HIST // RES_PER_HIST)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def hist_bin(v: np.ndarray) -> np.ndarray:
    """Histogram bin of positive activations ``v`` (bin b covers [HIST_EDGES[b-1], HIST_EDGES[b]))."""
    return np.searchsorted(HIST_EDGES, v, side="right")


def hist_edges() -> list[tuple[float, float]]:
    """(lo, hi) of every histogram bin (0 and inf at the ends)."""
    e = [0.0] + HIST_EDGES.tolist() + [math.inf]
    return list(zip(e[:-1], e[1:]))


def hash_key(row: np.ndarray, latent: np.ndarray) -> np.ndarray:
    """Deterministic uniform [0, 1) numbers from (row id, latent) pairs (splitmix64)."""
    with np.errstate(over="ignore"):
        z = row.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + latent.astype(np.uint64)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def context_index(window: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """(B, left+1+right) indices of each row's neighbours in the same window (-1 where none).
    Rows must be grouped by window and in position order (as in the activation store)."""
    B = window.shape[0]
    off = torch.arange(-left, right + 1)
    idx = torch.arange(B)[:, None] + off[None, :]  # (B, C)
    ok = (idx >= 0) & (idx < B)
    idx_c = idx.clamp(0, B - 1)
    ok &= window[idx_c] == window[:, None]
    return torch.where(ok, idx_c, torch.full_like(idx_c, -1))


class FeatureState:
    """Streaming per-latent statistics; ``update`` with (B, n) codes, ``merge``, ``save``/``load``."""

    def __init__(self, n_latents: int, top_k: int = 16, context: tuple = (16, 7),
                 reservoir: int = 4, row_offset: int = 0, max_token_pairs: int = 2_000_000,
                 n_background: int = 256, background_codes: int = 64):
        if n_latents < 1 or top_k < 1 or reservoir < 1:
            raise ValueError("n_latents, top_k and reservoir must be >= 1")
        if min(context) < 0:
            raise ValueError(f"context (left, right) must be >= 0, got {context}")
        self.n, self.K, self.R = int(n_latents), int(top_k), int(reservoir)
        self.left, self.right = int(context[0]), int(context[1])
        C = self.left + 1 + self.right
        n, K, G, R = self.n, self.K, self.n * N_RES, self.R
        self.row_offset = int(row_offset)
        self.n_rows = 0
        self.count = torch.zeros(n, dtype=torch.int64)
        self.total = torch.zeros(n, dtype=torch.float64)
        self.max = torch.zeros(n, dtype=torch.float32)
        self.hist = torch.zeros(n, N_HIST, dtype=torch.int64)
        self.top_val = torch.zeros(n, K, dtype=torch.float32)   # 0 = empty slot
        self.top_row = torch.full((n, K), -1, dtype=torch.int64)
        self.top_tok = torch.full((n, K, C), -1, dtype=torch.int32)
        self.top_act = torch.zeros(n, K, C, dtype=torch.float16)
        self.res_key = np.full((G, R), np.inf)                   # inf = empty slot
        self.res_row = np.full((G, R), -1, dtype=np.int64)
        self.res_val = np.zeros((G, R), dtype=np.float32)
        self.res_tok = np.full((G, R, C), -1, dtype=np.int32)
        self.res_act = np.zeros((G, R, C), dtype=np.float16)
        self.max_token_pairs = int(max_token_pairs)
        # background: n_background random rows (smallest hash keys), their contexts and the
        # top-m codes of every context token (negatives for detection, token background rates)
        self.NB, self.M = int(n_background), int(min(background_codes, n_latents))
        self.bg_key = np.full(self.NB, np.inf)
        self.bg_row = np.full(self.NB, -1, dtype=np.int64)
        self.bg_tok = np.full((self.NB, C), -1, dtype=np.int32)
        self.bg_idx = np.full((self.NB, C, self.M), -1, dtype=np.int32)
        self.bg_val = np.zeros((self.NB, C, self.M), dtype=np.float16)
        self.tp_key = np.zeros(0, dtype=np.int64)                # token * n + latent, sorted
        self.tp_sum = np.zeros(0, dtype=np.float64)
        self.tp_cnt = np.zeros(0, dtype=np.int64)
        self.tp_pruned = False
        self._tp_buf: list = []
        self.extra: dict = {}
        """JSON saved with the state (the analysis' sources and settings)."""

    @property
    def C(self) -> int:
        return self.left + 1 + self.right

    @property
    def next_row(self) -> int:
        return self.row_offset + self.n_rows

    # ---- update ------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, f: torch.Tensor, tokens: torch.Tensor, window: torch.Tensor) -> None:
        """Add rows: codes f (B, n) >= 0, tokens (B,), window (B,) (rows of one window together,
        in position order; contexts never cross windows)."""
        f = f.detach().float().cpu()
        B = f.shape[0]
        if f.dim() != 2 or f.shape[1] != self.n:
            raise ValueError(f"codes must be (B, {self.n}), got {tuple(f.shape)}")
        if B == 0:
            return
        tokens, window = tokens.cpu().long(), window.cpu().long()
        rows = torch.arange(B, dtype=torch.int64) + self.next_row  # global ids (B,)
        ctx = context_index(window, self.left, self.right)  # (B, C)
        tok_pad = torch.cat([tokens, torch.tensor([-1])]).to(torch.int32)
        ctx_tok = tok_pad[ctx]  # (B, C); index -1 -> the pad entry
        f_pad = torch.cat([f, torch.zeros(1, self.n)])

        self.count += (f > 0).sum(0)
        self.total += f.sum(0, dtype=torch.float64)
        self.max = torch.maximum(self.max, f.max(0).values)
        r, j = torch.nonzero(f > 0, as_tuple=True)
        v = f[r, j].numpy()
        r_np, j_np = r.numpy(), j.numpy()
        hb = hist_bin(v)
        self.hist += torch.from_numpy(np.bincount(j_np * N_HIST + hb, minlength=self.n * N_HIST)
                                      .reshape(self.n, N_HIST))
        self._update_top(f, rows, ctx, ctx_tok, f_pad)
        self._update_res(r_np, j_np, v, hb, rows.numpy(), ctx.numpy(), ctx_tok.numpy(), f_pad)
        self._update_bg(rows.numpy(), ctx, ctx_tok.numpy(), f_pad)
        self._tp_buf.append((tokens.numpy()[r_np] * self.n + j_np, v.astype(np.float64),
                             np.ones(len(v), np.int64)))
        if sum(len(k) for k, _, _ in self._tp_buf) > max(self.max_token_pairs // 2, 1 << 18):
            self._compact_tokens()
        self.n_rows += B

    def _update_top(self, f, rows, ctx, ctx_tok, f_pad):
        kk = min(self.K, f.shape[0])
        bv, br = f.topk(kk, dim=0)  # (kk, n) values and batch rows
        cat_v = torch.cat([self.top_val, bv.T], 1)  # (n, K + kk)
        new_v, order = cat_v.topk(self.K, dim=1)  # (n, K)
        from_old = order < self.K
        oi = order.clamp(max=self.K - 1)
        bi = br.T.gather(1, (order - self.K).clamp(min=0))  # (n, K) batch row of new entries
        lat = torch.arange(self.n)[:, None].expand(-1, self.K)
        new_row = torch.where(from_old, self.top_row.gather(1, oi), rows[bi])
        new_row[new_v <= 0] = -1
        g_tok = self.top_tok.gather(1, oi[..., None].expand(-1, -1, self.C))
        g_act = self.top_act.gather(1, oi[..., None].expand(-1, -1, self.C))
        b_ctx = ctx[bi]  # (n, K, C)
        b_tok = ctx_tok[bi]
        b_act = f_pad[b_ctx, lat[..., None].expand(-1, -1, self.C)].half()
        m = from_old[..., None]
        self.top_tok = torch.where(m, g_tok, b_tok)
        self.top_act = torch.where(m, g_act, b_act)
        empty = new_v <= 0
        self.top_tok[empty] = -1
        self.top_act[empty] = 0
        self.top_val = new_v.clamp(min=0)
        self.top_row = new_row

    def _update_bg(self, rows, ctx, ctx_tok, f_pad):
        if self.NB == 0:
            return
        key = hash_key(rows, np.full(len(rows), self.n))
        cand = np.flatnonzero(key < self.bg_key.max())
        cand = cand[np.argsort(key[cand], kind="stable")[:self.NB]]  # only these can survive
        if len(cand) == 0:
            return
        vs, is_ = [], []
        for a in range(0, len(cand), 32):
            cf = f_pad[ctx[torch.from_numpy(cand[a:a + 32])]]  # (m, C, n)
            v, i = cf.topk(self.M, dim=-1)
            is_.append(torch.where(v > 0, i, torch.full_like(i, -1)))
            vs.append(v.clamp(min=0))
        self._merge_bg(key[cand], rows[cand], ctx_tok[cand], torch.cat(is_).numpy().astype(np.int32),
                       torch.cat(vs).numpy().astype(np.float16))

    def _merge_bg(self, key, row, tok, idx, val):
        k = np.concatenate([self.bg_key, key])
        r = np.concatenate([self.bg_row, row])
        o = np.lexsort((r, k))[:self.NB]
        self.bg_key, self.bg_row = k[o], np.where(np.isinf(k[o]), -1, r[o])
        self.bg_tok = np.concatenate([self.bg_tok, tok])[o]
        self.bg_idx = np.concatenate([self.bg_idx, idx])[o]
        self.bg_val = np.concatenate([self.bg_val, val])[o]

    def _update_res(self, r, j, v, hb, rows, ctx, ctx_tok, f_pad):
        g = j * N_RES + hb // RES_PER_HIST
        key = hash_key(rows[r], j)
        keep = key < self.res_key[g].max(1)
        if not keep.any():
            return
        r, j, v, g, key = r[keep], j[keep], v[keep], g[keep], key[keep]
        f_np = f_pad.numpy()
        c_tok = ctx_tok[r]  # (m, C)
        c_act = f_np[ctx[r], j[:, None]].astype(np.float16)
        self._merge_res(g, key, rows[r], v, c_tok, c_act)

    def _merge_res(self, g, key, row, val, tok, act):
        """Merge candidate entries into the reservoirs of their groups g (keep R smallest keys)."""
        R = self.R
        ug = np.unique(g)
        old_g = np.repeat(ug, R)
        all_g = np.concatenate([old_g, g])
        all_k = np.concatenate([self.res_key[ug].ravel(), key])
        all_row = np.concatenate([self.res_row[ug].ravel(), row])
        all_val = np.concatenate([self.res_val[ug].ravel(), val])
        all_tok = np.concatenate([self.res_tok[ug].reshape(-1, self.C), tok])
        all_act = np.concatenate([self.res_act[ug].reshape(-1, self.C), act])
        o = np.lexsort((all_row, all_k, all_g))
        sg = all_g[o]
        start = np.searchsorted(sg, sg, side="left")
        rank = np.arange(len(o)) - start
        sel = rank < R
        o, sg, rank = o[sel], sg[sel], rank[sel]
        self.res_key[sg, rank] = all_k[o]
        self.res_row[sg, rank] = np.where(np.isinf(all_k[o]), -1, all_row[o])
        self.res_val[sg, rank] = all_val[o]
        self.res_tok[sg, rank] = all_tok[o]
        self.res_act[sg, rank] = all_act[o]

    def _compact_tokens(self) -> None:
        if not self._tp_buf:
            return
        keys = np.concatenate([self.tp_key] + [k for k, _, _ in self._tp_buf])
        sums = np.concatenate([self.tp_sum] + [v for _, v, _ in self._tp_buf])
        cnts = np.concatenate([self.tp_cnt] + [c for _, _, c in self._tp_buf])
        self._tp_buf = []
        uk, inv = np.unique(keys, return_inverse=True)
        self.tp_key = uk
        self.tp_sum = np.bincount(inv, weights=sums, minlength=len(uk))
        self.tp_cnt = np.bincount(inv, weights=cnts, minlength=len(uk)).astype(np.int64)
        if len(uk) > self.max_token_pairs:  # keep the pairs with the largest summed activation
            top = np.sort(np.argpartition(-self.tp_sum, self.max_token_pairs)[:self.max_token_pairs])
            self.tp_key, self.tp_sum, self.tp_cnt = uk[top], self.tp_sum[top], self.tp_cnt[top]
            self.tp_pruned = True

    # ---- merge -------------------------------------------------------------------------------
    def merge(self, other: "FeatureState") -> "FeatureState":
        """Fold ``other`` (same settings, disjoint row ids) into this state; returns self."""
        if (other.n, other.K, other.R, other.left, other.right, other.NB, other.M) != \
                (self.n, self.K, self.R, self.left, self.right, self.NB, self.M):
            raise ValueError("cannot merge feature states with different settings "
                             f"(n, K, R, context): {(self.n, self.K, self.R, self.left, self.right)}"
                             f" vs {(other.n, other.K, other.R, other.left, other.right)}")
        self.count += other.count
        self.total += other.total
        self.max = torch.maximum(self.max, other.max)
        self.hist += other.hist
        cat_v = torch.cat([self.top_val, other.top_val], 1)
        new_v, order = cat_v.topk(self.K, dim=1)
        C = self.C
        self.top_row = torch.cat([self.top_row, other.top_row], 1).gather(1, order)
        self.top_tok = torch.cat([self.top_tok, other.top_tok], 1).gather(
            1, order[..., None].expand(-1, -1, C))
        self.top_act = torch.cat([self.top_act, other.top_act], 1).gather(
            1, order[..., None].expand(-1, -1, C))
        self.top_val = new_v
        full = np.isfinite(other.res_key)
        gi, ri = np.nonzero(full)
        if len(gi):
            self._merge_res(gi, other.res_key[gi, ri], other.res_row[gi, ri],
                            other.res_val[gi, ri], other.res_tok[gi, ri], other.res_act[gi, ri])
        ok = np.isfinite(other.bg_key)
        self._merge_bg(other.bg_key[ok], other.bg_row[ok], other.bg_tok[ok], other.bg_idx[ok],
                       other.bg_val[ok])
        other._compact_tokens()
        self._tp_buf.append((other.tp_key, other.tp_sum, other.tp_cnt))
        self._compact_tokens()
        self.tp_pruned |= other.tp_pruned
        self.n_rows += other.n_rows
        return self

    # ---- files -------------------------------------------------------------------------------
    _TORCH = ("count", "total", "max", "hist", "top_val", "top_row", "top_tok", "top_act")
    _NUMPY = ("res_key", "res_row", "res_val", "res_tok", "res_act", "tp_key", "tp_sum", "tp_cnt",
              "bg_key", "bg_row", "bg_tok", "bg_idx", "bg_val")

    def settings(self) -> dict:
        return {"n_latents": self.n, "top_k": self.K, "context": [self.left, self.right],
                "reservoir": self.R, "max_token_pairs": self.max_token_pairs,
                "n_background": self.NB, "background_codes": self.M}

    def save(self, path, extra: Optional[dict] = None) -> None:
        """Write the whole state to one safetensors file (atomic); ``extra`` (JSON) rides along
        in its metadata, so what it describes is saved in the same atomic step."""
        from ..core import atomic_save_tensors

        self._compact_tokens()
        t = {k: getattr(self, k) for k in self._TORCH}
        t.update({k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in self._NUMPY})
        meta = {"format": "mindscope-feature-state/1", "settings": self.settings(),
                "row_offset": self.row_offset, "n_rows": self.n_rows, "tp_pruned": self.tp_pruned,
                "extra": extra or {}}
        atomic_save_tensors(Path(path), t, metadata={"state": json.dumps(meta)})

    @staticmethod
    def _shapes(n, K, C, R, NB, M) -> dict:
        """{tensor: (safetensors dtype, shape)} of a state with these settings (tp_*: any length)."""
        G = n * N_RES
        return {"count": ("I64", [n]), "total": ("F64", [n]), "max": ("F32", [n]),
                "hist": ("I64", [n, N_HIST]), "top_val": ("F32", [n, K]),
                "top_row": ("I64", [n, K]), "top_tok": ("I32", [n, K, C]),
                "top_act": ("F16", [n, K, C]), "res_key": ("F64", [G, R]),
                "res_row": ("I64", [G, R]), "res_val": ("F32", [G, R]),
                "res_tok": ("I32", [G, R, C]), "res_act": ("F16", [G, R, C]),
                "tp_key": ("I64", None), "tp_sum": ("F64", None), "tp_cnt": ("I64", None),
                "bg_key": ("F64", [NB]), "bg_row": ("I64", [NB]), "bg_tok": ("I32", [NB, C]),
                "bg_idx": ("I32", [NB, C, M]), "bg_val": ("F16", [NB, C, M])}

    @classmethod
    def load(cls, path) -> "FeatureState":
        """Read a state written by ``save``; settings, tensor dtypes and shapes are checked
        against each other from the header before anything is allocated (BadInputError)."""
        from ..core import (BadInputError, check_finite, load_safetensors, need, need_int,
                            safetensors_json_meta)

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no feature state (run `mindscope features analyze`)")
        fix = "the state is damaged: delete it and analyse again (without --append)"
        header, meta = safetensors_json_meta(path, "state", "feature state", fix, max_depth=16)
        if meta.get("format") != "mindscope-feature-state/1":
            raise BadInputError(path, f"unknown format {str(meta.get('format'))[:40]!r}", fix)
        s = need(meta, "settings", dict, path)
        n = need_int(s, "n_latents", path, 1, 1 << 26, "settings")
        K = need_int(s, "top_k", path, 1, 1 << 12, "settings")
        ctx = need(s, "context", list, path, "settings")
        if len(ctx) != 2 or not all(isinstance(c, int) and 0 <= c <= 1 << 12 for c in ctx):
            raise BadInputError(path, "settings.context should be [left, right] >= 0", fix)
        R = need_int(s, "reservoir", path, 1, 1 << 12, "settings")
        NB = need_int(s, "n_background", path, 0, 1 << 20, "settings")
        M = need_int(s, "background_codes", path, 0, 1 << 20, "settings")
        tp = need_int(s, "max_token_pairs", path, 0, 1 << 40, "settings")
        row_offset = need_int(meta, "row_offset", path, 0, 1 << 62)
        n_rows = need_int(meta, "n_rows", path, 0, 1 << 62)
        want = cls._shapes(n, K, ctx[0] + 1 + ctx[1], R, NB, min(M, n))
        for k, (dt, shape) in want.items():
            if k not in header:
                raise BadInputError(path, f"has no tensor {k!r}", fix)
            got = header[k]
            if got[0] != dt or (shape is not None and got[1] != shape):
                raise BadInputError(path, f"tensor {k!r} is {got[0]} {got[1]}, its settings need "
                                          f"{dt} {shape}", fix)
        if not header["tp_key"][1] == header["tp_sum"][1] == header["tp_cnt"][1] or \
                len(header["tp_key"][1]) != 1:
            raise BadInputError(path, "token-pair tensors disagree in length", fix)
        t = load_safetensors(path, "feature state", fix)
        for k in ("total", "max", "top_val", "top_act", "res_val", "res_act", "tp_sum", "bg_val"):
            check_finite(t[k], path, f"tensor {k!r}", fix)
        for k in ("res_key", "bg_key"):  # inf marks an empty slot; NaN never
            if bool(torch.isnan(t[k]).any()):
                raise BadInputError(path, f"tensor {k!r} holds NaN", fix)
        st = cls(n, K, tuple(ctx), R, row_offset, tp, NB, M)
        for k in cls._TORCH:
            setattr(st, k, t[k])
        for k in cls._NUMPY:
            setattr(st, k, t[k].numpy().copy())
        st.n_rows, st.tp_pruned = n_rows, bool(meta.get("tp_pruned", False))
        st.extra = meta.get("extra") if isinstance(meta.get("extra"), dict) else {}
        return st

    # ---- read-out ----------------------------------------------------------------------------
    def reservoir_entries(self, latent: int) -> list[dict]:
        """Every reservoir entry of ``latent``: dict(bin, key, row, value, tokens, acts)."""
        out = []
        for b in range(N_RES):
            g = latent * N_RES + b
            for s in range(self.R):
                if np.isfinite(self.res_key[g, s]):
                    out.append({"bin": b, "key": float(self.res_key[g, s]),
                                "row": int(self.res_row[g, s]), "value": float(self.res_val[g, s]),
                                "tokens": self.res_tok[g, s], "acts": self.res_act[g, s]})
        return out

    def quantile_samples(self, latent: int, n_quantiles: int = 4,
                         per_quantile: Optional[int] = None) -> list[list[dict]]:
        """Examples per activation quantile of ``latent``: its non-zero activations are split
        into ``n_quantiles`` groups of equal mass by the histogram; each reservoir bin joins the
        group holding its bin's midpoint mass; the ``per_quantile`` smallest hash keys of a
        group are a uniform sample of the occurrences in that group's bins."""
        per = per_quantile or self.R
        h = self.hist[latent].numpy().reshape(-1)
        hr = np.add.reduceat(h, np.arange(0, N_HIST, RES_PER_HIST))  # (N_RES,)
        tot = hr.sum()
        groups: list[list[dict]] = [[] for _ in range(n_quantiles)]
        if tot == 0:
            return groups
        mid = (np.cumsum(hr) - hr / 2) / tot
        q_of_bin = np.minimum((mid * n_quantiles).astype(int), n_quantiles - 1)
        ents = self.reservoir_entries(latent)
        for q in range(n_quantiles):
            c = sorted((e for e in ents if q_of_bin[e["bin"]] == q),
                       key=lambda e: (e["key"], e["row"]))
            groups[q] = c[:per]
        return groups

    def token_pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(token, latent, count, sum) of every stored (token, latent) pair."""
        self._compact_tokens()
        return (self.tp_key // self.n, self.tp_key % self.n, self.tp_cnt, self.tp_sum)
