"""Extracting steering and concept vectors from a model's activations.

- ``mean_difference``: contrastive mean difference (CAA) of two prompt sets or prompt pairs.
- ``concept_vector(s)``: the introspection protocol's concept vectors (chat-templated
  "Tell me about {word}", last prompt token, minus the mean over baseline words; not normalised).
- ``pca_direction``: first principal component of paired differences (repeng style).
- ``response_means``: mean over assistant tokens of generated responses per system prompt.
- ``probe_direction``: a linear probe's weight vector as a direction.
- ``project_out_pcs`` / ``emotion_vectors``: remove the top PCs of neutral text (emotion recipe).
- ``covariance_directions``: variance-matched random directions, the null of a steering test.

>>> # v = mean_difference(lm, ["I love it"], ["I hate it"], "resid_post.15")
>>> # cs = concept_vectors(lm, ["ocean", "music"], site="resid_post.20")
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Union

import torch

from ..core import Vector, VectorSet, data_hash, pca
from ._words import BASELINE_WORDS

log = logging.getLogger(__name__)
CONCEPT_TEMPLATE = "Tell me about {word}"
Sites = Union[str, Sequence[str]]


def _one_or_set(lm, sites: list[str], rows: dict[str, torch.Tensor], **meta) -> Vector | VectorSet:
    if len(sites) == 1:
        return Vector(rows[sites[0]], site=sites[0], model=lm.name, **meta)
    return VectorSet(torch.stack([rows[s] for s in sites]), names=sites, sites=sites,
                     model=lm.name, **meta)


def row_means(lm, prompts, sites: Sites, positions="last", chat: bool = False,
              skip_first: int = 0, batch_size: int = 16) -> dict[str, torch.Tensor]:
    """Per prompt, the mean activation over the selected positions -> {site: (B, d)} float32.
    ``skip_first`` drops that many leading tokens of each row (attention-sink outliers)."""
    names = lm.expand_sites(sites)
    cap = lm.capture(prompts, sites=names, positions=positions, chat=chat, batch_size=batch_size,
                     dtype=torch.float32)
    keep = cap.pos >= skip_first  # (N,)
    B = len(prompts)
    counts = torch.zeros(B).index_add_(0, cap.row[keep], torch.ones(int(keep.sum())))
    if bool((counts == 0).any()):
        bad = int((counts == 0).nonzero()[0])
        raise ValueError(f"prompt {bad} has no selected positions ({positions!r}, skip_first="
                         f"{skip_first}); choose other positions")
    out = {}
    for s in names:
        acc = torch.zeros(B, cap[s].shape[1]).index_add_(0, cap.row[keep], cap[s][keep])
        out[s] = acc / counts.unsqueeze(1)  # (B, d)
    return out


def mean_difference(lm, positive, negative, sites: Sites, positions="last", chat: bool = False,
                    paired: bool = False, skip_first: int = 0,
                    batch_size: int = 16) -> Vector | VectorSet:
    """mean(act | positive) - mean(act | negative) at each site (CAA when the prompts are A/B
    answer pairs and ``positions='last'``). Each prompt counts once (its positions averaged).
    ``paired=True`` requires equal lengths (pair i = positive[i], negative[i]); the result is
    the same mean, and ``meta['pair_std']`` records how consistent the pairs are."""
    positive, negative = list(positive), list(negative)
    if not positive or not negative:
        raise ValueError("mean_difference needs at least one positive and one negative prompt")
    if paired and len(positive) != len(negative):
        raise ValueError(f"paired=True needs as many positives ({len(positive)}) as negatives "
                         f"({len(negative)})")
    names = lm.expand_sites(sites)
    pos = row_means(lm, positive, names, positions, chat, skip_first, batch_size)
    neg = row_means(lm, negative, names, positions, chat, skip_first, batch_size)
    diff = {s: pos[s].mean(0) - neg[s].mean(0) for s in names}
    meta = {"n_positive": len(positive), "n_negative": len(negative), "positions": repr(positions),
            "chat": chat}
    if paired:
        meta["pair_std"] = {s: float((pos[s] - neg[s]).norm(dim=1).std()) for s in names}
    return _one_or_set(lm, names, diff, method="mean_diff",
                       data_hash=data_hash(positive, negative, repr(positions), chat), meta=meta)


def concept_prompts(lm, words: Sequence[str], template: str = CONCEPT_TEMPLATE) -> list:
    return [lm.chat([{"role": "user", "content": template.format(word=w)}]) for w in words]


def concept_vectors(lm, words: Sequence[str], site: str, baseline_words: Optional[Sequence[str]] = None,
                    template: str = CONCEPT_TEMPLATE, batch_size: int = 32) -> VectorSet:
    """Concept vectors per the introspection protocol: the activation at the last prompt token
    (generation prompt included) of the chat-templated ``template`` for each word, minus the mean
    over ``baseline_words`` (default: 100 common nouns). Not normalised."""
    words = list(words)
    base = [w for w in (baseline_words or BASELINE_WORDS) if w.lower() not in
            {x.lower() for x in words}]
    if not base:
        raise ValueError("no baseline words left after removing the concept words")
    names = lm.expand_sites(site)
    if len(names) != 1:
        raise ValueError(f"concept_vectors takes one site; for a layer sweep use concept_vector "
                         f"(one word, many sites). Got {site!r} -> {names}")
    s = names[0]
    acts = lm.capture(concept_prompts(lm, words + base, template), sites=[s], positions="last",
                      batch_size=batch_size, dtype=torch.float32)[s]  # (W + N, d)
    mean_base = acts[len(words):].mean(0)
    return VectorSet(acts[:len(words)] - mean_base, names=words, site=s, model=lm.name,
                     method="concept", data_hash=data_hash(words, base, template),
                     meta={"template": template, "n_baseline": len(base),
                           "positions": "last prompt token (generation prompt included)"})


def concept_vector(lm, word: str, sites: Sites, baseline_words: Optional[Sequence[str]] = None,
                   template: str = CONCEPT_TEMPLATE, batch_size: int = 32) -> Vector | VectorSet:
    """One word's concept vector at one site (Vector) or many sites (VectorSet named by site)."""
    names = lm.expand_sites(sites)
    base = [w for w in (baseline_words or BASELINE_WORDS) if w.lower() != word.lower()]
    cap = lm.capture(concept_prompts(lm, [word] + base, template), sites=names, positions="last",
                     batch_size=batch_size, dtype=torch.float32)
    rows = {s: cap[s][0] - cap[s][1:].mean(0) for s in names}
    return _one_or_set(lm, names, rows, method="concept", data_hash=data_hash([word], base, template),
                       meta={"word": word, "template": template, "n_baseline": len(base)})


