"""Shared benchmark helpers: the machine's GEMM roofline, FLOP counts, peer venvs.

Peer libraries live in their own venvs under benchmarks/.venvs/<name> (their pins fight with
ours and with each other); `ensure_peer_venv` creates one on request (`--setup-peers`), and
`run_peer` runs a script there and reads one JSON line back."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"
PEERS = {  # venv name -> packages (torch is pinned first, always)
    "hooks": ["nnsight", "transformer-lens", "gguf", "accelerate"],
    "saelens": ["sae-lens", "gguf", "accelerate"],
    "sparsify": ["eai-sparsify", "gguf", "accelerate"],
}


def gemm_gflops(dtype=torch.float32, n: int = 2048, reps: int = 10) -> float:
    """Measured dense matmul throughput (GFLOP/s) of this machine: the roofline we compare to."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def flops_per_token(lm, n_blocks: int, T: int, with_head: bool = False) -> float:
    """Forward FLOPs per token for the first ``n_blocks`` blocks: 2 x (weights touched) plus
    attention scores/values (2 x 2 x T/2 x d per layer on average under a causal mask)."""
    per_block = sum(p.numel() for n, p in lm.block(0).named_parameters() if p.dim() == 2)
    f = 2 * per_block * n_blocks + 2 * 2 * (T / 2) * lm.d_model * n_blocks
    if with_head:
        f += 2 * lm.d_model * lm.vocab_size
    return f


def peer_python(name: str) -> Path | None:
    py = VENVS / name / "bin" / "python"
    return py if py.exists() else None


def ensure_peer_venv(name: str) -> Path:
    py = peer_python(name)
    if py:
        return py
    d = VENVS / name
    subprocess.run([sys.executable, "-m", "venv", str(d)], check=True)
    pip = [str(d / "bin" / "pip"), "install", "-q"]
    subprocess.run(pip + ["torch==2.13.0"], check=True)
    subprocess.run(pip + ["torch==2.13.0"] + PEERS[name], check=True)
    return d / "bin" / "python"


def _peer_cmd(name: str, script: str, args) -> tuple:
    """(argv, env) to run peers/<script> in the venv <name>, or (None, error dict)."""
    py = peer_python(name)
    if py is None:
        return None, {"error": f"not installed (run with --setup-peers to create "
                               f"benchmarks/.venvs/{name})"}
    return [str(py), str(HERE / "peers" / script), *args], {**os.environ, "PYTHONPATH": ""}


def _last_line(text: str) -> str:
    return (text.strip().splitlines() or ["no output"])[-1][:200]


def run_peer(name: str, script: str, *args: str, timeout: int = 900) -> dict:
    cmd, env = _peer_cmd(name, script, args)
    if cmd is None:
        return env
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": _last_line(r.stderr)}


class PeerRounds:
    """A peer script kept alive in its venv and driven round by round: ``round()`` writes one
    line to its stdin and reads one JSON line back, so peer and mindscope timings interleave
    (the machine's drift hits both alike) while only one process computes at a time. Its
    stderr goes to a temporary file (a pipe nobody reads could fill up and stall the peer)."""

    def __init__(self, name: str, script: str, *args: str):
        self.proc = None
        cmd, env = _peer_cmd(name, script, args)
        if cmd is None:
            self.info = env
            return
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, env=env)
        self.info = self._read()

    def _read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("{"):
                return json.loads(line)
        self.close()
        self.err.seek(0)
        return {"error": _last_line(self.err.read())}

    def round(self) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            return {}
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
            self.proc = None


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"
