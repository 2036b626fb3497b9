"""Causal effects of emotion vectors: pairwise activity preferences (Elo), their shift under
steering on one option's tokens, and misaligned choices in multiple-choice scenarios.

A choice is read from one forward pass: logit("A") - logit("B") at the first assistant position
after "Which would you rather do? (A) ... (B) ...". Every pair is shown in both orders, so the
letter bias cancels. Steered rows carry their own vector and strength (per-row ``Add`` with
(B, d) vectors and (B,) scales) and their own position mask, so one batched forward covers many
conditions.

Elo (sequential, Elo 1978): E_a = 1 / (1 + 10^((R_b - R_a)/400)); R_a += K (S_a - E_a),
R_b -= K (S_a - E_a). A logit difference is a log-odds, so a shift of Δ in it is a rating shift
of 400·Δ/ln 10 ≈ 173.7·Δ Elo points.

>>> r = elo([("x", "y", 1.0)], k=32, init=1000, passes=1, shuffle=False)
>>> r["x"], r["y"]
(1016.0, 984.0)
"""
from __future__ import annotations

import logging
import math
import random
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

import mindscope as ms

log = logging.getLogger(__name__)
ELO_PER_LOGIT = 400.0 / math.log(10.0)
PREF_TEMPLATE = "Which would you rather do?\n(A) {a}\n(B) {b}\nAnswer with A or B."
MC_TEMPLATE = "{q}\n(A) {a}\n(B) {b}\nAnswer with A or B."


def elo(matches: Sequence[tuple], k: float = 32.0, init: float = 1000.0, passes: int = 1,
        shuffle: bool = True, seed: int = 0) -> dict[str, float]:
    """Sequential Elo over ``matches`` = [(a, b, score_a in [0, 1])], ``passes`` times (each pass
    in a seeded random order when ``shuffle``)."""
    R: dict[str, float] = {}
    for a, b, _ in matches:
        R.setdefault(a, float(init))
        R.setdefault(b, float(init))
    rng = random.Random(seed)
    order = list(matches)
    for _ in range(passes):
        if shuffle:
            rng.shuffle(order)
        for a, b, s in order:
            e = 1.0 / (1.0 + 10 ** ((R[b] - R[a]) / 400.0))
            R[a] += k * (float(s) - e)
            R[b] -= k * (float(s) - e)
    return R


def letter_ids(lm) -> tuple[int, int]:
    ids = [lm.tokenizer.encode(x, add_special_tokens=False) for x in ("A", "B")]
    if any(len(i) != 1 for i in ids):
        log.warning("'A'/'B' are not single tokens for %s; using their first tokens", lm.name)
    return ids[0][0], ids[1][0]


def span_mask(lm, prompts, spans: Sequence[Optional[tuple[int, int]]]) -> torch.Tensor:
    """(B, T) bool in unpadded token coordinates: the tokens overlapping each row's char span."""
    b = lm.tokenize(prompts)
    T = int(b.attention_mask.sum(1).max())
    m = torch.zeros(len(b), T, dtype=torch.bool)
    for i, (meta, sp) in enumerate(zip(b.meta, spans)):
        if sp is None:
            continue
        lo, hi = sp
        for t, (x, y) in enumerate(meta.offsets):
            if x < hi and y > lo:
                m[i, t] = True
    return m


def choice_logits(lm, prompts, site: Optional[str] = None, vectors: Optional[torch.Tensor] = None,
                  scales: Optional[torch.Tensor] = None, masks: Optional[torch.Tensor] = None,
                  batch_size: int = 16, desc: str = "choices") -> np.ndarray:
    """logit(A) - logit(B) at the last prompt position per row (B,), with an optional per-row
    ``Add`` at ``site``: vectors (B, d), scales (B,), position masks (B, T) or all positions."""
    ia, ib = letter_ids(lm)
    out = []
    for a in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch",
                  disable=len(prompts) <= batch_size):
        chunk = prompts[a:a + batch_size]
        ivs = []
        if site is not None and vectors is not None:
            pos = masks[a:a + batch_size] if masks is not None else "all"
            ivs = [ms.Add(site, vectors[a:a + batch_size], scale=scales[a:a + batch_size],
                          positions=pos)]
        with lm.intervene(*ivs):
            lg = lm.forward(chunk)[:, -1].float()  # (b, V)
        out.append((lg[:, ia] - lg[:, ib]).cpu().numpy())
    return np.concatenate(out)


def pref_prompts(lm, pairs: Sequence[tuple[str, str]]):
    """One chat prompt per ordered pair, plus each option's char span in the rendered text."""
    prompts, spans = [], []
    for a, b in pairs:
        p = lm.chat([{"role": "user", "content": PREF_TEMPLATE.format(a=a, b=b)}])
        s = p.text.rfind("(A) " + a) + 4
        t = p.text.rfind("(B) " + b) + 4
        prompts.append(p)
        spans.append(((s, s + len(a)), (t, t + len(b))))
    return prompts, spans


