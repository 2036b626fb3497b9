"""``mindscope serve DIR``: the feature browser on a stdlib ``ThreadingHTTPServer``.

Routes: ``/`` feature list (``sort``, ``order``, ``min_density``, ``max_density``, ``q``,
``limit``), ``/feature/<i>``, ``/map.svg``, ``/api/feature/<i>`` (JSON), ``/text?q=&top=``
and ``/steer?feature=&strength=&prompt=&tokens=`` (these two load the model lazily on first
use; one lock serialises every model call), ``/files/<path>`` (files inside DIR only).
Bad parameters are 400, unknown features and files 404, paths leaving DIR (``..``, encoded
traversal, symlinks out) 403; nothing a client sends causes a 500.

>>> # srv = FeatureServer("runs/sae", port=0); srv.start(); srv.url   # background thread
"""
from __future__ import annotations

import json
import logging
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

from . import _browser as B

log = logging.getLogger(__name__)
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_TEXT = 4000


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _one(qs: dict, name: str, default=None, conv: Callable = str, lo=None, hi=None):
    """One query parameter converted with ``conv`` and range-checked; HTTPError(400) if bad."""
    vals = qs.get(name)
    if not vals:
        return default
    if len(vals) > 1:
        raise HTTPError(400, f"parameter {name!r} given {len(vals)} times")
    try:
        v = conv(vals[0])
    except (TypeError, ValueError):
        raise HTTPError(400, f"parameter {name!r}: cannot read {vals[0][:50]!r} as "
                             f"{getattr(conv, '__name__', 'value')}") from None
    if isinstance(v, float) and not math.isfinite(v):
        raise HTTPError(400, f"parameter {name!r} must be finite")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise HTTPError(400, f"parameter {name!r} must be in [{lo}, {hi}], got {v}")
    return v


def safe_path(root: Path, rel: str) -> Path:
    """``root / rel`` if it stays inside root (after decoding and resolving symlinks), else
    HTTPError 403 (traversal) / 404 (missing)."""
    rel = unquote(rel)
    if "\x00" in rel or "\\" in rel:
        raise HTTPError(400, "bad characters in path")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or "%2e" in rel.lower() or "%2f" in rel.lower():
        raise HTTPError(403, "path leaves the served folder")
    root_r = root.resolve()
    p = (root_r / "/".join(parts)).resolve()
    if p != root_r and root_r not in p.parents:
        raise HTTPError(403, "path leaves the served folder")
    if not p.is_file():
        raise HTTPError(404, "no such file")
    return p


