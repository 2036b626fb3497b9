"""Two processes writing the same run folder: the second gets a clear lock error naming the
first's pid, for every writer; a SIGKILLed holder leaves a lock that is simply taken over."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mindscope.core import RunLockedError, run_lock

LOCK_PY = Path(__file__).resolve().parents[2] / "src" / "mindscope" / "core" / "_lock.py"
# a holder that imports only _lock.py (no torch): starts in ~0.1 s
HOLDER = f"""
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("_lock", {str(LOCK_PY)!r})
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
try:
    lk = m.run_lock(sys.argv[1], "holder").acquire()
except m.RunLockedError as e:
    print("LOCKED:", e, flush=True); sys.exit(3)
print("HOLDING", flush=True)
if len(sys.argv) < 3:   # "probe" as 2nd argument: take the lock and leave at once
    time.sleep(600)
"""


def probe(folder) -> subprocess.CompletedProcess:
    """Another process trying the lock once: returncode 0 = got it, 3 = refused."""
    return subprocess.run([sys.executable, "-c", HOLDER, str(folder), "probe"],
                          capture_output=True, text=True, timeout=60)


def hold(folder):
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE,
                         text=True)
    assert p.stdout.readline().strip() == "HOLDING"
    return p


@pytest.fixture
def holder(tmp_path):
    procs = []

    def start(folder):
        procs.append(hold(folder))
        return procs[-1]
    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


def _writers(tiny, corpus_dir, store, sae_dirs):
    from mindscope.activations import harvest
    from mindscope.evals._store import RunStore
    from mindscope.runs import RunDir
    from mindscope.features import analyze
    from mindscope.sae import SAEConfig, TensorBatches, TrainConfig, Trainer, sweep

    data = TensorBatches(torch.randn(256, 16), batch_size=32, seed=0)
    return {
        "harvest": lambda d: harvest(tiny("llama"), d, sites="resid_post.1", corpus=corpus_dir,
                                     n_tokens=64, window=32, shard_tokens=64, progress=False),
        "sae train": lambda d: Trainer([(SAEConfig("topk", 16, 32, k=4), TrainConfig(steps=2))],
                                       d, progress=False, plots=False).fit(data),
        "sweep": lambda d: sweep(data, [torch.randn(64, 16)], SAEConfig("topk", 16, 32, k=4),
                                 TrainConfig(steps=1), n_latents=[32, 64], tokens=[64], lrs=[1e-3],
                                 batch_size=32, out_dir=d, progress=False),
        "analysis": lambda d: analyze(sae_dirs["ours"], store, out=d, progress=False),
        "experiment run": lambda d: RunDir(d, {"x": 1}, experiment="demo"),
        "benchmark run": lambda d: RunStore(d),
    }


def test_every_writer_refuses_a_locked_folder_then_works(tiny, corpus_dir, store, sae_dirs,
                                                         holder, tmp_path):
    for name, write in _writers(tiny, corpus_dir, store, sae_dirs).items():
        d = tmp_path / name.replace(" ", "_")
        p = holder(d)
        with pytest.raises(RunLockedError) as ei:
            write(d)
        msg = str(ei.value)
        assert f"pid {p.pid}" in msg and str(d) in msg and "holder" in msg, (name, msg)
        p.send_signal(signal.SIGKILL)  # a dead holder's lock is taken over
        p.wait()
        assert json.loads((d / ".lock").read_text())["pid"] == p.pid  # stale file left behind
        write(d)
        assert not (d / ".lock").read_text().strip()  # released (emptied) after the write


def test_two_processes_race_for_one_folder(tmp_path):
    d = tmp_path / "run"
    first = hold(d)
    try:
        second = probe(d)
        assert second.returncode == 3 and f"pid {first.pid}" in second.stdout
    finally:
        first.kill()
        first.wait()
    assert probe(d).returncode == 0  # the kernel dropped the dead holder's lock


def test_lock_is_reentrant_in_process_and_released(tmp_path):
    d = tmp_path / "r"
    with run_lock(d, "outer") as a:
        with run_lock(d, "inner"):
            pass
        assert a.held
        info = json.loads((d / ".lock").read_text())
        assert info["pid"] == os.getpid() and info["what"] == "outer" and info["host"]
        assert probe(d).returncode == 3  # still held after the inner block
    assert probe(d).returncode == 0


def test_lock_released_when_owner_object_dies(tmp_path):
    from mindscope.runs import RunDir

    d = tmp_path / "gc"
    rd = RunDir(d, {}, experiment="x")
    r = probe(d)
    assert r.returncode == 3 and "experiment x" in r.stdout
    del rd
    assert probe(d).returncode == 0