def pca_direction(lm, positive, negative, sites: Sites, positions="last", chat: bool = False,
                  batch_size: int = 16) -> Vector | VectorSet:
    """repeng-style: per pair, act(positive_i) - act(negative_i); the first principal component
    of these differences (centred, like scikit-learn PCA), unit norm, signed so that positives
    project above negatives on most pairs. ``meta['explained_variance_ratio']`` per site."""
    positive, negative = list(positive), list(negative)
    if len(positive) != len(negative) or len(positive) < 2:
        raise ValueError("pca_direction needs >= 2 pairs: equal-length positive/negative lists")
    names = lm.expand_sites(sites)
    pos = row_means(lm, positive, names, positions, chat, 0, batch_size)
    neg = row_means(lm, negative, names, positions, chat, 0, batch_size)
    rows, evr = {}, {}
    for s in names:
        p = pca(pos[s] - neg[s], 1)
        d = p.components[0]
        if int(((pos[s] @ d) > (neg[s] @ d)).sum()) < len(positive) / 2:
            d = -d
        rows[s], evr[s] = d, float(p.explained_variance_ratio[0])
    return _one_or_set(lm, names, rows, method="pca_diff", normalisation="unit",
                       data_hash=data_hash(positive, negative, repr(positions), chat),
                       meta={"explained_variance_ratio": evr, "n_pairs": len(positive)})


