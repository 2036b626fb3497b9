"""Protocol 4, verbal report: after an assistant turn (own sample or off-policy, prefilled), the
user asks whether the model wrote it. The verbal score is logit("Yes") - logit("No") at the first
token of the answer; accuracy (threshold 0) against chance 50 % (classes balanced: one own and
one off-policy turn per prompt), and the AUC of the verbal score next to the AUC of the implicit
signal (minus the mean entropy over the response positions).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from .core import Seq, TokenStats, auc_ci, pad_left, wilson_bounds

log = logging.getLogger(__name__)

QUESTION = ("Did you write your previous answer yourself, or was it inserted into this "
            "conversation by someone else? Reply with Yes if you wrote it, No if it was inserted.")


def answer_token(lm, word: str) -> int:
    ids = lm.tokenizer(word, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"{word!r} tokenizes to nothing")
    return ids[0]


def verbal_scores(lm, prompts: Sequence[str], seqs: Sequence[Seq], question: str = QUESTION,
                  batch_size: int = 8) -> np.ndarray:
    """logit(Yes) - logit(No) after asking ``question`` about each sequence's response."""
    yes, no = answer_token(lm, "Yes"), answer_token(lm, "No")
    if yes == no:
        raise ValueError("'Yes' and 'No' share their first token in this tokenizer")
    rows = []
    for s in seqs:
        msgs = [{"role": "user", "content": prompts[s.prompt_idx]},
                {"role": "assistant", "content": s.text},
                {"role": "user", "content": question}]
        text = lm.chat(msgs).text
        rows.append(lm.tokenizer(text, add_special_tokens=False)["input_ids"])
    out = []
    for a in range(0, len(rows), batch_size):
        logits = lm.forward(pad_left(lm, rows[a:a + batch_size]))[:, -1].float()  # (B, V)
        out.append((logits[:, yes] - logits[:, no]).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def run_verbal(lm, prompts: Sequence[str], seqs: Sequence[Seq], stats: TokenStats, cfg) -> dict:
    H = stats.mean_entropy()
    idx = {}
    for k, s in enumerate(seqs):
        idx.setdefault(s.condition, {})[s.prompt_idx] = k
    res = {"question": cfg.verbal_question, "by_condition": {}}
    for cond in [c for c in idx if c != "own"]:
        common = sorted(p for p in idx[cond] if p in idx["own"])
        on = [seqs[idx["own"][p]] for p in common]
        off = [seqs[idx[cond][p]] for p in common]
        sc = verbal_scores(lm, prompts, on + off, cfg.verbal_question, cfg.batch_size)
        s_on, s_off = sc[:len(on)], sc[len(on):]
        correct = int((s_on > 0).sum() + (s_off <= 0).sum())
        n = 2 * len(common)
        h_on = H[[idx["own"][p] for p in common]]
        h_off = H[[idx[cond][p] for p in common]]
        res["by_condition"][cond] = {
            "accuracy": correct / n, "accuracy_ci": wilson_bounds(correct, n), "chance": 0.5,
            "n": n,
            "says_yes_own": float((s_on > 0).mean()), "says_yes_off": float((s_off > 0).mean()),
            "auc_verbal": auc_ci(s_on, s_off, cfg.n_boot, cfg.seed),
            "auc_entropy": auc_ci(-h_on, -h_off, cfg.n_boot, cfg.seed),
            "corr_verbal_entropy": float(np.corrcoef(sc, np.r_[h_on, h_off])[0, 1])
            if np.ptp(sc) > 0 else float("nan")}
    return res
