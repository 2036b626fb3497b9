"""Scoring the binding tasks by next-token log-probs of the answer tokens, with optional slot
ablations on the story tokens, and the per-task metrics (accuracy vs chance, paired conflict
accuracy, yes/no AUROC)."""
from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ...core import Ablate
from ...probes import Eraser
from .data import Item, name_chars

log = logging.getLogger(__name__)


def first_token(lm, text: str) -> int:
    ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"answer {text!r} tokenizes to nothing")
    return ids[0]


def story_mask(batch, items, names: Optional[Sequence[str]] = None,
               first_name: bool = True) -> torch.Tensor:
    """(B, T_unpadded) True on tokens that lie inside each item's story characters; with
    ``names``, only on the story's tokens of those names (a token belongs to the name holding
    its last character, as in ``data.token_labels``); ``first_name=False`` leaves out the
    story's first name mention (the first entity: no prior entity there, and often the
    prompt's first token, whose residual is huge)."""
    T = max(len(m.offsets) for m in batch.meta)
    m = torch.zeros(len(items), T, dtype=torch.bool)
    for b, (meta, it) in enumerate(zip(batch.meta, items)):
        chars = None if names is None else name_chars(it.prompt, names, it.story_chars)
        if chars is not None and not first_name and chars.any():
            a = int(chars.argmax())  # the first mention's characters: clear them
            z = np.flatnonzero(~chars[a:])
            chars[a:a + (int(z[0]) if len(z) else len(chars) - a)] = False
        for u, (x, y) in enumerate(meta.offsets):
            m[b, u] = 0 < y <= it.story_chars and (chars is None or bool(chars[y - 1]))
    return m


