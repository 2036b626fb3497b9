"""SAE tools for auditors: features most active on a probe prompt or on the assistant's own
tokens, what a feature means (decoder logit tokens + top-activating training snippets),
feature steering (clamp a latent during generation), and feature attribution for one output
token. Any mindscope / SAELens / sparsify SAE folder works (``sae.load_any``).

>>> # top_features(lm, sae, "Give me a recipe for soup.", positions="assistant")
>>> # describe_features(lm, sae, [12, 40], texts=training_texts)
>>> # steer_feature(lm, sae, 12, ["Tell me about Japan."], multiple=4)
>>> # attribute_token(lm, sae, "Give me a recipe for soup.", " chocolate", prefill="Add some")
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from ..core import role

Messages = Union[str, Sequence[dict]]


def _messages(prompt: Messages) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]


def _site(sae, site: Optional[str]) -> str:
    site = site or getattr(sae.cfg, "site", "")
    if not site:
        raise ValueError("the SAE config names no site; pass site= (e.g. resid_post.15)")
    return site


def _dtype(sae) -> torch.dtype:
    return sae.W_enc.dtype


@torch.no_grad()
def logit_tokens(lm, sae, feature: int, k: int = 8) -> list[str]:
    """Tokens whose unembedding aligns most with the feature's decoder direction."""
    W_U = lm.model.get_output_embeddings().weight.detach().float().cpu()  # (V, d)
    d = sae.W_dec[int(feature)].detach().float().cpu()  # (d,)
    top = (W_U @ d).topk(k).indices
    return [lm.tokenizer.decode([int(t)]) for t in top]


@torch.no_grad()
def _acts(lm, sae, prompts, site, positions, skip_first: int = 1):
    cap = lm.capture(prompts, sites=[site], positions=positions, dtype=torch.float32)
    keep = cap.pos >= skip_first
    f = sae.encode(cap[site][keep].to(_dtype(sae))).float()  # (N, m)
    return f, cap.row[keep], cap.pos[keep], cap.token_ids[keep]


class FeatureIndex:
    """Top-activating snippets of every latent over ``texts``, computed in one pass (running
    top-k per latent), so describing features later costs nothing."""

    @torch.no_grad()
    def __init__(self, lm, sae, texts: Sequence[str], site: Optional[str] = None, k: int = 3,
                 window: int = 10, batch_size: int = 16):
        site = _site(sae, site)
        self.k, self.window = k, window
        m = sae.W_dec.shape[0]
        self.vals = torch.zeros(k, m)
        self.refs = torch.full((k, m), -1, dtype=torch.long)
        self.tokens: list[list[int]] = []
        self.tokenizer = lm.tokenizer
        texts = list(texts)
        for a in range(0, len(texts), batch_size):
            cap = lm.capture(texts[a:a + batch_size], sites=[site], positions="all",
                             dtype=torch.float32, progress=False)
            for r in range(int(cap.row.max()) + 1):
                self.tokens.append(cap.token_ids[cap.row == r].tolist())
            f = sae.encode(cap[site].to(_dtype(sae))).float()  # (N, m)
            f[cap.pos < 1] = 0
            ref = (cap.row + a) * 100_000 + cap.pos  # (N,) row/pos packed
            v, i = torch.cat([self.vals, f]).topk(k, dim=0)  # (k, m)
            self.refs = torch.cat([self.refs, ref[:, None].expand(-1, m)]).gather(0, i)
            self.vals = v

    def examples(self, feature: int) -> list[dict]:
        out = []
        for v, ref in zip(self.vals[:, feature].tolist(), self.refs[:, feature].tolist()):
            if v <= 0 or ref < 0:
                continue
            r, p = divmod(int(ref), 100_000)
            ids, w = self.tokens[r], self.window
            dec = self.tokenizer.decode
            out.append({"act": round(v, 3), "text": f"{dec(ids[max(0, p - w):p])}[[{dec(ids[p:p + 1])}]]"
                                                    f"{dec(ids[p + 1:p + 1 + w // 2])}"})
        return out


def describe_features(lm, sae, features: Sequence[int], texts: Sequence[str] = (),
                      site: Optional[str] = None, k: int = 3, index: Optional[FeatureIndex] = None) -> list[dict]:
    """For each feature: decoder logit tokens and the ``k`` snippets of ``texts`` (or of a
    prebuilt ``index``) where it fires most (the token marked with [[ ]])."""
    feats = [int(i) for i in features]
    if index is None and texts and feats:
        index = FeatureIndex(lm, sae, texts, site, k)
    return [{"feature": i, "logit_tokens": logit_tokens(lm, sae, i),
             "examples": index.examples(i) if index is not None else []} for i in feats]