def response_means(lm, questions: Sequence[str], system_prompts: dict[str, str], sites: Sites,
                   max_new_tokens: int = 48, temperature: float = 0.7, seed: int = 0,
                   batch_size: int = 32, responses: Optional[dict[str, list[str]]] = None,
                   ) -> dict[str, VectorSet] | VectorSet:
    """For each named system prompt, generate answers to ``questions`` and average the activation
    over the assistant tokens of each response, then over responses (the Assistant-axis recipe).
    Returns a VectorSet (rows = system-prompt names) for one site, else {site: VectorSet}.
    Pass ``responses`` ({name: [one per question]}) to reuse (or judge-filter) responses."""
    import mindscope as ms

    names = lm.expand_sites(sites)
    per_site: dict[str, list[torch.Tensor]] = {s: [] for s in names}
    made = {}
    for key, sp in system_prompts.items():
        if responses is not None and key in responses:
            texts = list(responses[key])
        else:
            prompts = [lm.chat([{"role": "user", "content": q}], system=sp) for q in questions]
            gens = lm.generate(prompts, chat=True, max_new_tokens=max_new_tokens, temperature=temperature,
                               seed=seed, batch_size=batch_size)
            texts = [g.text for g in gens]
        made[key] = texts
        convs = [lm.chat([{"role": "user", "content": q}, {"role": "assistant", "content": t or " "}],
                         system=sp, add_generation_prompt=False) for q, t in zip(questions, texts)]
        m = row_means(lm, convs, names, positions=ms.role("assistant"), batch_size=batch_size)
        for s in names:
            per_site[s].append(m[s].mean(0))
    keys = list(system_prompts)
    out = {s: VectorSet(torch.stack(per_site[s]), names=keys, site=s, model=lm.name,
                        method="response_mean",
                        data_hash=data_hash(list(questions), system_prompts, made),
                        meta={"n_questions": len(questions), "max_new_tokens": max_new_tokens,
                              "temperature": temperature})
           for s in names}
    return out[names[0]] if len(names) == 1 else out


def probe_direction(probe, site: str = "", model: str = "", normalise: bool = True,
                    ) -> Vector | VectorSet:
    """A probe's weight vector as a direction. ``probe``: a tensor/array (d,) or (1, d), an
    sklearn-like object with ``coef_`` (and ``classes_``), or a torch module with ``weight``.
    Multi-class weights (k, d) give a VectorSet named by class."""
    names = None
    if hasattr(probe, "coef_"):
        w = torch.as_tensor(probe.coef_, dtype=torch.float32)
        if hasattr(probe, "classes_") and w.dim() == 2 and w.shape[0] == len(probe.classes_):
            names = [str(c) for c in probe.classes_]
    elif hasattr(probe, "weight") and not isinstance(probe, torch.Tensor):
        w = probe.weight.detach().float()
    else:
        w = torch.as_tensor(probe, dtype=torch.float32)
    w = w.detach().cpu()
    if w.dim() == 2 and w.shape[0] == 1:
        w = w[0]
    if w.dim() not in (1, 2):
        raise ValueError(f"probe weights must be (d,) or (k, d); got {tuple(w.shape)}")
    kw = dict(site=site, model=model, method="probe", normalisation="unit" if normalise else "none")
    if w.dim() == 1:
        v = Vector(w, **kw)
        return v.unit() if normalise else v
    s = VectorSet(w, names=names, **kw)
    return s.unit() if normalise else s


