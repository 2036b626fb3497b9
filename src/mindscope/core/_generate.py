"""Batched generation with a KV cache, under any interventions.

Our own loop (not HF ``generate``) so that positions stay exact: ``prompt`` positions are
edited during prefill only, ``generated`` positions at every new token, and per-row
intervention values follow their rows across batches. Rows that hit EOS stop growing.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ._chat import PLAIN_TRANSCRIPT, TURN_STOPS

log = logging.getLogger(__name__)


@dataclass
class Generation:
    prompt: str
    text: str
    token_ids: list[int]
    """Generated token ids (EOS excluded)."""
    finished: bool = False
    """True if the row stopped at an EOS token."""
    logprobs: list[float] = field(default_factory=list)
    """Log-probability of each generated token under the (steered) model."""

    def __repr__(self) -> str:
        return (f"Generation({_short(self.text, 80)!r}, {len(self.token_ids)} tokens"
                f"{', finished' if self.finished else ''})")


def _short(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


class Generations(list):
    """The list ``generate`` returns; shows as a prompt / text table in a notebook."""

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(f"<tr><td>{i}</td><td>{escape(_short(g.prompt, 120))}</td>"
                       f"<td>{escape(g.text)}</td><td>{len(g.token_ids)}</td></tr>"
                       for i, g in enumerate(self))
        return ("<table><tr><th>#</th><th>prompt</th><th>generated</th><th>tokens</th></tr>"
                f"{rows}</table>")


def _cache_kw(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class _Gens:
    """One seeded generator per device, made when first needed: ``torch.multinomial`` needs a
    generator on the device of the probabilities (the logits' device)."""

    def __init__(self, seed):
        self.seed, self.by_device = seed, {}

    def on(self, device: torch.device):
        if self.seed is None:
            return None
        if device not in self.by_device:
            self.by_device[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self.by_device[device]


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gens: "_Gens") -> torch.Tensor:
    if temperature <= 0:
        return logits.argmax(-1)
    gen = gens.on(logits.device)
    probs = torch.softmax(logits.float() / temperature, -1)  # (B, V)
    if top_p < 1.0:
        sp, si = probs.sort(-1, descending=True)
        cut = sp.cumsum(-1) - sp > top_p
        sp = sp.masked_fill(cut, 0)
        probs = torch.zeros_like(probs).scatter(-1, si, sp)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


@torch.no_grad()
def generate(self, prompts, max_new_tokens: int = 64, chat: bool = False, temperature: float = 0.0,
             top_p: float = 1.0, seed: int | None = 0, interventions=(), batch_size: int = 32,
             stop_at_eos: bool = True, progress: bool | None = None) -> Generations:
    """Generate continuations for a list of prompts (str rendered as one user turn when
    ``chat``; ChatPrompt / message lists as given). Greedy at ``temperature=0``. ``chat``
    defaults to False, as in ``capture``/``tokenize``: plain text is used as written.

    Per-row intervention values (scale (B,), vectors (B, d)) index the *whole* prompt list,
    even when it is split into batches of ``batch_size``.

    A model without a chat template gets chat prompts as a plain transcript (``render_chat``);
    a reply there ends where the model opens another turn (``TURN_STOPS``): the row stops
    and its text and tokens end before it (``finished``). ``stop_at_eos=False`` keeps both
    going to ``max_new_tokens``."""
    for name, v in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"generate: {name} must be a whole number >= 1, got {v!r}")
    if not temperature >= 0 or not 0 < top_p <= 1:
        raise ValueError(f"generate: temperature must be >= 0 and top_p in (0, 1], got "
                         f"{temperature!r} and {top_p!r}")
    batch = self.tokenize(prompts, chat=chat)
    n = len(batch)
    plain = stop_at_eos and self.chat_format == PLAIN_TRANSCRIPT
    # chat rows (rendered here, or a Batch given with chat=True) stop where another turn opens
    turn = [plain and (chat or bool(m.roles)) for m in batch.meta] if batch.meta else [plain and chat] * n
    gens = _Gens(seed)   # seeded per device: CPU and CUDA draw different (reproducible) samples
    eos = set()
    for t in (self.tokenizer.eos_token_id, getattr(self.model.generation_config, "eos_token_id", None)):
        eos.update(t if isinstance(t, (list, tuple)) else [t] if t is not None else [])
    eos_t = torch.tensor(sorted(eos)) if eos else None
    out = Generations()
    ckw = _cache_kw(self.model)
    show = progress if progress is not None else (n * max_new_tokens >= 256)
    bar = tqdm(total=n * max_new_tokens, desc="generate", unit="tok", disable=not show)
    t0, made = time.perf_counter(), 0
    with self.intervene(*interventions):
        for a in range(0, n, batch_size):
            b = batch.slice(a, a + batch_size)
            B = len(b)
            ids, mask = b.input_ids, b.attention_mask
            new = torch.empty((B, 0), dtype=torch.long)
            lps = torch.empty((B, 0))
            done = torch.zeros(B, dtype=torch.bool)
            with self._running(b, row_offset=a) as run:
                run.finished = done  # readers skip rows that have produced EOS
                res = self._call(ids, mask, use_cache=True, **b.model_inputs())
                cache = getattr(res, ckw, None) or getattr(res, "past_key_values", None)
                pos = self.position_ids(mask)[:, -1:]  # (B, 1)
                if run.rope_delta is not None:  # after images on a multimodal-rotary model
                    pos = pos + run.rope_delta
                logits = res.logits[:, -1]
                for step in range(max_new_tokens):
                    nxt = _sample(logits, temperature, top_p, gens).cpu()  # (B,)
                    lp = torch.log_softmax(logits.float(), -1).gather(
                        -1, nxt.to(logits.device).unsqueeze(-1)).squeeze(-1).cpu()
                    if stop_at_eos:
                        nxt = torch.where(done, torch.tensor(self.tokenizer.pad_token_id), nxt)
                    new, lps = torch.cat([new, nxt[:, None]], 1), torch.cat([lps, lp[:, None]], 1)
                    made += int((~done).sum())
                    bar.update(B)
                    if stop_at_eos:
                        if eos_t is not None:
                            done |= torch.isin(nxt, eos_t)
                        for i in range(B):  # a plain-transcript reply ends where another turn opens
                            if turn[a + i] and not done[i] and _stop_at(
                                    self.tokenizer.decode(new[i, -8:].tolist())) >= 0:
                                done[i] = True
                        if bool(done.all()):
                            bar.update(B * (max_new_tokens - step - 1))
                            break
                    if step == max_new_tokens - 1:
                        break
                    mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype)], 1)
                    pos = pos + 1
                    res = self.model(input_ids=nxt[:, None].to(self.device),
                                     attention_mask=mask.to(self.device),
                                     position_ids=pos.to(self.device), use_cache=True,
                                     **{ckw: cache})
                    cache = getattr(res, ckw, None) or getattr(res, "past_key_values", None)
                    logits = res.logits[:, -1]
            for i in range(B):
                toks, lp_row, fin = [], [], False
                for t, l in zip(new[i].tolist(), lps[i].tolist()):
                    if stop_at_eos and t in eos:
                        fin = True
                        break
                    toks.append(t)
                    lp_row.append(l)
                if turn[a + i]:
                    toks, lp_row, fin = _turn_end(self.tokenizer, toks, lp_row, fin)
                text = self.tokenizer.decode(toks, skip_special_tokens=True)
                out.append(Generation(prompt=b.meta[i].text, text=text, token_ids=toks,
                                      finished=fin, logprobs=lp_row))
    bar.close()
    dt = time.perf_counter() - t0
    log.info("generated %d tokens in %.1fs (%.1f tok/s)", made, dt, made / max(dt, 1e-9))
    return out


def _stop_at(text: str) -> int:
    """Where the first of ``TURN_STOPS`` starts in ``text``; -1 if none does."""
    hits = [i for i in (text.find(s) for s in TURN_STOPS) if i >= 0]
    return min(hits) if hits else -1


def _turn_end(tok, toks: list[int], lps: list[float], fin: bool) -> tuple[list, list, bool]:
    """Cut a plain-transcript reply before the first of ``TURN_STOPS`` it runs into (whole
    tokens only: the kept tokens decode to text that ends before the stop)."""
    if _stop_at(tok.decode(toks, skip_special_tokens=True)) < 0:
        return toks, lps, fin
    for k in range(1, len(toks) + 1):
        pos = _stop_at(tok.decode(toks[:k], skip_special_tokens=True))
        if pos >= 0:
            j = k - 1
            while j > 0 and len(tok.decode(toks[:j], skip_special_tokens=True)) > pos:
                j -= 1
            return toks[:j], lps[:j], True
    return toks, lps, fin
