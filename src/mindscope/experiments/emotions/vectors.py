"""Emotion vectors and their validation: held-out classification, geometry, intensity, tracking.

The recipe (``steering.emotion_vectors``, reused here piecewise so held-out folds need one
forward pass): per story the mean activation over its tokens (first token skipped); per emotion
the mean over its stories; minus the mean over emotions; the top PCs of neutral text projected
out; unit norm.

>>> import numpy as np
>>> round(pearson([1, 2, 3], [2, 4, 7]), 3), spearman([1, 2, 3], [1, 5, 9])
(0.993, 1.0)
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from ...core import VectorSet, data_hash
from ...steering import project_out_pcs, row_means

log = logging.getLogger(__name__)


# ---- statistics ----------------------------------------------------------------------------

def pearson(x, y) -> float:
    """Pearson correlation (nan if either side is constant)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    x, y = x - x.mean(), y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / den) if den > 0 else float("nan")


def _ranks(x) -> np.ndarray:
    x = np.asarray(x, float)
    order = x.argsort(kind="mergesort")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # average ranks of ties
        m = x == v
        r[m] = r[m].mean()
    return r


def spearman(x, y) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    return pearson(_ranks(x), _ranks(y))


def corr_ci(r: float, n: int, z: float = 1.96) -> dict:
    """Fisher-z 95% interval for a correlation of n pairs."""
    if n <= 3 or r != r or abs(r) >= 1:
        return {"r": r, "n": n, "lo": None, "hi": None}
    f, se = np.arctanh(r), 1 / np.sqrt(n - 3)
    return {"r": r, "n": n, "lo": float(np.tanh(f - z * se)), "hi": float(np.tanh(f + z * se))}


# ---- the recipe ----------------------------------------------------------------------------

def story_means(lm, stories: dict[str, Sequence[str]], site: str, skip_first: int = 1,
                batch_size: int = 16) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    """Mean activation over each story's tokens -> X (N, d), labels (N,), emotion names."""
    names = list(stories)
    texts = [t for e in names for t in stories[e]]
    labels = np.array([i for i, e in enumerate(names) for _ in stories[e]])
    X = row_means(lm, texts, [site], "all", False, skip_first, batch_size)[site]  # (N, d)
    return X, labels, names


def neutral_acts(lm, texts: Sequence[str], site: str, skip_first: int = 1,
                 batch_size: int = 16) -> torch.Tensor:
    """Every token's activation over neutral texts (first ``skip_first`` per row left out)."""
    cap = lm.capture(list(texts), sites=[site], positions="all", dtype=torch.float32,
                     batch_size=batch_size)
    return cap[site][cap.pos >= skip_first]  # (N_tok, d)


def vectors_from_means(X: torch.Tensor, labels, names: Sequence[str], neutral: torch.Tensor,
                       variance: float = 0.5, site: str = "", model: str = "",
                       n_components=None) -> VectorSet:
    """Emotion vectors from per-story means: per emotion mean, centred over emotions, neutral
    PCs projected out, unit norm (the same numbers as ``steering.emotion_vectors``)."""
    labels = np.asarray(labels)
    means = torch.stack([X[torch.as_tensor(labels == i)].mean(0) for i in range(len(names))])
    vs = VectorSet(means, names=list(names), site=site, model=model, method="emotion",
                   data_hash=data_hash(X.shape, labels.tolist()),
                   meta={"n_stories": {n: int((labels == i).sum()) for i, n in enumerate(names)}})
    return project_out_pcs(vs.centered(), neutral, n_components=n_components, variance=variance)


def classify_heldout(X: torch.Tensor, labels, names: Sequence[str], neutral: torch.Tensor,
                     variance: float = 0.5) -> dict:
    """Leave-one-story-out per emotion: fold j holds out the j-th story of every emotion, builds
    vectors from the rest, and labels each held-out story by the largest projection of its
    (train-mean-centred) mean activation. Accuracy vs chance = 1 / n_emotions."""
    labels = np.asarray(labels)
    k = len(names)
    idx_in = np.zeros(len(labels), int)  # index of each story within its emotion
    for i in range(k):
        idx_in[labels == i] = np.arange(int((labels == i).sum()))
    n_folds = int(idx_in.max()) + 1
    pred = np.full(len(labels), -1)
    for j in range(n_folds):
        test = idx_in == j
        train = ~test
        if len(set(labels[train])) < k:  # an emotion with a single story cannot be held out
            continue
        vs = vectors_from_means(X[torch.as_tensor(train)], labels[train], names, neutral, variance)
        centre = X[torch.as_tensor(train)].mean(0)
        scores = (X[torch.as_tensor(test)] - centre) @ vs.data.T  # (n_test, k)
        pred[test] = scores.argmax(1).numpy()
    done = pred >= 0
    correct = int((pred[done] == labels[done]).sum())
    conf = np.zeros((k, k), int)
    for t, p in zip(labels[done], pred[done]):
        conf[t, p] += 1
    from ...runs import wilson
    return {"accuracy": wilson(correct, int(done.sum())), "chance": 1.0 / k,
            "n_folds": n_folds, "confusion": conf.tolist(),
            "per_emotion": {n: float(conf[i, i] / max(conf[i].sum(), 1)) for i, n in enumerate(names)}}