class FeatureServer:
    """Serves one analysis folder (an SAE folder with ``features/`` or the folder itself).
    ``lm``/``sae`` may be given; otherwise they are loaded on the first text/steering request
    (``load_lm`` defaults to ``ms.load(analysis model)``; the SAE from the parent folder)."""

    def __init__(self, root, host: str = "127.0.0.1", port: int = 8765, lm=None, sae=None,
                 load_lm: Optional[Callable[[], Any]] = None, max_new_tokens: int = 64,
                 max_waiting: int = 8, max_connections: int = 64,
                 request_timeout: float = 30.0):
        """``max_waiting``: model requests (text, steering) queued behind the one running;
        more get 429 + Retry-After. ``max_connections``: connections served at once; more
        wait in the listen queue. ``request_timeout``: seconds a client may stay silent."""
        from ..features import FeatureSet

        self.fs = FeatureSet(root)
        self.root = self.fs.path
        if host not in LOCAL_HOSTS:
            log.warning("serving on %s: the feature browser is then reachable from other "
                        "machines and has no authentication", host)
        self.host, self.port = host, port
        self._lm, self._sae, self._load_lm = lm, sae, load_lm
        self.model_lock = threading.Lock()
        self.max_new_tokens = max_new_tokens
        self.max_waiting, self.request_timeout = max_waiting, request_timeout
        self._waiting, self._count_lock = 0, threading.Lock()
        self._slots = threading.BoundedSemaphore(max_connections)
        self.httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._max_acts = None

    # ---- model (lazy, under the lock) -----------------------------------------------------------
    def _queued(self):
        """Context: wait for the model lock, or HTTPError 429 when the queue is full."""
        server = self

        class _Q:
            def __enter__(self):
                with server._count_lock:
                    if server._waiting > server.max_waiting:
                        raise HTTPError(429, f"busy: {server._waiting} model requests are queued; "
                                             "retry in a few seconds")
                    server._waiting += 1
                server.model_lock.acquire()

            def __exit__(self, *exc):
                server.model_lock.release()
                with server._count_lock:
                    server._waiting -= 1
                return False
        return _Q()

    def _model(self):
        if self._sae is None:
            from ..sae import load_any

            sae_dir = self.root.parent
            if not (sae_dir / "cfg.json").exists():
                raise HTTPError(503, f"no SAE folder above {self.root}; start the server with "
                                     "the SAE folder to use live pages")
            try:
                self._sae = load_any(sae_dir)
            except (OSError, ValueError) as e:
                raise HTTPError(503, f"could not load the SAE: {e}") from None
        if self._lm is None:
            try:
                if self._load_lm is not None:
                    self._lm = self._load_lm()
                else:
                    import mindscope as ms

                    name = self.fs.info.get("model") or self._sae.cfg.model
                    self._lm = ms.load(name)
            except HTTPError:
                raise
            except Exception as e:  # noqa: BLE001 - reported to the client, not a crash
                raise HTTPError(503, f"could not load the model: {e}") from None
        return self._lm, self._sae

    def features_for_text(self, text: str, top_n: int) -> list:
        from ..features import features_for_text

        with self._queued():
            lm, sae = self._model()
            return features_for_text(lm, sae, text, top_n=top_n)

    def steer(self, feature: int, strength: float, prompt: str, tokens: int) -> dict:
        import torch

        from ..steering import sae_clamp

        with self._queued():
            lm, sae = self._model()
            if self._max_acts is None:
                rows = self.fs.query("select max_act from features order by latent")
                self._max_acts = torch.tensor([r["max_act"] for r in rows])
            site = sae.cfg.site
            base = lm.generate([prompt], max_new_tokens=tokens, chat=True, temperature=0.0)[0].text
            iv = sae_clamp(site, sae, feature, multiple=strength, max_acts=self._max_acts)
            steered = lm.generate([prompt], max_new_tokens=tokens, chat=True, temperature=0.0,
                                  interventions=[iv])[0].text
        return {"base": base, "steered": steered}

    # ---- routing ------------------------------------------------------------------------------
    def _feature_id(self, s: str) -> int:
        if not s.isdigit() or len(s) > 9:
            raise HTTPError(400, f"feature id must be a non-negative integer, got {s[:30]!r}")
        i = int(s)
        if i >= self.fs.n_latents:
            raise HTTPError(404, f"feature {i} does not exist ({self.fs.n_latents} latents)")
        return i

    def handle(self, raw_path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``raw_path``."""
        u = urlsplit(raw_path)
        path = u.path
        try:
            qs = parse_qs(u.query, keep_blank_values=False, strict_parsing=False,
                          max_num_fields=20)
        except ValueError:
            raise HTTPError(400, "too many query parameters") from None
        html = "text/html; charset=utf-8"
        if path in ("/", "/index.html"):
            sort = _one(qs, "sort", "density")
            if sort not in B.SORTS:
                raise HTTPError(400, f"sort must be one of {B.SORTS}")
            order = _one(qs, "order", "desc")
            if order not in ("asc", "desc"):
                raise HTTPError(400, "order must be 'asc' or 'desc'")
            body = B.index_page(self.fs, "live", sort, order == "desc",
                                _one(qs, "min_density", 0.0, float, 0.0, 1.0),
                                _one(qs, "max_density", 1.0, float, 0.0, 1.0),
                                _one(qs, "q", "")[:200], _one(qs, "limit", None, int, 1, 10 ** 7))
            return 200, html, body.encode()
        if path.startswith("/feature/"):
            return 200, html, B.feature_page(self.fs, self._feature_id(path[9:]), "live").encode()
        if path.startswith("/api/feature/"):
            d = self.fs.feature(self._feature_id(path[13:]))
            return 200, "application/json", json.dumps(clean_json(d), default=_json_default).encode()
        if path == "/map.svg":
            return 200, "image/svg+xml", B.map_svg(self.fs, "live").encode()
        if path == "/text":
            q = _one(qs, "q", "")
            top = _one(qs, "top", 5, int, 1, 50)
            if len(q) > MAX_TEXT:
                raise HTTPError(400, f"text longer than {MAX_TEXT} characters")
            rows = self.features_for_text(q, top) if q.strip() else None
            return 200, html, B.text_page(self.fs, q, rows, top_n=top).encode()
        if path == "/steer":
            feat = _one(qs, "feature", None, int, 0, self.fs.n_latents - 1)
            strength = _one(qs, "strength", 4.0, float, -100.0, 100.0)
            tokens = _one(qs, "tokens", 32, int, 1, self.max_new_tokens)
            prompt = _one(qs, "prompt", "")
            if len(prompt) > MAX_TEXT:
                raise HTTPError(400, f"prompt longer than {MAX_TEXT} characters")
            res = self.steer(feat, strength, prompt, tokens) if feat is not None and \
                prompt.strip() else None
            return 200, html, B.steer_page(self.fs, feat, strength, prompt, res,
                                           max_new_tokens=tokens).encode()
        if path.startswith("/files/"):
            p = safe_path(self.root, raw_path.split("?", 1)[0][len("/files/"):])
            ctype = {".json": "application/json", ".html": html, ".svg": "image/svg+xml",
                     ".png": "image/png"}.get(p.suffix, "application/octet-stream")
            return 200, ctype, p.read_bytes()
        raise HTTPError(404, "not found")

    # ---- server -------------------------------------------------------------------------------
    def make_handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = server.request_timeout  # a silent client is dropped (slowloris)

            def log_message(self, fmt, *args):
                log.debug("%s " + fmt, self.address_string(), *args)

            def _send(self, status, ctype, body: bytes):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Content-Type-Options", "nosniff")
                if status == 429:
                    self.send_header("Retry-After", "2")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self):
                try:
                    status, ctype, body = server.handle(self.path)
                except HTTPError as e:
                    status, ctype = e.status, "text/plain; charset=utf-8"
                    body = f"{e.status}: {e.message}\n".encode()
                except (IndexError, KeyError, ValueError) as e:
                    status, ctype, body = 400, "text/plain; charset=utf-8", f"400: {e}\n".encode()
                except Exception:  # noqa: BLE001 - a bug of ours; logged, reported as 500
                    log.exception("error serving %s", self.path)
                    status, ctype, body = 500, "text/plain; charset=utf-8", b"500: internal error\n"
                try:
                    self._send(status, ctype, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_HEAD = do_GET

            def _reject(self):
                self._send(405, "text/plain; charset=utf-8", b"405: only GET\n")

            do_POST = do_PUT = do_DELETE = do_PATCH = _reject

        return Handler

    def _httpd(self) -> ThreadingHTTPServer:
        slots = self._slots

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 64

            def process_request(self, request, client_address):
                slots.acquire()  # at most max_connections handler threads; others queue
                try:
                    super().process_request(request, client_address)
                except BaseException:
                    slots.release()
                    raise

            def process_request_thread(self, request, client_address):
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        return Server((self.host, self.port), self.make_handler())

    def start(self) -> "FeatureServer":
        """Start in a background thread (``port=0`` picks a free port)."""
        self.httpd = self._httpd()
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{h}:{self.port}"

    def serve_forever(self) -> None:
        self.httpd = self._httpd()
        log.info("feature browser on %s", self.url)
        try:
            self.httpd.serve_forever()
        finally:
            self.httpd.server_close()

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()


def clean_json(o):
    """Replace non-finite floats by None (JSON has no NaN), recursively."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: clean_json(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [clean_json(v) for v in o]
    return o


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return str(o)


def serve(root, host: str = "127.0.0.1", port: int = 8765, **kw) -> None:
    """Serve ``root`` until interrupted."""
    FeatureServer(root, host, port, **kw).serve_forever()


__all__ = ["FeatureServer", "serve", "safe_path", "HTTPError"]
