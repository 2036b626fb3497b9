"""Activation patching on clean/corrupted prompt pairs, batched: many patched variants run in one
forward, each row carrying its own position mask and ``Replace`` values.

Metric: the logit difference ``LD = logit[correct] - logit[wrong]`` at the last token, averaged
over pairs, normalised as ``(LD_patched - LD_corrupt) / (LD_clean - LD_corrupt)`` in *both*
modes, so 1 = behaves like the clean run and 0 = like the corrupted run:

- ``denoise``: run the corrupted prompt, patch in one clean activation (high = sufficient).
- ``noise``: run the clean prompt, patch in one corrupted activation (low = necessary).

Pairs must tokenize to the same length (template-aligned prompts, as in IOI), so positions line
up across clean, corrupted and all pairs.

>>> # r = activation_patch(lm, clean, corrupt, answers=(" Mary", " John"), sites="resid_pre.*")
>>> # r.scores.shape  -> (30, T);  r.heatmap("patch.png")
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..core import Batch, Replace
from ._common import answer_ids, as_list, head_proj, last_logit_diff, n_heads, save_files

MODES = ("denoise", "noise")


@dataclass
class PatchResult:
    """Normalised patching scores with their labels (1 = clean behaviour, 0 = corrupted)."""

    scores: torch.Tensor
    """(S, T) per site x position, (S,) per site (positions='all'), or (L, H) per head."""
    rows: list[str]
    """Row labels: site names, or ``layer L`` for head results."""
    cols: list[str]
    """Column labels: the clean prompt's tokens (first pair), or head indices."""
    clean_ld: float
    """Mean logit difference of the clean run."""
    corrupt_ld: float
    """Mean logit difference of the corrupted run."""
    mode: str
    method: str = "exact"
    """``exact`` (activation patching) or ``attribution`` (gradient x activation difference)."""
    meta: dict = field(default_factory=dict)

    def heatmap(self, path, title: Optional[str] = None) -> Path:
        from ._plot import heatmap

        s = self.scores if self.scores.dim() == 2 else self.scores[:, None]
        cols = self.cols if self.scores.dim() == 2 else ["all"]
        return heatmap(s, self.rows, cols, path, title or
                       f"{self.method} patching ({self.mode}), normalised logit difference")

    def save(self, folder) -> Path:
        """``scores.safetensors`` + ``patch.json`` (labels, baselines, settings) in ``folder``."""
        meta = {"rows": self.rows, "cols": self.cols, "clean_ld": self.clean_ld,
                "corrupt_ld": self.corrupt_ld, "mode": self.mode, "method": self.method,
                **self.meta}
        return save_files(folder, {"scores.safetensors": {"scores": self.scores},
                                   "patch.json": meta})


@dataclass
class Pairs:
    clean: Batch
    corrupt: Batch
    ans: torch.Tensor  # (P, 2)
    clean_ld: torch.Tensor  # (P,)
    corrupt_ld: torch.Tensor  # (P,)

    @property
    def P(self) -> int:
        return len(self.clean)

    @property
    def T(self) -> int:
        return self.clean.input_ids.shape[1]

    def norm(self, ld: torch.Tensor) -> torch.Tensor:
        """ld (..., P) raw logit differences -> (...) normalised score of the pair-mean."""
        c, k = self.clean_ld.mean(), self.corrupt_ld.mean()
        if abs(float(c - k)) < 1e-6:
            raise ValueError(f"clean and corrupted runs have the same logit difference "
                             f"({float(c):.4g}); the normalised metric is undefined")
        return (ld.mean(-1) - k) / (c - k)

    def runs(self, mode: str) -> tuple[Batch, Batch]:
        """-> (source of patched values, run being patched)."""
        return (self.clean, self.corrupt) if mode == "denoise" else (self.corrupt, self.clean)

    def labels(self, lm) -> list[str]:
        return [lm.tokenizer.decode([int(t)]) for t in self.clean.input_ids[0]]


