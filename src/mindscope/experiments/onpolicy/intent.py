"""Protocol 3, cached intention: does the model settle the topic of its reply before the first
output token?

1. For open-ended prompts ("Tell me something interesting."), sample N responses each.
2. Topic of each response from its TEXT: KMeans over all-MiniLM-L6-v2 sentence embeddings
   (``minilm``, the default) or TF-IDF (``tfidf``). (KMeans over the model's own response
   activations, ``activations``, partly builds topic collapse in: kept only for comparison.)
   Topic entropy per prompt (bits) against a permutation null (labels shuffled across
   prompts), and the mutual information I(topic; prompt).
3. A probe at the LAST PROMPT TOKEN (before any output) predicting the sampled topic, scored on
   held-out prompts, against the majority rate.
4. Prefill: per prompt, three openings: one of its OWN samples in its modal topic
   (``same_topic``: on-policy text, same topic), another prompt's sample in the SAME topic
   (``same_topic_other``: off-policy text, same topic - the control) and another prompt's
   sample in a different topic (``diff_topic``: off-policy text, new topic). Topic effect =
   diff_topic - same_topic_other; off-policy effect = same_topic_other - same_topic (paired by
   prompt). Next-token entropy over the opening positions and over a sampled continuation.
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

    if method == "minilm":
        from ...audit import Embedder
        X = Embedder().encode(list(texts)).numpy()  # (n, 384) unit norm
    elif method == "tfidf":
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


def _contrasts(h: dict, cfg) -> dict:
    """Mean entropy per condition and the paired (by prompt) contrasts with bootstrap CIs."""
    return {"same": bootstrap_mean(h["same_topic"], cfg.n_boot, cfg.seed),
            "same_other": bootstrap_mean(h["same_topic_other"], cfg.n_boot, cfg.seed),
            "diff": bootstrap_mean(h["diff_topic"], cfg.n_boot, cfg.seed),
            "diff_minus_same": bootstrap_mean(h["diff_topic"] - h["same_topic"], cfg.n_boot, cfg.seed),
            "topic_effect": bootstrap_mean(h["diff_topic"] - h["same_topic_other"], cfg.n_boot, cfg.seed),
            "offpolicy_effect": bootstrap_mean(h["same_topic_other"] - h["same_topic"], cfg.n_boot,
                                        cfg.seed)}


def run_intent(lm, cfg) -> dict:
    from .core import shipped

    prompts = [r["prompt"] for r in shipped("open_prompts")][:cfg.intent_prompts]
    N, T = cfg.intent_samples, cfg.intent_tokens
    rep = [p for p in prompts for _ in range(N)]
    gens = lm.generate(pad_left(lm, [prompt_ids(lm, p) for p in rep]), chat=True, max_new_tokens=T,
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
    conds = ("same_topic", "same_topic_other", "diff_topic")
    picked = {c: [] for c in conds}
    for p in range(len(prompts)):
        mine = np.where(prompt_of == p)[0]
        if len(mine) == 0:
            continue
        modal = np.bincount(labels[mine]).argmax()
        others = np.where(prompt_of != p)[0]
        cands = {"same_topic": [j for j in mine if labels[j] == modal],
                 "same_topic_other": [j for j in others if labels[j] == modal],
                 "diff_topic": [j for j in others if labels[j] != modal]}
        if not all(cands.values()):
            continue
        for c in conds:
            j = int(rng.choice(cands[c]))
            picked[c].append(make_seq(lm, prompts[p], gens[j].token_ids[:n_open], p, c,
                                      source_idx=int(prompt_of[j])))
    m = len(picked["same_topic"])
    if m < 2:
        res["prefill"] = {"note": "fewer than 2 prompts with all three openings (own same-topic, "
                          "other-prompt same-topic, other-prompt different-topic)"}
        return res
    pre = [s for c in conds for s in picked[c]]
    cont = lm.generate(pad_left(lm, [s.ids for s in pre]),
                       chat=True, max_new_tokens=cfg.continuation_tokens, temperature=cfg.temperature,
                       top_p=cfg.top_p, seed=cfg.seed + 2, batch_size=64) \
        if cfg.continuation_tokens > 0 else None
    h_open = token_stats(lm, pre, batch_size=cfg.batch_size, desc="prefill openings").mean_entropy()
    out = {"opening_tokens": n_open, "n": m, "conditions": list(conds)}
    out["opening"] = _contrasts({c: h_open[k * m:(k + 1) * m] for k, c in enumerate(conds)}, cfg)
    if cont is not None:
        keep = [i for i in range(m) if all(cont[k * m + i].token_ids for k in range(len(conds)))]
        if len(keep) >= 2:  # prompts where every continuation is non-empty (no immediate EOS)
            full = [Seq(pre[k * m + i].ids + cont[k * m + i].token_ids, len(pre[k * m + i].ids),
                        pre[k * m + i].prompt_idx, pre[k * m + i].condition)
                    for k in range(len(conds)) for i in keep]
            h = token_stats(lm, full, batch_size=cfg.batch_size, desc="continuations").mean_entropy()
            q = len(keep)
            out["continuation"] = {"tokens": cfg.continuation_tokens, "n": q,
                                   **_contrasts({c: h[k * q:(k + 1) * q]
                                                 for k, c in enumerate(conds)}, cfg)}
    res["prefill"] = out
    return res
