"""The scorers of ``bench`` (see ``_bench``): k-sparse probing, absorption, TPP, detection."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..core import BadInputError


def split(n_pos: int, n_neg: int, rng: np.random.Generator, frac: float = 0.7):
    """Balanced index sets: (train_pos, test_pos, train_neg, test_neg) positions within the
    positive / negative lists (negatives subsampled to the positive count)."""
    m = min(n_pos, n_neg)
    p, q = rng.permutation(n_pos)[:m], rng.permutation(n_neg)[:m]
    c = max(1, int(round(frac * m)))
    return p[:c], p[c:], q[:c], q[c:]


def _logreg(Xtr, ytr, Xte, yte) -> tuple:
    from sklearn.linear_model import LogisticRegression
    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    clf = LogisticRegression(max_iter=300, C=1.0).fit((Xtr - mu) / sd, ytr)
    return float(clf.score((Xte - mu) / sd, yte)), clf, mu, sd


def task_rows(labels: list, min_per_class: int, task: str) -> dict:
    """{class: np.array of row indices}; BadInputError when no class has enough rows."""
    by = {}
    for i, lab in enumerate(labels):
        if lab is not None:
            by.setdefault(lab, []).append(i)
    ok = {k: np.asarray(v) for k, v in by.items() if len(v) >= min_per_class}
    if len(ok) < 2 and not (len(ok) == 1 and len(labels) - len(next(iter(ok.values()))) >= min_per_class):
        raise BadInputError(f"task {task!r}", f"has too few labelled rows: {len(by)} class(es), at "
                            f"most {max((len(v) for v in by.values()), default=0)} rows each; "
                            f"a class needs {min_per_class}",
                            "read more documents (--docs) or lower min_per_class")
    return ok


def sparse_probing(codes: torch.Tensor, x: torch.Tensor, classes: dict, ks, seed: int) -> dict:
    """Mean test accuracy over one-vs-rest classes of k-sparse probes on ``codes`` (and dense
    probes on ``x``): {"k=1": acc, ..., "dense": acc}."""
    rng = np.random.default_rng(seed)
    n = codes.shape[0]
    Z, X = codes.numpy(), x.numpy()
    out = {f"k={k}": [] for k in ks}
    out["dense"] = []
    for cls, pos in classes.items():
        neg = np.setdiff1d(np.arange(n), pos)
        a, b, c, d = split(len(pos), len(neg), rng)
        tr = np.concatenate([pos[a], neg[c]])
        te = np.concatenate([pos[b], neg[d]])
        ytr = np.r_[np.ones(len(a)), np.zeros(len(c))]
        yte = np.r_[np.ones(len(b)), np.zeros(len(d))]
        if len(te) < 2:
            continue
        diff = np.abs(Z[pos[a]].mean(0) - Z[neg[c]].mean(0))
        order = np.argsort(-diff)
        for k in ks:
            sel = order[:k]
            out[f"k={k}"].append(_logreg(Z[tr][:, sel], ytr, Z[te][:, sel], yte)[0])
        out["dense"].append(_logreg(X[tr], ytr, X[te], yte)[0])
    return {k: float(np.mean(v)) if v else float("nan") for k, v in out.items()}


def absorption(codes: torch.Tensor, x: torch.Tensor, W_dec: torch.Tensor, classes: dict,
               seed: int, cos_min: float = 0.1) -> dict:
    """First-letter absorption (after SAE-bench's idea): per letter, a dense logistic probe on x
    gives the letter direction w; the main latent is the top-1 latent by train mean difference.
    On test tokens of the letter that the probe gets right, a token is absorbed when the main
    latent is silent and another firing latent's decoder has cosine >= ``cos_min`` with w.
    Returns the mean absorption rate and the mean rate at which the main latent is silent."""
    rng = np.random.default_rng(seed)
    n = codes.shape[0]
    Z, X = codes.numpy(), x.numpy()
    Wn = torch.nn.functional.normalize(W_dec.float(), dim=1).numpy()            # (L, d)
    rates, silent = [], []
    for cls, pos in classes.items():
        neg = np.setdiff1d(np.arange(n), pos)
        a, b, c, d = split(len(pos), len(neg), rng)
        tr = np.concatenate([pos[a], neg[c]])
        ytr = np.r_[np.ones(len(a)), np.zeros(len(c))]
        acc, clf, mu, sd = _logreg(X[tr], ytr, X[tr], ytr)
        w = clf.coef_[0] / sd                                                    # raw-space
        w = w / (np.linalg.norm(w) + 1e-12)
        main = int(np.argmax(Z[pos[a]].mean(0) - Z[neg[c]].mean(0)))
        te = pos[b]
        right = clf.predict((X[te] - mu) / sd) == 1
        te = te[right]
        if len(te) == 0:
            continue
        aligned = (Wn @ w) >= cos_min                                            # (L,)
        aligned[main] = False
        off = Z[te, main] == 0
        absorbed = off & ((Z[te] != 0) & aligned[None, :]).any(1)
        rates.append(float(absorbed.mean()))
        silent.append(float(off.mean()))
    return {"absorption": float(np.mean(rates)) if rates else float("nan"),
            "main_latent_silent": float(np.mean(silent)) if silent else float("nan"),
            "letters": len(rates)}


def tpp(pooled_x: torch.Tensor, pooled_codes: torch.Tensor, W_raw: torch.Tensor, classes: dict,
        seed: int, m: int = 10) -> dict:
    """Targeted probe perturbation (SAE-bench): dense one-vs-rest probes on pooled activations;
    for class i, subtract the decoded contribution of the m latents most associated with i and
    measure accuracy drops. Score = mean_i drop_ii - mean_{i != j} drop_ij (higher = the SAE
    isolates each class in few latents)."""
    rng = np.random.default_rng(seed)
    X, Z = pooled_x.numpy(), pooled_codes.numpy()
    n = X.shape[0]
    names = list(classes)
    probes, tests = {}, {}
    for cls in names:
        pos = classes[cls]
        neg = np.setdiff1d(np.arange(n), pos)
        a, b, c, d = split(len(pos), len(neg), rng)
        tr = np.concatenate([pos[a], neg[c]])
        te = np.concatenate([pos[b], neg[d]])
        ytr, yte = np.r_[np.ones(len(a)), np.zeros(len(c))], np.r_[np.ones(len(b)), np.zeros(len(d))]
        _, clf, mu, sd = _logreg(X[tr], ytr, X[tr], ytr)
        probes[cls] = (clf, mu, sd)
        tests[cls] = (te, yte)
        diff = Z[pos[a]].mean(0) - Z[neg[c]].mean(0)
        classes_sel = np.argsort(-diff)[:m]
        tests[cls] += (classes_sel,)
    W = W_raw.numpy()
    drop = np.zeros((len(names), len(names)))
    for i, ci in enumerate(names):
        sel = tests[ci][2]
        X_abl = X - Z[:, sel] @ W[sel]
        for j, cj in enumerate(names):
            clf, mu, sd = probes[cj]
            te, yte = tests[cj][0], tests[cj][1]
            drop[i, j] = clf.score((X[te] - mu) / sd, yte) - clf.score((X_abl[te] - mu) / sd, yte)
    off = drop[~np.eye(len(names), dtype=bool)]
    return {"tpp": float(np.diag(drop).mean() - off.mean()), "target_drop": float(np.diag(drop).mean()),
            "other_drop": float(off.mean())}


def detection(codes: torch.Tensor, tokens: list, seed: int, n_latents: int = 40,
              n_expl: int = 5, min_acts: int = 10) -> dict:
    """Offline auto-interp detection: explain a latent by its ``n_expl`` most frequent tokens
    among its top train activations; on held-out tokens (equal numbers firing / not), predict
    'fires' when the token is in the explanation. Balanced accuracy (0.5 = chance) averaged over
    ``n_latents`` latents sampled among those firing >= ``min_acts`` times in each half."""
    rng = np.random.default_rng(seed)
    Z = codes.numpy()
    n = Z.shape[0]
    half = rng.permutation(n)
    tr, te = half[: n // 2], half[n // 2:]
    toks = np.asarray([t.strip().lower() for t in tokens], dtype=object)
    live = np.nonzero(((Z[tr] != 0).sum(0) >= min_acts) & ((Z[te] != 0).sum(0) >= min_acts))[0]
    if len(live) == 0:
        return {"detection": float("nan"), "latents": 0}
    pick = rng.choice(live, size=min(n_latents, len(live)), replace=False)
    accs = []
    for j in pick:
        act = Z[tr, j]
        top = tr[np.argsort(-act)[: max(min_acts, 20)]]
        top = top[Z[top, j] > 0]
        vals, counts = np.unique(toks[top], return_counts=True)
        expl = set(vals[np.argsort(-counts)[:n_expl]])
        on = te[Z[te, j] != 0]
        off = te[Z[te, j] == 0]
        m = min(len(on), len(off))
        on, off = rng.choice(on, m, replace=False), rng.choice(off, m, replace=False)
        hit_on = np.mean([t in expl for t in toks[on]])
        hit_off = np.mean([t in expl for t in toks[off]])
        accs.append(0.5 * (hit_on + (1 - hit_off)))
    return {"detection": float(np.mean(accs)), "latents": int(len(pick))}
