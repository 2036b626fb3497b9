"""Quantitative emotion tracking (issue 23): does the per-token projection onto the emotion
vectors predict the OPERATIVE emotion of held-out passages, and does it carry over from the
stories the vectors were built from to dialogue?

``passage_tracking`` scores the shipped passages (``data/emotions/passages.json``: short
third-person ``story`` passages and user ``dialogue`` messages, one unnamed operative emotion
each, none used to build the vectors). Per passage: the mean over its tokens of the projection
onto each vector (story passages: all tokens after the first; dialogue: the user turn's
tokens), centred by the context's mean passage. Per context: macro one-vs-rest AUC (for each
emotion with passages, its vector's projection on its own passages vs all others) with a
percentile bootstrap interval over passages, and top-1 accuracy (Wilson) against chance
1/k, over the emotions that have passages and vectors.

>>> import numpy as np
>>> score_context(np.eye(3), np.arange(3), ["a", "b", "c"], n_boot=10)["macro_auc"]
1.0
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ...core import VectorSet
from ...steering import row_means
from ...runs import auc, wilson
from .._common import shipped_json


def load_passages() -> list[dict]:
    return shipped_json("emotions", "passages.json")["passages"]


def _means(lm, passages: Sequence[dict], site: str, skip_first: int, batch_size: int) -> torch.Tensor:
    import mindscope as ms

    story = [i for i, p in enumerate(passages) if p["context"] == "story"]
    dia = [i for i, p in enumerate(passages) if p["context"] != "story"]
    X = [None] * len(passages)
    if story:
        m = row_means(lm, [passages[i]["text"] for i in story], [site], "all", False, skip_first,
                      batch_size)[site]
        for j, i in enumerate(story):
            X[i] = m[j]
    if dia:
        prompts = [lm.chat([{"role": "user", "content": passages[i]["text"]}]) for i in dia]
        m = row_means(lm, prompts, [site], ms.role("user"), False, 0, batch_size)[site]
        for j, i in enumerate(dia):
            X[i] = m[j]
    return torch.stack(X).float()  # (n, d)


def macro_auc(P: np.ndarray, labels: np.ndarray, classes: Sequence[int]) -> float:
    vals = [auc(P[labels == c, c], P[labels != c, c]) for c in classes
            if (labels == c).any() and (labels != c).any()]
    return float(np.mean(vals)) if vals else float("nan")


def score_context(P: np.ndarray, labels: np.ndarray, names: Sequence[str], n_boot: int = 1000,
                  seed: int = 0) -> dict:
    """P (n, k) centred projections, labels (n,) indices into names -> AUC, accuracy, CIs."""
    classes = sorted(set(labels.tolist()))
    est = macro_auc(P, labels, classes)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(labels), len(labels))
        v = macro_auc(P[idx], labels[idx], classes)
        if not np.isnan(v):
            boots.append(v)
    sub = P[:, classes]  # argmax over the emotions that have passages
    pred = np.asarray(classes)[sub.argmax(1)]
    per = {names[c]: auc(P[labels == c, c], P[labels != c, c]) for c in classes}
    return {"macro_auc": est, "auc_ci": [float(np.percentile(boots, 2.5)),
                                         float(np.percentile(boots, 97.5))] if boots else None,
            "top1": wilson(int((pred == labels).sum()), len(labels)), "chance": 1.0 / len(classes),
            "n_passages": int(len(labels)), "n_emotions": len(classes), "per_emotion_auc": per}


def passage_tracking(lm, vs: VectorSet, site: str, skip_first: int = 1, batch_size: int = 16,
                     seed: int = 0, passages=None) -> dict:
    """Held-out tracking test per context (story = same context as the vectors; dialogue =
    cross-context)."""
    names = list(vs.names)
    ix = {n: i for i, n in enumerate(names)}
    ps = [p for p in (passages or load_passages()) if p["emotion"] in ix]
    if not ps:
        return {"note": "no shipped passage has an emotion of this run"}
    X = _means(lm, ps, site, skip_first, batch_size)
    V = vs.data.float()  # (k, d) unit rows
    out = {}
    for ctx in ("story", "dialogue"):
        sel = [i for i, p in enumerate(ps) if p["context"] == ctx]
        if len(sel) < 4:
            continue
        Xc = X[sel] - X[sel].mean(0, keepdim=True)
        P = (Xc @ V.T).numpy()  # (n, k)
        labels = np.array([ix[ps[i]["emotion"]] for i in sel])
        out[ctx] = score_context(P, labels, names, seed=seed)
    out["vectors_from"] = "stories"
    return out
