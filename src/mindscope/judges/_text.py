"""Free-text judge backends (feature explainers and scorers ask them), built on the judges
of ``_judge``.

``make_feature_judge(spec)``:

- ``"offline"`` (default): no model. The explainer and scorers use their deterministic
  token-overlap baselines (see ``_interpret``), so the pipeline runs anywhere.
- ``"lm"`` (needs ``lm=``): an in-process ``ms.LM`` answers greedily (``LMJudge``).
- ``"http://host:port/v1"``: any OpenAI-compatible endpoint (``HTTPJudge`` without the
  structured verdict), with its retries on 429/5xx/timeouts.

``FeatureJudge.ask(prompt) -> TextReply`` never raises: rate limits, timeouts, connection errors and
exceptions come back as ``TextReply(text=None, error=kind)`` and are counted in ``stats``.

>>> j = make_feature_judge("offline"); j.name, j.offline
('offline', True)
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Optional, Union

from ._judge import HTTPJudge, LMJudge, judge_kind

log = logging.getLogger(__name__)


@dataclass
class TextReply:
    text: Optional[str]
    """The model's reply, or None on failure."""
    error: Optional[str] = None
    """None, or rate_limited | timeout | connection | http_error | malformed | exception."""
    detail: str = ""


class FeatureJudge:
    """A named text backend; ``offline`` judges have no model (``ask`` is not used)."""

    offline = False

    def __init__(self, name: str, judge: Any = None):
        self.name, self.judge = name, judge
        self.stats: dict[str, int] = {"requests": 0, "ok": 0, "failed": 0, "malformed": 0}
        self._lock = threading.Lock()

    @property
    def concurrent(self) -> bool:
        return bool(getattr(self.judge, "concurrent", False))

    def describe(self) -> dict:
        d = self.judge.describe() if self.judge is not None else {"name": self.name}
        d = {k: v for k, v in d.items() if k != "prompt"}
        return {**d, "name": self.name, "stats": dict(self.stats)}

    def count(self, key: str) -> None:
        with self._lock:
            self.stats[key] = self.stats.get(key, 0) + 1

    def ask(self, prompt: str) -> TextReply:
        self.count("requests")
        try:
            text = self.judge.ask(prompt)  # HTTP with retries, or local generate
        except Exception as e:  # noqa: BLE001 - a judge never kills a long run
            kind = getattr(e, "kind", "exception")
            self.count("failed")
            self.count(kind)
            log.warning("judge %s: %s", self.name, e)
            return TextReply(None, kind, str(e)[:300])
        self.count("ok")
        return TextReply(text)


class OfflineJudge(FeatureJudge):
    offline = True

    def __init__(self):
        super().__init__("offline")

    def describe(self) -> dict:
        return {"name": "offline", "backend": "token-overlap baseline (no model)",
                "stats": dict(self.stats)}

    def ask(self, prompt: str) -> TextReply:  # pragma: no cover - offline paths never ask
        return TextReply(None, "unsupported", "the offline judge has no model")


def make_feature_judge(spec: Union[str, FeatureJudge, None] = "offline", *, lm: Any = None,
                       model: str = "default", timeout: float = 60.0, max_retries: int = 3,
                       backoff: float = 1.0, max_tokens: int = 512) -> FeatureJudge:
    """``"offline"`` | ``"lm"`` (with ``lm=``) | ``"http(s)://.../v1"`` (``model`` names the
    server's model) | an existing FeatureJudge."""
    if isinstance(spec, FeatureJudge):
        return spec
    kind = judge_kind("offline" if spec is None else spec, ("offline", "lm", "http"))
    if kind == "offline":
        return OfflineJudge()
    if kind == "lm":
        if lm is None:
            raise ValueError("judge 'lm' needs a loaded model (lm=...)")
        j = LMJudge(lm, max_new_tokens=max_tokens)
        return FeatureJudge(j.name, j)
    j = HTTPJudge(spec, model, timeout=timeout, max_retries=max_retries, backoff=backoff,
                  max_tokens=max_tokens, structured=False)
    return FeatureJudge(j.name, j)
