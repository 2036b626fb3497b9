"""Shared fixtures: the bundled model, tiny models, and a fake OpenAI-compatible server."""
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the demo registers its SAE: tests write into a throw-away registry, never the user's cache
os.environ.setdefault("MINDSCOPE_SAE_REGISTRY", tempfile.mkdtemp(prefix="mindscope-test-saes-"))
# The CPU suite stays on the CPU on a GPU machine too ('auto' devices resolve to cpu);
# tests/gpu sets the device it tests (docs/gpu.md).
os.environ.setdefault("MINDSCOPE_DEVICE", "cpu")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def real_lm():
    """The bundled SmolLM2-135M-Instruct (dequantized once, then cached)."""
    import mindscope as ms

    try:
        return ms.load("smollm2-135m-instruct")
    except FileNotFoundError as e:  # pragma: no cover - make test installs it
        pytest.skip(f"bundled model not installed: {e}")


@pytest.fixture(scope="session")
def tiny():
    from mindscope.testing import tiny_lm

    cache = {}

    def get(family="llama", **kw):
        key = (family, tuple(sorted(kw.items())))
        if key not in cache:
            cache[key] = tiny_lm(family, **kw)
        return cache[key]

    return get


def completion(content: str) -> dict:
    """A chat-completions reply body whose one choice says ``content``."""
    return {"id": "x", "object": "chat.completion", "model": "fake",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}]}


class FakeOpenAI:
    """A chat-completions server on 127.0.0.1 (stdlib, random port).

    ``script``: actions consumed one per request, then ``default(body)``.
    Actions: ("ok", text) | ("429", retry_after=0) | ("sleep", seconds, text) |
    ("raw", status, bytes). Each request is kept in ``requests`` (path, body, auth)."""

    def __init__(self):
        self.script: list = []
        self.default = lambda body: ("ok", "hello")
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, data, headers=()):
                try:
                    self.send_response(status)
                    for k, v in headers:
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n))
                with fake.lock:
                    fake.requests.append({"path": self.path, "body": body,
                                          "auth": self.headers.get("Authorization")})
                    action = fake.script.pop(0) if fake.script else fake.default(body)
                kind = action[0]
                if kind == "429":
                    retry = action[1] if len(action) > 1 else 0
                    return self.reply(429, b'{"error": "rate limited"}', [("Retry-After", str(retry))])
                if kind == "sleep":
                    time.sleep(action[1])
                    action, kind = ("ok", action[2]), "ok"
                if kind == "raw":
                    return self.reply(action[1], action[2])
                self.reply(200, json.dumps(completion(action[1])).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_openai():
    """A running :class:`FakeOpenAI`, shut down after the test."""
    srv = FakeOpenAI()
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny):
    """The tiny llama saved as a model folder, so ``ms.load(dir)`` works in subprocesses."""
    d = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny("llama")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def text_corpus(tmp_path_factory):
    """A small mixed corpus folder: .txt, .md, text .jsonl and chat .jsonl (~6k tiny tokens)."""
    d = tmp_path_factory.mktemp("corpus")
    words = "the quick brown fox jumps over the lazy dog alice met bob in the garden".split()
    for i in range(6):
        (d / f"doc{i}.txt").write_text(" ".join(words[(i + j) % len(words)] for j in range(120)))
    (d / "notes.md").write_text("# Notes\n\ndef add(a, b):\n    return a + b\n" * 10)
    with open(d / "recs.jsonl", "w") as fh:
        for i in range(20):
            fh.write(json.dumps({"text": f"Trial {i}: do you detect an injected thought? " * 3}) + "\n")
    with open(d / "chat.jsonl", "w") as fh:
        for i in range(10):
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"Tell me about the ocean {i}"},
                {"role": "assistant", "content": "Yes. The mountains, music, and bread. " * 2}]}) + "\n")
    return d
