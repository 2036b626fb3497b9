"""Model diffing: what changed between the base model and the organism on the same tokens.

On a set of chat transcripts (prompts + the organism's own replies, so the tokens where it
behaves differently are included) both models are run and compared:

* per layer: relative residual difference  mean_t ||h_org - h_base|| / mean_t ||h_base||, and
  mean cosine between the two residuals;
* next-token distributions: the tokens whose log-probability rose most on average;
* with an SAE: firing density (fraction of tokens with f > 0) of every latent in each model,
  and the latents whose density gained most (and their mean-activation change).

>>> # d = model_diff(base_lm, org_lm, sae=sae)
>>> # d["layers"][15]["rel_diff"], d["gained_features"][:3]
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from ._sae_tools import describe_features

log = logging.getLogger(__name__)


def _check_same(base, org) -> None:
    if base.n_layers != org.n_layers or base.d_model != org.d_model or base.vocab_size != org.vocab_size:
        raise ValueError(f"base {base!r} and organism {org!r} differ in shape; diffing needs the "
                         "same architecture")


@torch.no_grad()
def model_diff(base, organism, prompts: Optional[Sequence[str]] = None, sae=None,
               with_responses: bool = True, max_new_tokens: int = 32, k: int = 10,
               texts: Sequence[str] = (), index=None) -> dict:
    """Diff ``organism`` against ``base`` (see module doc). ``prompts``: user messages (default:
    the shipped probe set); ``texts``: snippets used to describe the top SAE latents."""
    _check_same(base, organism)
    if prompts is None:
        from ._biases import load_biases
        prompts = load_biases().probes["diff_texts"]
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to diff on")
    msgs = [[{"role": "user", "content": p}] for p in prompts]
    if with_responses:
        gens = organism.generate([organism.chat(m) for m in msgs], chat=True, max_new_tokens=max_new_tokens)
        msgs = [m + [{"role": "assistant", "content": g.text or "."}] for m, g in zip(msgs, gens)]
    chats = [organism.chat(m) for m in msgs]
    sites = [f"resid_post.{L}" for L in range(organism.n_layers)]
    sae_site = getattr(getattr(sae, "cfg", None), "site", None) if sae is not None else None
    if sae is not None and sae_site not in sites:
        sites.append(sae_site)
    num = torch.zeros(len(sites))
    den = torch.zeros(len(sites))
    cos = torch.zeros(len(sites))
    n_tok = 0
    dlp = torch.zeros(organism.vocab_size)
    fb, fo = [], []
    for c in tqdm(chats, desc="diff", unit="text"):
        cb = base.capture([c], sites=sites, positions="all", stop_early=False, dtype=torch.float32)
        co = organism.capture([c], sites=sites, positions="all", stop_early=False, dtype=torch.float32)
        keep = cb.pos >= 1
        n = int(keep.sum())
        for j, s in enumerate(sites):
            hb, ho = cb[s][keep], co[s][keep]  # (n, d)
            num[j] += (ho - hb).norm(dim=-1).sum()
            den[j] += hb.norm(dim=-1).sum()
            cos[j] += torch.nn.functional.cosine_similarity(ho, hb, dim=-1).sum()
        lb = torch.log_softmax(cb.logits[0].float(), -1)[-cb.pos.numel():][keep]  # (n, V)
        lo = torch.log_softmax(co.logits[0].float(), -1)[-co.pos.numel():][keep]
        dlp += (lo - lb).sum(0)
        n_tok += n
        if sae is not None:
            dt = sae.W_enc.dtype
            fb.append(sae.encode(cb[sae_site][keep].to(dt)).float())
            fo.append(sae.encode(co[sae_site][keep].to(dt)).float())
    layers = [{"site": s, "rel_diff": round(float(num[j] / den[j].clamp(min=1e-9)), 5),
               "cos": round(float(cos[j] / max(n_tok, 1)), 5)} for j, s in enumerate(sites)]
    dlp /= max(n_tok, 1)
    up = dlp.topk(k).indices.tolist()
    out = {"n_texts": len(chats), "n_tokens": n_tok, "layers": layers,
           "tokens_up": [{"token": organism.tokenizer.decode([t]), "mean_dlogprob": round(float(dlp[t]), 4)}
                         for t in up],
           "transcripts": [m[-1]["content"] for m in msgs] if with_responses else []}
    if sae is not None:
        Fb, Fo = torch.cat(fb), torch.cat(fo)  # (N, m)
        db, do = (Fb > 0).float().mean(0), (Fo > 0).float().mean(0)
        dm = Fo.mean(0) - Fb.mean(0)
        gain = do - db
        top = gain.topk(min(k, gain.numel())).indices.tolist()
        desc = {d["feature"]: d for d in describe_features(organism, sae, top, texts, sae_site, index=index)}
        out["sae_site"] = sae_site
        out["gained_features"] = [
            {"feature": i, "density_base": round(float(db[i]), 4), "density_organism": round(float(do[i]), 4),
             "density_gain": round(float(gain[i]), 4), "mean_act_change": round(float(dm[i]), 4),
             "logit_tokens": desc[i]["logit_tokens"], "examples": desc[i]["examples"]} for i in top]
        lost = (-gain).topk(min(k, gain.numel())).indices.tolist()
        out["lost_features"] = [{"feature": i, "density_gain": round(float(gain[i]), 4)} for i in lost]
    return out