def prepare_pairs(lm, clean, corrupt, answers, chat: bool = False) -> Pairs:
    """Tokenize and check clean/corrupted prompts; compute the baseline logit differences."""
    clean, corrupt = as_list(clean), as_list(corrupt)
    if len(clean) != len(corrupt):
        raise ValueError(f"{len(clean)} clean prompts but {len(corrupt)} corrupted ones; give "
                         "one corrupted prompt per clean prompt")
    cb, kb = lm.tokenize(clean, chat=chat), lm.tokenize(corrupt, chat=chat)
    lens = [int(x) for x in cb.attention_mask.sum(1)] + [int(x) for x in kb.attention_mask.sum(1)]
    if len(set(lens)) != 1:
        raise ValueError(f"clean and corrupted prompts must all tokenize to the same length so "
                         f"positions line up; token counts: clean {lens[:len(clean)]}, corrupted "
                         f"{lens[len(clean):]}. Use template-aligned prompts (swap single-token "
                         "names/words).")
    ans = answer_ids(lm, answers, len(clean))
    return Pairs(cb, kb, ans, last_logit_diff(lm.forward(cb), ans).cpu(),
                 last_logit_diff(lm.forward(kb), ans).cpu())


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def _cache_kw(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class _Prefix:
    """The target run's shared prefix: positions ``[0, f)`` hold the same tokens in every clean
    and corrupted prompt, so every activation there is the same in the clean and corrupted runs
    and no patch can change it. It is run once (KV cache); each patched batch runs only
    positions ``f..T-1`` on a copy of that cache, its rows picked per pair."""

    def __init__(self, lm, pr: "Pairs", tgt: Batch):
        self.lm, self.tgt, self.T = lm, tgt, pr.T
        same = (pr.clean.input_ids == pr.corrupt.input_ids).all(0)  # (T,)
        self.f = int(same.long().cumprod(0).sum())  # first position where any pair differs
        self.f = min(self.f, self.T - 1)  # the last position always runs (its logits are needed)
        self.kw, self.cache = _cache_kw(lm.model), None
        if self.f > 0:
            ids, mask = tgt.input_ids[:, :self.f], tgt.attention_mask[:, :self.f]
            with torch.no_grad(), lm.run_context(Batch(ids, mask)):
                res = lm.call(ids, mask, use_cache=True)
            self.cache = getattr(res, self.kw, None) or getattr(res, "past_key_values", None)

    def logits(self, pb: torch.Tensor) -> torch.Tensor:
        """Logits (n, T - f, V) of the target rows ``pb`` under whatever hooks are active."""
        lm, f = self.lm, self.f
        ids, mask = self.tgt.input_ids[pb], self.tgt.attention_mask[pb]
        if self.cache is None:
            return lm.forward(Batch(ids, mask))
        cache = copy.deepcopy(self.cache)
        cache.reorder_cache(pb.to(lm.device))
        with torch.no_grad(), lm.run_context(Batch(ids, mask)):  # runs positions f..T-1 only
            return lm.call(ids[:, f:], mask, use_cache=True, **{self.kw: cache}).logits


def activation_patch(lm, clean, corrupt, answers, sites="resid_pre.*", positions: str = "each",
                     mode: str = "denoise", batch_size: int = 32, chat: bool = False,
                     pairs: Optional[Pairs] = None) -> PatchResult:
    """Patch one site (x one position) at a time. ``positions='each'`` -> scores (S, T);
    ``'all'`` patches every position of the site at once -> scores (S,)."""
    _check_mode(mode)
    if positions not in ("each", "all"):
        raise ValueError(f"positions must be 'each' or 'all', got {positions!r}")
    pr = pairs or prepare_pairs(lm, clean, corrupt, answers, chat)
    names = lm.expand_sites(sites)
    src_b, tgt_b = pr.runs(mode)
    P, T = pr.P, pr.T
    cap = lm.capture(src_b, sites=names, positions="all")
    src = {s: cap[s].view(P, T, -1) for s in names}  # (P, T, d) each
    pre = _Prefix(lm, pr, tgt_b)
    # variants: (site index, position or -1 for all); rows = variants x pairs. A patch at a
    # position before pre.f is a no-op (same activation in both runs): no row runs for it.
    var = [(si, t) for si in range(len(names)) for t in (range(T) if positions == "each" else [-1])]
    base = last_logit_diff(pre.logits(torch.arange(P)), pr.ans).cpu()  # (P,) unpatched target
    live = [i for i, (_, t) in enumerate(var) if t < 0 or t >= pre.f]
    v_idx = torch.tensor(live, dtype=torch.long).repeat_interleave(P)  # (R,)
    p_idx = torch.arange(P).repeat(len(live))  # (R,)
    ld = base.repeat(len(var), 1)  # (V, P) skipped variants keep the unpatched value
    done = torch.empty(len(v_idx))
    for a in tqdm(range(0, len(v_idx), batch_size), desc="patching", unit="batch",
                  disable=len(v_idx) <= batch_size):
        vb, pb = v_idx[a:a + batch_size], p_idx[a:a + batch_size]
        ivs = []
        for si in sorted({var[int(v)][0] for v in vb}):
            mask = torch.zeros(len(vb), T, dtype=torch.bool)  # (n, T) rows x positions to patch
            for r, v in enumerate(vb.tolist()):
                if var[v][0] == si:
                    if var[v][1] < 0:
                        mask[r] = True
                    else:
                        mask[r, var[v][1]] = True
            mask[:, :pre.f] = False  # the prefix is not re-run (and needs no patch)
            # mask is in unpadded coordinates == padded ones (equal lengths)
            r_i, t_i = mask.nonzero(as_tuple=True)  # row-major, the order masked_apply uses
            vals = src[names[si]][pb[r_i], t_i]  # (n_sel, d)
            ivs.append(Replace(names[si], (lambda v: lambda h: v.to(h))(vals), positions=mask))
        with lm.intervene(*ivs):
            logits = pre.logits(pb)
        done[a:a + batch_size] = last_logit_diff(logits, pr.ans[pb]).cpu()
    if live:
        ld[torch.tensor(live)] = done.view(len(live), P)
    scores = pr.norm(ld.view(len(var), P))  # (V,)
    cols = pr.labels(lm)
    scores = scores.view(len(names), T) if positions == "each" else scores
    return PatchResult(scores, names, cols, float(pr.clean_ld.mean()), float(pr.corrupt_ld.mean()),
                       mode, "exact", {"positions": positions, "pairs": P, "shared_prefix": pre.f})


@contextlib.contextmanager
def head_hooks(lm, fn):
    """Pre-hooks on every layer's head projection: ``fn(layer, z (B, T, H*hd)) -> z or None``."""
    hs = []

    def make(layer):
        def hook(mod, args):
            new = fn(layer, args[0])
            return None if new is None else (new,) + tuple(args[1:])
        return hook
    try:
        hs = [head_proj(lm, i).register_forward_pre_hook(make(i)) for i in range(lm.n_layers)]
        yield
    finally:
        for h in hs:
            h.remove()


def head_inputs(lm, batch: Batch) -> dict[int, torch.Tensor]:
    """Per layer, the concatenated head outputs (B, T, H*hd) entering the output projection."""
    z = {}

    def rec(layer, x):
        z[layer] = x.detach().clone()
    with head_hooks(lm, rec):
        lm.forward(batch)
    return z


def patch_heads(lm, clean, corrupt, answers, mode: str = "denoise", batch_size: int = 32,
                chat: bool = False, pairs: Optional[Pairs] = None) -> PatchResult:
    """Patch each attention head's output (at every position) -> scores (L, H)."""
    _check_mode(mode)
    pr = pairs or prepare_pairs(lm, clean, corrupt, answers, chat)
    src_b, tgt_b = pr.runs(mode)
    L, H, P, T = lm.n_layers, n_heads(lm), pr.P, pr.T
    src = head_inputs(lm, src_b)
    pre = _Prefix(lm, pr, tgt_b)
    var = [(li, h) for li in range(L) for h in range(H)]
    v_idx = torch.arange(len(var)).repeat_interleave(P)
    p_idx = torch.arange(P).repeat(len(var))
    ld = torch.empty(len(v_idx))
    for a in tqdm(range(0, len(v_idx), batch_size), desc="head patching", unit="batch",
                  disable=len(v_idx) <= batch_size):
        vb, pb = v_idx[a:a + batch_size], p_idx[a:a + batch_size]

        def edit(layer, z, vb=vb, pb=pb):  # z (n, T - f, H*hd): the positions being run
            rows = [r for r, v in enumerate(vb.tolist()) if var[v][0] == layer]
            if not rows:
                return None
            z = z.clone()
            hd, n_t = z.shape[-1] // H, z.shape[1]
            for r in rows:
                h = var[int(vb[r])][1]
                z[r, :, h * hd:(h + 1) * hd] = src[layer][pb[r], T - n_t:, h * hd:(h + 1) * hd]
            return z
        with head_hooks(lm, edit):
            logits = pre.logits(pb)
        ld[a:a + batch_size] = last_logit_diff(logits, pr.ans[pb]).cpu()
    scores = pr.norm(ld.view(len(var), P)).view(L, H)
    return PatchResult(scores, [f"layer {i}" for i in range(L)], [str(h) for h in range(H)],
                       float(pr.clean_ld.mean()), float(pr.corrupt_ld.mean()), mode, "exact",
                       {"positions": "all", "pairs": P, "unit": "head"})
