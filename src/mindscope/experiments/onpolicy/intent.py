"""Protocol 3, cached intention: does the model settle the topic of its reply before the first
output token?

1. For open-ended prompts ("Tell me something interesting."), sample N responses each.
2. Topic of each response: KMeans over mean-pooled response activations (``activations``) or
   TF-IDF of the text (``tfidf``). Topic entropy per prompt (bits) against a permutation null
   (labels shuffled across prompts), and the mutual information I(topic; prompt).
3. A probe at the LAST PROMPT TOKEN (before any output) predicting the sampled topic, scored on
   held-out prompts, against the majority rate.
4. Prefill: per prompt, an opening from one of its OWN samples in its modal topic (same topic)
   vs an opening from another prompt's sample in a different topic; next-token entropy over the
   opening positions and over a sampled continuation of the prefill.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch

from .core import Seq, make_seq, bootstrap_mean, pad_left, prompt_ids, token_stats

log = logging.getLogger(__name__)


def _entropy_bits(labels: np.ndarray, k: int) -> float:
    p = np.bincount(labels, minlength=k) / max(len(labels), 1)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def topic_labels(lm, texts: Sequence[str], seqs: Sequence[Seq], k: int, method: str, site: str,
                 seed: int, batch_size: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    if method == "tfidf":
        from sklearn.feature_extraction.text import TfidfVectorizer
        X = TfidfVectorizer(stop_words="english", min_df=1).fit_transform(texts).toarray()
    else:
        st = token_stats(lm, seqs, sites=[site], batch_size=batch_size, desc="topic embeddings")
        X = torch.stack([a.mean(0) for a in st.acts[site]]).numpy()  # (n, d) mean-pooled
        X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    k = max(2, min(k, len(texts) - 1))
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(X)


def topic_stats(labels: np.ndarray, prompt_of: np.ndarray, k: int, n_perm: int = 500,
                seed: int = 0) -> dict:
    prompts = np.unique(prompt_of)
    per = np.array([_entropy_bits(labels[prompt_of == p], k) for p in prompts])
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_perm):
        sh = rng.permutation(labels)
        null.append(np.mean([_entropy_bits(sh[prompt_of == p], k) for p in prompts]))
    null = np.array(null)
    marg = _entropy_bits(labels, k)
    return {"topic_entropy_bits": float(per.mean()), "per_prompt_bits": per.tolist(),
            "null_bits": float(null.mean()), "null_ci": [float(np.quantile(null, .025)),
                                                          float(np.quantile(null, .975))],
            "p_value": float((np.sum(null <= per.mean()) + 1) / (n_perm + 1)),
            "marginal_bits": marg, "mutual_information_bits": float(marg - per.mean()),
            "max_bits": float(np.log2(min(k, max(np.bincount(prompt_of))))), "k": int(k)}


def last_token_probe(lm, prompts: Sequence[str], labels: np.ndarray, prompt_of: np.ndarray,
                     site: str, seed: int) -> dict:
    """Topic of each sample from the last-prompt-token activation, held out by prompt."""
    from ...probes import cross_validate, majority_rate

    from .core import pad_left, prompt_ids

    cap = lm.capture(pad_left(lm, [prompt_ids(lm, p) for p in prompts]), sites=[site],
                     positions="last",
                     dtype=torch.float32, progress=False)
    X = cap[site].numpy()[prompt_of]  # (n_samples, d): one row per sample, its prompt's state
    n_folds = min(4, len(prompts))
    if len(np.unique(labels)) < 2 or n_folds < 2:
        return {"accuracy": float("nan"), "chance": float("nan"), "note": "too few topics/prompts"}
    try:
        cv = cross_validate(X, labels, prompt_of, kind="multinomial", C=0.1, n_folds=n_folds,
                            seed=seed)
    except ValueError as e:  # a training fold with one topic only
        return {"accuracy": float("nan"), "chance": majority_rate(labels), "note": str(e)}
    return {"accuracy": cv.mean, "sem": cv.sem, "chance": majority_rate(labels), "site": site,
            "n_folds": n_folds}


def run_intent(lm, cfg) -> dict:
    from .core import shipped

    prompts = [r["prompt"] for r in shipped("open_prompts")][:cfg.intent_prompts]
    N, T = cfg.intent_samples, cfg.intent_tokens
    rep = [p for p in prompts for _ in range(N)]
    gens = lm.generate(pad_left(lm, [prompt_ids(lm, p) for p in rep]), max_new_tokens=T,
                       temperature=cfg.temperature,
                       top_p=cfg.top_p, seed=cfg.seed + 1, batch_size=64)
    prompt_of = np.repeat(np.arange(len(prompts)), N)
    ok = np.array([len(g.token_ids) > 0 for g in gens])
    gens = [g for g, o in zip(gens, ok) if o]
    prompt_of = prompt_of[ok]
    seqs = [make_seq(lm, prompts[p], g.token_ids, int(p), "own") for g, p in zip(gens, prompt_of)]
    site = cfg.intent_site or f"resid_post.{(2 * lm.n_layers) // 3}"
    labels = topic_labels(lm, [g.text for g in gens], seqs, cfg.n_topics, cfg.topic_method, site,
                          cfg.seed, cfg.batch_size)
    k = int(labels.max()) + 1
    res = {"method": cfg.topic_method, "site": site, "n_prompts": len(prompts), "samples": N,
           **topic_stats(labels, prompt_of, k, seed=cfg.seed)}
    res["last_token_probe"] = last_token_probe(lm, prompts, labels, prompt_of, site, cfg.seed)
    res["topics"] = {int(t): [g.text[:80] for g, l in zip(gens, labels) if l == t][:3]
                     for t in range(k)}

    # prefill: same-topic own opening vs a different-topic opening from another prompt
    n_open = cfg.opening_tokens
    rng = np.random.default_rng(cfg.seed)
    same, diff = [], []
    for p in range(len(prompts)):
        mine = np.where(prompt_of == p)[0]
        if len(mine) == 0:
            continue
        modal = np.bincount(labels[mine]).argmax()
        cand_same = [j for j in mine if labels[j] == modal]
        cand_diff = [j for j in np.where(prompt_of != p)[0] if labels[j] != modal]
        if not cand_diff:
            continue
        js, jd = int(rng.choice(cand_same)), int(rng.choice(cand_diff))
        same.append(make_seq(lm, prompts[p], gens[js].token_ids[:n_open], p, "same_topic"))
        diff.append(make_seq(lm, prompts[p], gens[jd].token_ids[:n_open], p, "diff_topic"))
    if len(same) < 2:
        res["prefill"] = {"note": "fewer than 2 prompts with a different-topic opening"}
        return res
    pre = same + diff
    cont = lm.generate(pad_left(lm, [s.ids for s in pre]),
                       max_new_tokens=cfg.continuation_tokens, temperature=cfg.temperature,
                       top_p=cfg.top_p, seed=cfg.seed + 2, batch_size=64) \
        if cfg.continuation_tokens > 0 else None
    st_open = token_stats(lm, pre, batch_size=cfg.batch_size, desc="prefill openings")
    h_open = st_open.mean_entropy()
    out = {"opening_tokens": n_open, "n": len(same)}
    dh = h_open[len(same):] - h_open[:len(same)]
    out["opening"] = {"same": bootstrap_mean(h_open[:len(same)], cfg.n_boot, cfg.seed),
                      "diff": bootstrap_mean(h_open[len(same):], cfg.n_boot, cfg.seed),
                      "diff_minus_same": bootstrap_mean(dh, cfg.n_boot, cfg.seed)}
    if cont is not None:
        n = len(same)
        keep = [i for i in range(n) if cont[i].token_ids and cont[n + i].token_ids]
        full = [Seq(pre[j].ids + cont[j].token_ids, len(pre[j].ids), pre[j].prompt_idx,
                    pre[j].condition) for j in keep + [n + i for i in keep]]
        if len(keep) >= 2:  # pairs where both continuations are non-empty (no immediate EOS)
            h = token_stats(lm, full, batch_size=cfg.batch_size, desc="continuations").mean_entropy()
            m = len(keep)
            out["continuation"] = {"tokens": cfg.continuation_tokens, "n": m,
                                   "same": bootstrap_mean(h[:m], cfg.n_boot, cfg.seed),
                                   "diff": bootstrap_mean(h[m:], cfg.n_boot, cfg.seed),
                                   "diff_minus_same": bootstrap_mean(h[m:] - h[:m], cfg.n_boot, cfg.seed)}
    res["prefill"] = out
    return res