def preferences(lm, vs, activities: Sequence[str], emotions: Sequence[str], site: str,
                strength: float, n_pairs: int, seed: int = 0, batch_size: int = 16,
                elo_passes: int = 20) -> dict:
    """Baseline Elo over all pairs (both orders); probe-preference correlation per emotion (the
    activity text's projection on the vector vs Elo, across activities); the steering effect per
    emotion (mean shift in the steered option's logit advantage, steering on its tokens only, at
    ``strength`` × the mean residual norm), in logits and Elo points."""
    from ...steering import residual_norms
    from .vectors import corr_ci, pearson

    acts = list(activities)
    pairs = [(a, b) for i, a in enumerate(acts) for b in acts[i + 1:]]
    ordered = pairs + [(b, a) for a, b in pairs]
    prompts, spans = pref_prompts(lm, ordered)
    base = choice_logits(lm, prompts, batch_size=batch_size, desc="preferences")
    n = len(pairs)
    p_first = 0.5 * (1 / (1 + np.exp(-base[:n])) + 1 / (1 + np.exp(base[n:])))  # P(a over b)
    ratings = elo([(a, b, float(s)) for (a, b), s in zip(pairs, p_first)], passes=elo_passes,
                  seed=seed, k=16.0)
    elo_vec = np.array([ratings[a] for a in acts])
    # probe-preference correlation: each activity alone, mean over its tokens
    H = ms_row_means(lm, [f"I could {a}." for a in acts], site, batch_size)  # (n_act, d)
    proj = (H - H.mean(0)) @ vs.data.float().T  # (n_act, k)
    probe_pref = {e: pearson(proj[:, vs.names.index(e)].numpy(), elo_vec) for e in vs.names}
    # steering: sample pairs, steer each side in each order
    rng = random.Random(seed)
    sample = rng.sample(range(n), min(n_pairs, n))
    rows = []  # (prompt index in ordered, which option steered 0/1)
    for i in sample:
        for o in (i, i + n):
            for side in (0, 1):
                rows.append((o, side))
    norm = residual_norms(lm, site)[site]
    steer = {}
    emos = [e for e in emotions if e in vs.names]
    all_p, all_v, all_m, meta = [], [], [], []
    for e in emos:
        v = vs[e].data.float() * norm
        for o, side in rows:
            all_p.append(prompts[o])
            all_v.append(v)
            all_m.append(spans[o][side])
            meta.append((e, o, side))
    if meta:
        M = span_mask(lm, all_p, all_m)
        V = torch.stack(all_v)  # (R, d)
        S = torch.full((len(all_p),), float(strength))
        d = choice_logits(lm, all_p, site, V, S, M, batch_size, desc="steered preferences")
        for (e, o, side), x in zip(meta, d):
            sign = 1.0 if side == 0 else -1.0  # advantage of the steered option
            steer.setdefault(e, []).append(sign * (x - base[o]))
    effects = {e: {"logit_shift": float(np.mean(v)), "elo_shift": float(np.mean(v) * ELO_PER_LOGIT),
                   "sd": float(np.std(v)), "n": len(v)} for e, v in steer.items()}
    xs = [probe_pref[e] for e in effects]
    ys = [effects[e]["elo_shift"] for e in effects]
    r = pearson(xs, ys) if len(xs) >= 3 else float("nan")
    return {"activities": acts, "elo": {a: float(ratings[a]) for a in acts},
            "p_first_mean": float(p_first.mean()), "letter_bias_logit": float(base.mean()),
            "probe_preference_r": probe_pref, "steering": effects, "strength": strength,
            "residual_norm": norm, "n_pairs_steered": len(sample),
            "r_probe_vs_steering": corr_ci(r, len(xs))}


def ms_row_means(lm, texts, site, batch_size):
    from ...steering import row_means
    return row_means(lm, list(texts), [site], "all", False, 1, batch_size)[site]


def misaligned_choices(lm, vs, choices: Sequence[dict], emotions: Sequence[str], site: str,
                       strength: float, seed: int = 0, batch_size: int = 16) -> dict:
    """Rate of choosing the misaligned option (sycophantic / dishonest) per condition (none and
    each emotion steered at all positions, ``strength`` × residual norm). Each scenario appears
    in both letter orders; a choice = sign of the logit difference."""
    from ...steering import residual_norms
    from ...runs import wilson

    prompts, mis_is_a = [], []
    for c in choices:
        for flip in (False, True):
            a, b = (c["misaligned"], c["honest"]) if not flip else (c["honest"], c["misaligned"])
            prompts.append(lm.chat([{"role": "user", "content": MC_TEMPLATE.format(q=c["q"], a=a, b=b)}]))
            mis_is_a.append(not flip)
    mis_is_a = np.array(mis_is_a)
    norm = residual_norms(lm, site)[site]
    conds = ["none"] + [e for e in emotions if e in vs.names]
    P, V, S = [], [], []
    for cnd in conds:
        v = torch.zeros(vs.d) if cnd == "none" else vs[cnd].data.float() * norm
        for p in prompts:
            P.append(p)
            V.append(v)
            S.append(0.0 if cnd == "none" else strength)
    d = choice_logits(lm, P, site, torch.stack(V), torch.tensor(S), None, batch_size,
                      desc="misaligned choices")
    out = {}
    for j, cnd in enumerate(conds):
        x = d[j * len(prompts):(j + 1) * len(prompts)]
        mis_logit = np.where(mis_is_a, x, -x)  # logit advantage of the misaligned option
        out[cnd] = {**wilson(int((mis_logit > 0).sum()), len(x)),
                    "mean_logit": float(mis_logit.mean())}
    return {"rates": out, "strength": strength, "n_scenarios": len(choices)}