def score_items(lm, items: list[Item], ablate: Optional[dict] = None, batch_size: int = 16,
                desc: str = "score", progress: bool = True,
                names: Optional[Sequence[str]] = None) -> list[np.ndarray]:
    """Log-probs (n_candidates,) per item at the last prompt position. ``ablate`` = {site: basis
    (r, d) or ``probes.Eraser``}: project those subspaces out of the story tokens at each site
    (with ``names``: the story's name tokens only), or apply the erasers there (then to the
    name tokens that have a prior entity: every mention but the story's first, as they were
    fitted)."""
    out: list[np.ndarray] = []
    for a in tqdm(range(0, len(items), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = items[a:a + batch_size]
        b = lm.tokenize([it.prompt for it in chunk])
        ivs = []
        if ablate:
            erase = any(isinstance(x, Eraser) for x in ablate.values())
            mask = story_mask(b, chunk, names, first_name=not erase)  # erasers: names with a prior
            ivs = [basis.intervention(site, mask) if isinstance(basis, Eraser) else
                   Ablate(site, basis, subspace=True, positions=mask)
                   for site, basis in ablate.items()]
        last = f"resid_post.{lm.n_layers - 1}"  # stop before lm_head: unembed the last token only
        with lm.intervene(*ivs):
            h = lm.capture(b, sites=last, positions="last", batch_size=len(chunk),
                           progress=False)[last]  # (B, d)
        lp = torch.log_softmax(lm.unembed(h).float(), -1).cpu()  # (B, V)
        for i, it in enumerate(chunk):
            ids = [first_token(lm, c) for c in it.candidates]
            out.append(lp[i, ids].numpy())
    return out


def _binom(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 0.0) / n) if n else float("nan")


def task_metrics(items: list[Item], scores: list[np.ndarray]) -> dict:
    """{task (or task/condition): {acc, sem, chance, n, ...}}."""
    out: dict = {}
    by: dict = {}
    for it, s in zip(items, scores):
        by.setdefault(it.task, []).append((it, s))
    for task, rows in by.items():
        if task == "conflict":
            pairs: dict = {}
            for it, s in rows:
                pairs.setdefault(it.pair, {})[it.condition] = float(s[0])
            diffs = np.array([p["match"] - p["mismatch"] for p in pairs.values()
                              if "match" in p and "mismatch" in p])
            acc = float((diffs > 0).mean()) if len(diffs) else float("nan")
            out[task] = {"acc": acc, "sem": _binom(acc, len(diffs)), "chance": 0.5,
                         "n": int(len(diffs)), "mean_logp_diff": float(diffs.mean()) if len(diffs) else float("nan")}
        elif task == "retrieval_yes_no":
            margin = np.array([s[0] - s[1] for _, s in rows])
            truth = np.array([it.answer == 0 for it, _ in rows])
            acc = float(((margin > 0) == truth).mean())
            auc = float("nan")
            if truth.any() and (~truth).any():
                from sklearn.metrics import roc_auc_score
                auc = float(roc_auc_score(truth, margin))
            out[task] = {"acc": acc, "sem": _binom(acc, len(rows)), "chance": 0.5, "n": len(rows),
                         "auroc": auc, "yes_rate": float((margin > 0).mean())}
        else:
            conds = sorted({it.condition for it, _ in rows})
            for c in conds:
                sub = [(it, s) for it, s in rows if it.condition == c]
                right = np.array([int(np.argmax(s)) == it.answer for it, s in sub])
                acc = float(right.mean())
                chance = float(np.mean([1.0 / len(it.candidates) for it, _ in sub]))
                key = task if c == "" else f"{task}/{c}"
                out[key] = {"acc": acc, "sem": _binom(acc, len(sub)), "chance": chance, "n": len(sub)}
    return out


def unit_scores(items: list[Item], scores: list[np.ndarray]) -> dict:
    """Per task, one number per scored unit saying how strongly the model favours the right
    answer: ``{task: {unit key: value}}``. Name tasks: log-prob of the right candidate
    renormalised over the candidates; yes/no: the log-prob margin toward the right answer;
    conflict: log p(" too" | match) - log p(" too" | mismatch) per story pair."""
    out: dict = {}
    for k, (it, s) in enumerate(zip(items, scores)):
        if it.task == "conflict":
            out.setdefault(it.task, {}).setdefault(it.pair, {})[it.condition] = float(s[0])
        elif it.task == "retrieval_yes_no":
            out.setdefault(it.task, {})[k] = float((s[0] - s[1]) * (1 if it.answer == 0 else -1))
        else:
            s = np.asarray(s, dtype=np.float64)
            ls = s - (s.max() + np.log(np.exp(s - s.max()).sum()))
            key = it.task if not it.condition else f"{it.task}/{it.condition}"
            out.setdefault(key, {})[k] = float(ls[it.answer])
    if "conflict" in out:
        out["conflict"] = {p: v["match"] - v["mismatch"] for p, v in out["conflict"].items()
                           if "match" in v and "mismatch" in v}
    return out


def mean_unit_scores(items: list[Item], draws: list) -> dict:
    """``unit_scores`` averaged over several scorings of the same items (e.g. one per random
    subspace): the baseline a slot ablation is compared with, less noisy than one draw."""
    us = [unit_scores(items, sc) for sc in draws]
    return {t: {k: float(np.mean([u[t][k] for u in us])) for k in us[0][t]} for t in us[0]}


def paired_contrasts(items: list[Item], by_condition: dict, base: str = "random") -> dict:
    """``{"<cond>_minus_<base>": {task: mean_ci of the per-unit differences}}``: each slot
    ablation against the equal-rank random ablation on the SAME prompts (paired), in the units
    of ``unit_scores`` (negative = the slot ablation hurts the task more than a random one),
    with a paired Student-t 95% interval. ``by_condition[base]`` may be a list of scorings (one
    per random draw): the baseline is then their per-unit mean (``mean_unit_scores``)."""
    from scipy.stats import t as student_t

    from ...runs import mean_ci

    def ci(xs):  # Student-t interval: n is small (items per task)
        return mean_ci(xs, z=float(student_t.ppf(0.975, max(len(xs) - 1, 1))))

    b = by_condition[base]
    draws = b if b and isinstance(b[0], list) else [b]
    ref = mean_unit_scores(items, draws)
    out = {}
    for c, sc in by_condition.items():
        if c == base:
            continue
        u = unit_scores(items, sc)
        out[f"{c}_minus_{base}"] = {t: ci([u[t][k] - ref[t][k] for k in ref[t]])
                                    for t in ref}
    return out
