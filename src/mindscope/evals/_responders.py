"""Responders: what answers the questions. ``respond(items, messages) -> list[Reply]``.

* ``LMResponder`` - an ``ms.LM`` through ``lm.generate(..., interventions=[...])`` (greedy by
  default), so steering / capping / ablation apply during the whole answer.
* ``HTTPResponder`` - a model behind any OpenAI-compatible endpoint (thread pool, retries).
* ``StaticResponder`` - saved responses ``{id: text}`` (e.g. official HLE prediction files).
"""
from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, is_dataclass
from typing import Any, Mapping, Optional, Sequence

from ..judges import ChatClient, ChatError
from ._items import Item

log = logging.getLogger(__name__)


@dataclass
class Reply:
    """One model answer (``text=None`` when generation failed; ``error`` says why)."""

    text: Optional[str]
    seconds: float = 0.0
    error: Optional[str] = None
    n_tokens: Optional[int] = None


def describe_intervention(iv: Any) -> dict:
    """JSON-able summary of an intervention: its type and fields, tensors as shape + hash."""
    out: dict[str, Any] = {"op": type(iv).__name__}
    if not is_dataclass(iv):
        return {**out, "repr": repr(iv)[:200]}
    for f in fields(iv):
        v = getattr(iv, f.name)
        if hasattr(v, "shape") and hasattr(v, "detach"):
            t = v.detach().float().cpu().contiguous()
            out[f.name] = {"shape": list(t.shape), "norm": round(float(t.norm()), 6),
                           "sha256": hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]}
        elif callable(v) and not isinstance(v, type):
            out[f.name] = getattr(v, "__name__", type(v).__name__)
        elif isinstance(v, (str, int, float, bool)) or v is None:
            out[f.name] = v
        else:
            out[f.name] = repr(v)[:200]
    return out


class Responder:
    name = "responder"

    def respond(self, items: Sequence[Item], messages: Sequence[list[dict]]) -> list[Reply]:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "backend": type(self).__name__}


class LMResponder(Responder):
    """Answers with an in-process ``ms.LM`` under ``interventions`` (applied to every token)."""

    def __init__(self, lm: Any, interventions: Sequence[Any] = (), *, max_new_tokens: int = 512,
                 temperature: float = 0.0, seed: Optional[int] = 0, batch_size: int = 8,
                 label: Optional[str] = None):
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        self.lm, self.interventions = lm, list(interventions)
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.batch_size = batch_size
        self.name = label or getattr(lm, "name", "model")

    def describe(self) -> dict:
        return {**super().describe(), "model": getattr(self.lm, "name", None),
                "interventions": [describe_intervention(iv) for iv in self.interventions],
                "max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                "seed": self.seed, "batch_size": self.batch_size}

    def respond(self, items: Sequence[Item], messages: Sequence[list[dict]]) -> list[Reply]:
        t0 = time.perf_counter()
        try:
            gens = self.lm.generate(list(messages), max_new_tokens=self.max_new_tokens, chat=True,
                                    temperature=self.temperature, seed=self.seed,
                                    interventions=self.interventions, batch_size=self.batch_size,
                                    progress=False)
        except Exception as e:  # keep the run alive; the items are retried on the next run
            log.error("generation failed for %d item(s): %r", len(items), e)
            return [Reply(text=None, error=f"generation: {e!r}"[:500]) for _ in items]
        dt = (time.perf_counter() - t0) / max(1, len(items))
        return [Reply(text=g.text, seconds=dt, n_tokens=len(g.token_ids)) for g in gens]


class HTTPResponder(Responder):
    """Answers with a model behind an OpenAI-compatible endpoint (concurrent requests)."""

    def __init__(self, base_url: str, model: str, *, max_tokens: Optional[int] = None,
                 temperature: float = 0.0, workers: int = 8, **client_kw: Any):
        self.client = ChatClient(base_url, model, **client_kw)
        self.max_tokens, self.temperature, self.workers = max_tokens, temperature, workers
        self.name = model

    def describe(self) -> dict:
        return {**super().describe(), **self.client.describe(), "max_tokens": self.max_tokens,
                "temperature": self.temperature, "client_stats": self.client.stats.to_dict()}

    def _one(self, msgs: list[dict]) -> Reply:
        t0 = time.perf_counter()
        params: dict[str, Any] = {"temperature": self.temperature}
        if self.max_tokens:
            params["max_tokens"] = self.max_tokens
        try:
            return Reply(text=self.client.chat(msgs, **params), seconds=time.perf_counter() - t0)
        except ChatError as e:
            return Reply(text=None, seconds=time.perf_counter() - t0, error=str(e)[:500])

    def respond(self, items: Sequence[Item], messages: Sequence[list[dict]]) -> list[Reply]:
        with ThreadPoolExecutor(max(1, self.workers)) as ex:
            return list(ex.map(self._one, messages))


class StaticResponder(Responder):
    """Saved responses: ``{id: text}`` or the official ``{id: {"response": text, ...}}``."""

    def __init__(self, responses: Mapping[str, Any], name: str = "static"):
        self.responses = {str(k): (v.get("response") if isinstance(v, dict) else v)
                          for k, v in responses.items()}
        self.name = name

    def describe(self) -> dict:
        return {**super().describe(), "n_responses": len(self.responses)}

    def respond(self, items: Sequence[Item], messages: Sequence[list[dict]]) -> list[Reply]:
        return [Reply(text=self.responses.get(it.id),
                      error=None if it.id in self.responses else "no saved response") for it in items]