def geometry(vs: VectorSet, valence: Sequence[float], arousal: Sequence[float],
             n_pcs: int = 4) -> dict:
    """PCA of the emotion vectors; Pearson r of each PC's scores with valence and arousal.
    PC signs are arbitrary, so each PC is signed to make its valence r (PC1) / arousal r (PC2)
    positive; ``best_valence_pc`` names the PC with the largest |r| with valence."""
    n = min(n_pcs, len(vs) - 1, vs.d)
    p = vs.pca(n)
    scores = p.transform(vs.data.float()).numpy()  # (k, n)
    rows = []
    for j in range(n):
        rv, ra = pearson(scores[:, j], valence), pearson(scores[:, j], arousal)
        rows.append({"pc": j + 1, "explained_variance_ratio": float(p.explained_variance_ratio[j]),
                     "r_valence": rv, "r_arousal": ra})
    for j, key in ((0, "r_valence"), (1, "r_arousal")):  # sign PC1 by valence, PC2 by arousal
        if j < len(rows) and rows[j][key] < 0:
            scores[:, j] *= -1
            rows[j]["r_valence"], rows[j]["r_arousal"] = -rows[j]["r_valence"], -rows[j]["r_arousal"]
    best = max(rows, key=lambda r: abs(r["r_valence"]) if r["r_valence"] == r["r_valence"] else -1)
    k = len(vs)
    return {"pcs": rows, "pc1_valence": corr_ci(rows[0]["r_valence"], k) if rows else None,
            "pc2_arousal": corr_ci(rows[1]["r_arousal"], k) if len(rows) > 1 else None,
            "best_valence_pc": best["pc"], "scores": scores[:, :2].tolist(), "names": list(vs.names)}


# ---- intensity and tracking ----------------------------------------------------------------

def role_token_means(lm, prompts, site: str, role: str = "user", batch_size: int = 16) -> torch.Tensor:
    """Mean activation over the tokens of ``role`` turns of chat prompts -> (B, d)."""
    import mindscope as ms
    return row_means(lm, prompts, [site], ms.role(role), False, 0, batch_size)[site]


def intensity(lm, vs: VectorSet, scenarios: Sequence[dict], site: str,
              batch_size: int = 16) -> list[dict]:
    """Each scenario's template filled with values of rising intensity; the mean projection of
    the user turn onto the scenario's emotion vector per value; Spearman rho with the rank."""
    out = []
    for sc in scenarios:
        if sc["emotion"] not in vs.names:
            log.info("intensity scenario %r skipped: %s not in the emotion set", sc["name"], sc["emotion"])
            continue
        prompts = [lm.chat([{"role": "user", "content": sc["template"].format(x=v)}])
                   for v in sc["values"]]
        H = role_token_means(lm, prompts, site, "user", batch_size)  # (n_values, d)
        P = (H @ vs.data.float().T).numpy()  # (n_values, k)
        P = P - P.mean(1, keepdims=True)  # relative to the average emotion at each value
        j = vs.names.index(sc["emotion"])
        proj = P[:, j]
        rho = spearman(np.arange(len(proj)), proj)
        out.append({"name": sc["name"], "emotion": sc["emotion"], "values": list(sc["values"]),
                    "projection": proj.tolist(), "spearman_rho": rho,
                    "monotonic": bool(np.all(np.diff(proj) > 0))})
    return out


def track_tokens(lm, vs: VectorSet, messages: Sequence[dict], site: str,
                 skip_first: int = 1) -> dict:
    """Projection of every token of a conversation onto every emotion vector -> tokens, (T, k).
    The first ``skip_first`` tokens (attention sink, norm ~60x a typical token) are left out."""
    p = lm.chat(list(messages), add_generation_prompt=False)
    cap = lm.capture([p], sites=[site], positions="all", dtype=torch.float32)
    keep = cap.pos >= skip_first
    P = (cap[site][keep] @ vs.data.float().T).numpy()  # (T, k)
    toks = [lm.tokenizer.decode([int(t)]) for t in cap.token_ids[keep]]
    return {"tokens": toks, "projections": P.tolist(), "names": list(vs.names)}