def top_features(lm, sae, prompt: Messages, positions: str = "all", k: int = 10,
                 site: Optional[str] = None, max_new_tokens: int = 48,
                 texts: Sequence[str] = (), index: Optional[FeatureIndex] = None) -> dict:
    """Features most active (mean over the chosen tokens) on a chat prompt.

    ``positions``: ``all`` (every token after the first), ``last``, or ``assistant`` (the
    assistant's reply; if the prompt ends with a user turn the model's greedy reply is generated
    first). ``texts``: snippets for ``describe_features``."""
    if positions not in ("all", "last", "assistant"):
        raise ValueError(f"positions must be all, last or assistant, not {positions!r}")
    site = _site(sae, site)
    msgs = _messages(prompt)
    reply = None
    if positions == "assistant" and msgs[-1]["role"] != "assistant":
        reply = lm.generate([lm.chat(msgs)], chat=True, max_new_tokens=max_new_tokens)[0].text
        msgs = msgs + [{"role": "assistant", "content": reply or "."}]
    pos = role("assistant") if positions == "assistant" else positions
    f, _, _, _ = _acts(lm, sae, [lm.chat(msgs)], site, pos, skip_first=1 if positions == "all" else 0)
    if f.shape[0] == 0:
        raise ValueError("no tokens selected (empty assistant turn?)")
    mean, mx, frac = f.mean(0), f.max(0).values, (f > 0).float().mean(0)
    top = mean.topk(min(k, mean.numel())).indices.tolist()
    desc = {d["feature"]: d for d in describe_features(lm, sae, top, texts, site, index=index)}
    return {"site": site, "positions": positions, "n_tokens": int(f.shape[0]), "reply": reply,
            "features": [{"feature": i, "mean_act": round(float(mean[i]), 4),
                          "max_act": round(float(mx[i]), 4), "frac_tokens": round(float(frac[i]), 3),
                          "logit_tokens": desc[i]["logit_tokens"], "examples": desc[i]["examples"]}
                         for i in top]}


def steer_feature(lm, sae, feature: int, prompts: Union[str, Sequence[str]], value: Optional[float] = None,
                  multiple: float = 4.0, max_new_tokens: int = 48, temperature: float = 0.0,
                  site: Optional[str] = None, seed: int = 0) -> dict:
    """Generate with latent ``feature`` clamped to ``value`` (default ``multiple`` x its max
    activation on calibration texts) at every token; also the unsteered replies."""
    from ..steering import CALIBRATION_TEXTS, feature_max_activations, sae_clamp

    site = _site(sae, site)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if value is None:
        mx = feature_max_activations(lm, sae, site, list(CALIBRATION_TEXTS) + prompts)
        value = float(multiple * mx[int(feature)])
        if value == 0:
            value = float(multiple * mx.max())  # a dead feature: use the SAE's scale
    iv = sae_clamp(site, sae, int(feature), value=value)
    chats = [lm.chat(_messages(p)) for p in prompts]
    plain = lm.generate(chats, chat=True, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    steered = lm.generate(chats, chat=True, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                          interventions=[iv])
    return {"feature": int(feature), "value": value, "site": site,
            "rows": [{"prompt": p, "unsteered": a.text, "steered": b.text}
                     for p, a, b in zip(prompts, plain, steered)]}


def attribute_token(lm, sae, prompt: Messages, token: Union[str, int], prefill: Optional[str] = None,
                    k: int = 10, site: Optional[str] = None, texts: Sequence[str] = (),
                    index: Optional[FeatureIndex] = None) -> dict:
    """Which SAE latents (at any token of the prompt) push up the logit of ``token`` as the
    next token after the (optionally prefilled) assistant turn: attribution f_i * dlogit/df_i,
    summed over positions (``mindscope.causal.sae_attribution``)."""
    from ..causal import sae_attribution, token_id

    site = _site(sae, site)
    tid = token_id(lm, token)
    cp = lm.chat(_messages(prompt), prefill=prefill)

    def metric(logits, batch):
        return logits[:, -1, tid].float().sum()

    with torch.no_grad():
        lp = torch.log_softmax(lm.forward([cp])[0, -1].float(), -1)
    res = sae_attribution(lm, [cp], site, sae, metric)
    tot = res.total
    top = tot.abs().topk(min(k, tot.numel())).indices.tolist()
    desc = {d["feature"]: d for d in describe_features(lm, sae, top, texts, site, index=index)}
    return {"token": lm.tokenizer.decode([tid]), "token_id": tid, "site": site,
            "logit": res.metric, "logprob": round(float(lp[tid]), 4),
            "features": [{"feature": i, "attribution": round(float(tot[i]), 4),
                          "logit_tokens": desc[i]["logit_tokens"], "examples": desc[i]["examples"]}
                         for i in top]}
