"""Protocol 1, the entropy gap: the model's own (on-policy) responses vs off-policy responses to
the same prompts, each prefilled as the assistant turn; mean next-token entropy over response
positions, the off/on ratio with a paired bootstrap over prompts, per response position.

Off-policy conditions (each cut to the own response's length for that prompt, so both sides
average over the same positions):

* ``human``    - the shipped human-written answer to the prompt;
* ``shuffled`` - the model's own answer to a DIFFERENT prompt (a derangement of prompts);
* ``other``    - another model's answer (``other_model`` generates it, or a JSONL file gives it).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import numpy as np

from .core import (Seq, TokenStats, auc_ci, make_seq, bootstrap_mean, pad_left, per_position,
                   prompt_ids, ratio_ci,
                   response_ids, token_stats)

log = logging.getLogger(__name__)


def sample_own(lm, prompts: Sequence[str], max_new_tokens: int, temperature: float, top_p: float,
               seed: int, batch_size: int = 32) -> list[list[int]]:
    """The model's own responses as generated token ids (EOS excluded)."""
    batch = pad_left(lm, [prompt_ids(lm, p) for p in prompts])
    gens = lm.generate(batch, chat=True, max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, seed=seed, batch_size=batch_size)
    return [g.token_ids for g in gens]


def derangement(n: int, seed: int) -> np.ndarray:
    """A random permutation with no fixed point (n >= 2)."""
    rng = np.random.default_rng(seed)
    cycle = rng.permutation(n)
    out = np.empty(n, dtype=int)
    out[cycle] = np.roll(cycle, -1)  # each element maps to the next one in a random n-cycle
    return out


def build_conditions(lm, prompts: Sequence[str], own: Sequence[list[int]],
                     human: Optional[Sequence[str]] = None, other: Optional[Sequence[str]] = None,
                     shuffled: bool = True, seed: int = 0) -> list[Seq]:
    """Sequences for every condition; prompts whose own response is empty are skipped."""
    keep = [i for i, r in enumerate(own) if len(r) > 0]
    if len(keep) < len(own):
        log.warning("%d prompt(s) got an empty own response (immediate end-of-turn); skipped",
                    len(own) - len(keep))
    if len(keep) < 2:
        raise ValueError("fewer than 2 prompts have a non-empty own response; use more prompts "
                         "or more max_new_tokens")
    seqs = []
    perm = derangement(len(keep), seed)
    for j, i in enumerate(keep):
        n = len(own[i])
        seqs.append(make_seq(lm, prompts[i], own[i], i, "own"))
        if human is not None:
            seqs.append(make_seq(lm, prompts[i], response_ids(lm, human[i], n), i, "human"))
        if shuffled:
            src = keep[perm[j]]  # the tokens are prompt src's response: group by src
            seqs.append(make_seq(lm, prompts[i], own[src][:n], i, "shuffled", source_idx=src))
        if other is not None and other[i]:
            seqs.append(make_seq(lm, prompts[i], response_ids(lm, other[i], n), i, "other"))
    return seqs


def by_condition(seqs: Sequence[Seq], stats: TokenStats) -> dict[str, dict[int, int]]:
    """condition -> {prompt_idx: index into seqs/stats}."""
    out: dict[str, dict[int, int]] = {}
    for k, s in enumerate(seqs):
        out.setdefault(s.condition, {})[s.prompt_idx] = k
    return out


def entropy_gap(seqs: Sequence[Seq], stats: TokenStats, n_boot: int = 1000, seed: int = 0,
                max_positions: Optional[int] = None) -> dict:
    """Mean entropy per condition, off/on ratios (paired over prompts), AUC of entropy as an
    on/off classifier, per-position curves, and each prompt's mean entropy per condition
    (``per_prompt[cond][str(prompt_idx)]``, for paired comparisons across runs)."""
    idx = by_condition(seqs, stats)
    if "own" not in idx:
        raise ValueError("no 'own' (on-policy) sequences to compare against")
    H = stats.mean_entropy()
    L = max_positions or max(s.n_resp for s in seqs)
    res = {"conditions": {}, "ratios": {}, "auc_entropy": {}, "per_position": {},
           "per_prompt": {cond: {str(p): float(H[k]) for p, k in sorted(m.items())}
                          for cond, m in idx.items()},
           "n_prompts": len(idx["own"])}
    for cond, m in idx.items():
        ks = list(m.values())
        res["conditions"][cond] = {**bootstrap_mean(H[ks], n_boot, seed),
                                   "mean_tokens": float(np.mean([seqs[k].n_resp for k in ks])),
                                   "mean_surprisal": float(np.mean([np.nanmean(stats.surprisal[k])
                                                                    for k in ks]))}
        res["per_position"][cond] = per_position([stats.entropy[k] for k in ks], L).tolist()
    for cond, m in idx.items():
        if cond == "own":
            continue
        common = [p for p in m if p in idx["own"]]
        off = H[[m[p] for p in common]]
        on = H[[idx["own"][p] for p in common]]
        res["ratios"][cond] = ratio_ci(off, on, n_boot, seed)
        # on-policy = positive class; low entropy means "mine", so the score is -H
        res["auc_entropy"][cond] = auc_ci(-on, -off, n_boot, seed)
        own_pp = np.array(res["per_position"]["own"])
        res["per_position"][f"ratio_{cond}"] = (np.array(res["per_position"][cond]) / own_pp).tolist()
    return res


def run_gap(lm, prompts: Sequence[str], human: Optional[Sequence[str]], cfg, other=None,
            sites: Optional[Sequence[str]] = None) -> tuple[dict, list[Seq], TokenStats]:
    """Sample own responses, build conditions, measure. Returns (results, seqs, stats)."""
    own = sample_own(lm, prompts, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed)
    seqs = build_conditions(lm, prompts, own, human, other, "shuffled" in cfg.offpolicy, cfg.seed)
    stats = token_stats(lm, seqs, sites=sites, batch_size=cfg.batch_size, desc="prefill + entropy")
    res = entropy_gap(seqs, stats, cfg.n_boot, cfg.seed, cfg.max_new_tokens)
    res["examples"] = [{"prompt": prompts[s.prompt_idx], "condition": s.condition,
                        "response": s.text, "mean_entropy": float(stats.entropy[k].mean())}
                       for k, s in enumerate(seqs) if s.prompt_idx in (0, 1)]
    return res, seqs, stats
