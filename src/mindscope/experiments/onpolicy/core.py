"""On-policy recognition, shared pieces: prompt/response data, prefilled sequences as token ids,
per-position next-token entropy and input surprisal (optionally with activations), and the
statistics (paired bootstrap, AUC, Wilson interval).

A ``Seq`` is a chat prompt (rendered with the generation prompt) followed by a response, both as
token ids. Response position ``k`` (0-based) is the position of the k-th response token; there

* ``entropy[k]``   = H(p(. | x_<=j)) = -sum_v p_v log p_v at j = start + k: the model's uncertainty
  about the NEXT token after reading response token k;
* ``surprisal[k]`` = -log p(x_j | x_<j): how surprising response token k was when it was read.

>>> import torch
>>> logits = torch.tensor([[[0.0, 0.0], [10.0, -10.0]]])        # (B=1, T=2, V=2)
>>> ent, sur = entropy_surprisal(logits, torch.tensor([[0, 1]]))
>>> round(float(ent[0, 0]), 4), round(float(sur[0, 1]), 4)       # log 2, -log p(1) = log 2
(0.6931, 0.6931)
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...core import Batch, as_reply
from ...core import RowMeta
from ...runs import bootstrap_ci, wilson

log = logging.getLogger(__name__)


# ---- data ---------------------------------------------------------------------------------
def _read_jsonl(path, need: Sequence[str], what: str) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file {path} does not exist")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i} is not valid JSON ({e}); write one JSON object per "
                             "line") from None
        miss = [k for k in need if not isinstance(r, dict) or not isinstance(r.get(k), str)]
        if miss:
            raise ValueError(f"{path}:{i} lacks string field(s) {miss}; each line must look like "
                             + json.dumps({k: "..." for k in need}))
        rows.append(r)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def shipped(name: str) -> list[dict]:
    """A shipped prompt set: ``prompts`` (24 prompts + human-written responses, written for
    mindscope) or ``open_prompts`` (12 open-ended prompts for the cached-intention protocol)."""
    f = resources.files("mindscope") / "data" / "onpolicy" / f"{name}.jsonl"
    with resources.as_file(f) as p:
        return _read_jsonl(p, ["prompt"], f"shipped {name}")


def load_offpolicy_jsonl(path) -> dict[str, str]:
    """``{"prompt": ..., "response": ...}`` per line (another model's answers) -> prompt -> response."""
    return {r["prompt"]: r["response"]
            for r in _read_jsonl(path, ["prompt", "response"], "off-policy responses")}


# ---- sequences ----------------------------------------------------------------------------
@dataclass
class Seq:
    """Prompt ids + response ids; ``start`` = index of the first response token."""

    ids: list[int]
    start: int
    prompt_idx: int
    condition: str
    text: str = ""
    source_idx: Optional[int] = None
    """Whose response tokens these are (the prompt they were written for; a shuffled sequence
    carries another prompt's response). Probe splits group rows by this, so one token sequence
    never sits on both sides of a train/test split. None = ``prompt_idx``."""

    @property
    def source(self) -> int:
        return self.prompt_idx if self.source_idx is None else self.source_idx

    @property
    def n_resp(self) -> int:
        return len(self.ids) - self.start


def prompt_ids(lm, prompt: str) -> list[int]:
    """Chat-rendered prompt (with the generation prompt) as ids; a model without a chat template
    gets core's plain transcript (``[BOS]User: ...\\nAssistant:``, base models)."""
    text = lm.chat([{"role": "user", "content": prompt}]).text
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def response_ids(lm, text: str, max_tokens: int) -> list[int]:
    """A response text as ids (tokenized on its own, as a prefill; after a plain transcript's
    ``Assistant:`` with the leading space the model's own reply has), cut to ``max_tokens``."""
    ids = lm.tokenizer(as_reply(lm.tokenizer, text), add_special_tokens=False)["input_ids"]
    return ids[:max_tokens]


def make_seq(lm, prompt: str, resp: list[int], prompt_idx: int, condition: str,
             source_idx: Optional[int] = None) -> Seq:
    p = prompt_ids(lm, prompt)
    if not resp:
        raise ValueError(f"empty {condition} response for prompt {prompt[:40]!r}")
    return Seq(p + list(resp), len(p), prompt_idx, condition,
               lm.tokenizer.decode(resp, skip_special_tokens=True), source_idx)


def pad_left(lm, rows: Sequence[Sequence[int]]) -> Batch:
    """Left-padded ``Batch`` of raw id lists (row text = the decoded ids; no role spans), usable
    by ``lm.forward``, ``lm.capture`` and ``lm.generate``."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), lm.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(list(r), dtype=torch.long)
        mask[i, T - len(r):] = 1
    meta = [RowMeta(lm.tokenizer.decode(list(r)), [(0, 0)] * len(r), []) for r in rows]
    return Batch(ids, mask, meta)


def response_mask(seqs: Sequence[Seq]) -> torch.Tensor:
    """(B, T_max) bool in UNPADDED coordinates: True on response-token positions."""
    T = max(len(s.ids) for s in seqs)
    m = torch.zeros((len(seqs), T), dtype=torch.bool)
    for i, s in enumerate(seqs):
        m[i, s.start:len(s.ids)] = True
    return m


def entropy_surprisal(logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entropy of the next-token distribution at each position and surprisal of each token.

    logits (B, T, V), ids (B, T) -> entropy (B, T), surprisal (B, T) (surprisal[:, 0] = nan)."""
    lp = torch.log_softmax(logits.float(), -1)  # (B, T, V)
    ent = -(lp.exp() * lp).sum(-1)  # (B, T)
    sur = torch.full(ids.shape, float("nan"))
    sur[:, 1:] = -lp[:, :-1].gather(-1, ids[:, 1:, None].to(lp.device)).squeeze(-1).cpu()
    return ent.cpu(), sur


@dataclass
class TokenStats:
    """Per-sequence arrays over response positions (length ``n_resp``)."""

    entropy: list[np.ndarray]
    surprisal: list[np.ndarray]
    acts: dict[str, list[torch.Tensor]] = field(default_factory=dict)
    """site -> per sequence (n_resp, d) activations (only if sites were asked for)."""
    token_ids: list[np.ndarray] = field(default_factory=list)
    prev_entropy: list[np.ndarray] = field(default_factory=list)
    """Entropy at the position before each response token (t-1): the expected surprisal of
    token t under the model, which a surprise probe may merely copy."""

    def mean_entropy(self) -> np.ndarray:
        return np.array([float(e.mean()) for e in self.entropy])


def token_stats(lm, seqs: Sequence[Seq], sites: Optional[Sequence[str]] = None,
                batch_size: int = 8, interventions_for=None, desc: str = "entropy",
                progress: bool = True) -> TokenStats:
    """Forward every sequence (prefilled, teacher-forced) and read entropy and surprisal at its
    response positions (+ activations at ``sites``). ``interventions_for(a, b, batch, mask)``
    may return interventions for rows a..b (mask: (b-a, T) response positions, unpadded)."""
    out = TokenStats([], [], {s: [] for s in (sites or [])}, [], [])
    for a in tqdm(range(0, len(seqs), batch_size), desc=desc, unit="batch",
                  disable=not progress or len(seqs) <= batch_size):
        chunk = seqs[a:a + batch_size]
        b = pad_left(lm, [s.ids for s in chunk])
        mask = response_mask(chunk)
        ivs = interventions_for(a, a + len(chunk), b, mask) if interventions_for else []
        with lm.intervene(*ivs):
            if sites:
                cap = lm.capture(b, sites=list(sites), positions=mask, stop_early=False,
                                 batch_size=len(chunk), dtype=torch.float32, progress=False)
                logits = cap.logits
            else:
                logits = lm.forward(b)
        ent, sur = entropy_surprisal(logits, b.input_ids)  # (B, T)
        pad = b.pad
        for i, s in enumerate(chunk):
            lo, hi = int(pad[i]) + s.start, int(pad[i]) + len(s.ids)
            out.entropy.append(ent[i, lo:hi].numpy().astype(np.float64))
            out.prev_entropy.append(ent[i, lo - 1:hi - 1].numpy().astype(np.float64))
            out.surprisal.append(sur[i, lo:hi].numpy().astype(np.float64))
            out.token_ids.append(b.input_ids[i, lo:hi].numpy())
        if sites:
            for site in sites:
                rows = cap[site]
                for i in range(len(chunk)):
                    out.acts[site].append(rows[cap.row == i])
    return out


# ---- statistics ---------------------------------------------------------------------------
def ratio_ci(off: np.ndarray, on: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """mean(off) / mean(on) over prompts, paired bootstrap over prompts."""
    off, on = np.asarray(off, float), np.asarray(on, float)
    est, lo, hi = bootstrap_ci(lambda i: off[i].mean() / on[i].mean(), len(on), n_boot, seed)
    return {"ratio": est, "ci": [lo, hi], "n": int(len(on))}


def bootstrap_mean(x: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict:
    """Mean with a percentile bootstrap CI over prompts: ``{"mean", "ci": [lo, hi], "n"}``
    (``runs.mean_ci`` is the normal-approximation one)."""
    x = np.asarray(x, float)
    est, lo, hi = bootstrap_ci(lambda i: x[i].mean(), len(x), n_boot, seed)
    return {"mean": est, "ci": [lo, hi], "n": int(len(x))}


def auc(scores_pos: np.ndarray, scores_neg: np.ndarray) -> float:
    """ROC AUC of ``score`` for positives vs negatives: P(pos > neg) + P(pos = neg) / 2 (the
    Mann-Whitney form; equals sklearn ``roc_auc_score``, checked in the tests, and is fast
    enough to bootstrap)."""
    p = np.asarray(scores_pos, float)[:, None]
    q = np.asarray(scores_neg, float)[None, :]
    if p.size == 0 or q.size == 0:
        return float("nan")
    return float((p > q).mean() + 0.5 * (p == q).mean())


def auc_ci(scores_pos, scores_neg, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC with a paired bootstrap over prompts (pos[i] and neg[i] share prompt i)."""
    p, q = np.asarray(scores_pos, float), np.asarray(scores_neg, float)
    if len(p) != len(q):
        est = auc(p, q)
        return {"auc": est, "ci": [float("nan"), float("nan")], "n": int(len(p) + len(q))}

    def f(i):
        both = np.r_[p[i], q[i]]
        return auc(p[i], q[i]) if np.ptp(both) > 0 else float("nan")
    est, lo, hi = bootstrap_ci(f, len(p), n_boot, seed)
    return {"auc": est, "ci": [lo, hi], "n": int(2 * len(p))}


def wilson_bounds(k: int, n: int, z: float = 1.96) -> list:
    """``runs.wilson``'s interval as a list [lo, hi] (nan, nan when n == 0)."""
    w = wilson(k, n, z)
    return [w["lo"], w["hi"]] if n else [float("nan"), float("nan")]


def per_position(arrays: Sequence[np.ndarray], length: int) -> np.ndarray:
    """Mean over sequences at each response position 0..length-1 (nan where none reach it)."""
    out = np.full(length, np.nan)
    for k in range(length):
        vals = [a[k] for a in arrays if len(a) > k]
        if vals:
            out[k] = float(np.mean(vals))
    return out