def neutral_pcs(acts: torch.Tensor, n_components: Optional[int] = None,
                variance: float = 0.5) -> torch.Tensor:
    """Top principal directions (k, d) of neutral activations (N, d): ``n_components`` of them,
    or the fewest that explain ``variance`` of the total."""
    p = pca(acts)
    if n_components is None:
        cum = p.explained_variance_ratio.cumsum(0)
        n_components = int((cum < variance).sum()) + 1
    return p.components[:n_components]


def covariance_directions(acts: torch.Tensor, n: int,
                          seed: Union[int, torch.Generator] = 0, unit: bool = True) -> torch.Tensor:
    """n random directions (n, d) drawn from N(0, Cov(acts)), acts (N, d): the variance-matched
    null of a steering or direction test (a random direction the activations could carry).
    r = Xc^T g / sqrt(N) with g ~ N(0, I_N) and Xc the centred ``acts``, so E[r r^T] = Cov(acts)
    (the biased, 1/N, covariance). Computed in float64; returned float32, unit rows unless
    ``unit=False``. ``seed`` is an int or a ``torch.Generator`` (which is advanced).

    >>> # R = covariance_directions(neutral_acts, 20, seed=1000)   # (20, d), unit rows
    """
    if acts.ndim != 2 or acts.shape[0] < 2:
        raise ValueError(f"covariance_directions needs activations (N, d) with N >= 2, got shape "
                         f"{tuple(acts.shape)}: pass one row per token")
    Xc = acts.double() - acts.double().mean(0, keepdim=True)  # (N, d)
    g = seed if isinstance(seed, torch.Generator) else torch.Generator().manual_seed(int(seed))
    G = torch.randn(n, Xc.shape[0], generator=g, dtype=torch.float64)  # (n, N)
    R = (G @ Xc) / Xc.shape[0] ** 0.5  # (n, d) ~ N(0, Cov)
    if unit:
        R = R / R.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return R.float()


def project_out_pcs(v: Vector | VectorSet, neutral_acts: torch.Tensor,
                    n_components: Optional[int] = None, variance: float = 0.5,
                    normalise: bool = True) -> Vector | VectorSet:
    """Remove the span of the top PCs of neutral activations from ``v`` (emotion-vector recipe),
    then (by default) unit-normalise. ``meta['projected_out']`` records how many PCs."""
    q = neutral_pcs(neutral_acts, n_components, variance)  # (k, d) orthonormal rows
    data = v.data.float()
    data = data - (data @ q.T) @ q
    out = v.with_data(data.to(v.data.dtype))
    out.meta = {**v.meta, "projected_out": int(q.shape[0]), "projected_out_variance": variance}
    return out.unit() if normalise else out


def emotion_vectors(lm, stories: dict[str, Sequence[str]], site: str,
                    neutral_texts: Sequence[str], variance: float = 0.5, skip_first: int = 1,
                    batch_size: int = 16) -> VectorSet:
    """The emotion-concept recipe: per emotion, the mean over story tokens (each story counted
    once), minus the mean over emotions; the top PCs of neutral text (``variance`` of it) are
    projected out; unit norm. ``skip_first`` drops the first token (attention sink)."""
    names = lm.expand_sites(site)
    if len(names) != 1:
        raise ValueError("emotion_vectors takes one site")
    s = names[0]
    means = [row_means(lm, list(t), [s], "all", False, skip_first, batch_size)[s].mean(0)
             for t in stories.values()]
    vs = VectorSet(torch.stack(means), names=list(stories), site=s, model=lm.name,
                   method="emotion", data_hash=data_hash(stories, list(neutral_texts)),
                   meta={"n_stories": {k: len(v) for k, v in stories.items()}}).centered()
    cap = lm.capture(list(neutral_texts), sites=[s], positions="all", dtype=torch.float32,
                     batch_size=batch_size)
    neutral = cap[s][cap.pos >= skip_first]
    return project_out_pcs(vs, neutral, variance=variance)
