"""A small client for any OpenAI-compatible chat-completions endpoint (stdlib only).

Handles what breaks long runs: HTTP 429 and 5xx (retried with exponential backoff, honouring
``Retry-After``), timeouts and dropped connections (retried), and replies that are not the
expected JSON (reported, not retried). Thread-safe; counts every event in ``stats``.

>>> c = ChatClient("http://127.0.0.1:8000/v1", model="judge")   # doctest: +SKIP
>>> c.chat([{"role": "user", "content": "hi"}])                 # doctest: +SKIP
'Hello!'
"""
from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class ChatError(RuntimeError):
    """A request that failed for good. ``kind``: rate_limited | timeout | http_error |
    connection | malformed."""

    def __init__(self, kind: str, message: str, attempts: int = 1):
        super().__init__(f"{kind}: {message}")
        self.kind, self.attempts = kind, attempts


@dataclass
class ClientStats:
    """Counters over the client's life (all requests, all threads)."""

    requests: int = 0
    ok: int = 0
    retries: int = 0
    rate_limited: int = 0
    timeouts: int = 0
    http_errors: int = 0
    connection_errors: int = 0
    malformed: int = 0
    failed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class ChatClient:
    """POST ``{base_url}/chat/completions``; return the first choice's message content."""

    def __init__(self, base_url: str, model: str = "default", *, api_key: Optional[str] = None,
                 timeout: float = 120.0, max_retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 60.0, extra_body: Optional[dict] = None):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r} "
                             "(e.g. http://127.0.0.1:8000/v1)")
        if max_retries < 0 or timeout <= 0:
            raise ValueError("max_retries must be >= 0 and timeout > 0")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + ("" if self.base_url.endswith("/chat/completions") else "/chat/completions")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout, self.max_retries = timeout, max_retries
        self.backoff, self.max_backoff = backoff, max_backoff
        self.extra_body = dict(extra_body or {})
        self.stats = ClientStats()

    def describe(self) -> dict:
        return {"base_url": self.base_url, "model": self.model, "timeout": self.timeout,
                "max_retries": self.max_retries}

    def _post(self, body: dict) -> tuple[int, dict, bytes]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers or {}), e.read() or b""

    def _sleep_for(self, attempt: int, headers: dict) -> float:
        ra = {k.lower(): v for k, v in headers.items()}.get("retry-after")
        if ra is not None:
            try:
                return min(float(ra), self.max_backoff)
            except ValueError:
                pass
        base = self.backoff * (2 ** attempt)
        return min(base + random.uniform(0, self.backoff), self.max_backoff)

    def request(self, body: dict) -> dict:
        """Send one JSON body (``model`` filled in) with retries -> the parsed JSON reply."""
        body = {"model": self.model, **self.extra_body, **body}
        last_kind, last_msg = "http_error", ""
        for attempt in range(self.max_retries + 1):
            self.stats.add(requests=1)
            headers: dict = {}
            try:
                status, headers, raw = self._post(body)
            except (socket.timeout, TimeoutError) as e:
                self.stats.add(timeouts=1)
                last_kind, last_msg = "timeout", f"no reply within {self.timeout}s ({e})"
            except urllib.error.URLError as e:
                if isinstance(e.reason, (socket.timeout, TimeoutError)):
                    self.stats.add(timeouts=1)
                    last_kind, last_msg = "timeout", f"no reply within {self.timeout}s"
                else:
                    self.stats.add(connection_errors=1)
                    last_kind, last_msg = "connection", f"{self.url}: {e.reason}"
            except (ConnectionError, OSError) as e:
                self.stats.add(connection_errors=1)
                last_kind, last_msg = "connection", f"{self.url}: {e}"
            else:
                if status == 200:
                    try:
                        out = json.loads(raw.decode("utf-8", "replace"))
                        if not isinstance(out, dict):
                            raise ValueError("reply is not a JSON object")
                    except ValueError as e:
                        self.stats.add(malformed=1, failed=1)
                        raise ChatError("malformed", f"reply is not JSON: {e}; {raw[:200]!r}", attempt + 1)
                    self.stats.add(ok=1)
                    return out
                if status == 429:
                    self.stats.add(rate_limited=1)
                    last_kind, last_msg = "rate_limited", "HTTP 429 Too Many Requests"
                else:
                    self.stats.add(http_errors=1)
                    last_kind, last_msg = "http_error", f"HTTP {status}: {raw[:300]!r}"
                    if status not in _RETRY_STATUS:
                        self.stats.add(failed=1)
                        raise ChatError("http_error", last_msg, attempt + 1)
            if attempt < self.max_retries:
                self.stats.add(retries=1)
                wait = self._sleep_for(attempt, headers)
                log.debug("%s (attempt %d), retrying in %.2fs", last_msg, attempt + 1, wait)
                time.sleep(wait)
        self.stats.add(failed=1)
        raise ChatError(last_kind, f"{last_msg} (gave up after {self.max_retries + 1} attempts)",
                        self.max_retries + 1)

    def chat(self, messages: list[dict], **params: Any) -> str:
        """Chat completion -> the first choice's text. Raises ``ChatError`` (never anything else
        for network/protocol problems)."""
        out = self.request({"messages": messages, **params})
        try:
            content = out["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            self.stats.add(malformed=1, failed=1)
            raise ChatError("malformed", f"no choices[0].message.content in {str(out)[:200]}")
        if content is None:
            content = out["choices"][0]["message"].get("refusal") or ""
        return str(content)
