"""SIGKILL harvest, SAE training, sweeps, feature analysis and benchmark runs at a random point
(seeded: MS_ROBUST_SEED, default 0), resume, and compare with an uninterrupted run: bitwise where
the job is deterministic. No partial file may ever be read as complete."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import _jobs
from mindscope.core import BadInputError

JOBS = str(Path(__file__).with_name("_jobs.py"))
SEED = int(os.environ.get("MS_ROBUST_SEED", "0"))


def rng(name):
    return random.Random(f"{SEED}-{name}")


def kill_at(job, out, args, target, poll=None, timeout=120):
    """Run ``job`` in a subprocess and SIGKILL it once it reports ``target`` units of progress
    (``P n`` lines on stdout, or ``poll()`` >= target). Returns the progress reached."""
    p = subprocess.Popen([sys.executable, JOBS, job, str(out), str(torch.get_num_threads()),
                          *map(str, args)], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": ""})
    reached, deadline = 0, time.time() + timeout
    try:
        if poll is not None:
            while time.time() < deadline and p.poll() is None and reached < target:
                reached = poll()
                time.sleep(0.01)
        else:
            for line in p.stdout:
                if line.startswith("P "):
                    reached = int(line.split()[1])
                if reached >= target or line.startswith("DONE") or time.time() > deadline:
                    break
        assert p.poll() is None, f"{job} ended before it could be killed (at {reached})"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL
    return reached


def no_temp_files(out):
    return [q for q in Path(out).rglob("*") if ".tmp" in q.name]


# ---- harvest ------------------------------------------------------------------------------------

def test_harvest_killed_then_resumed_is_bitwise_identical(tiny, tiny_dir, corpus_dir, tmp_path):
    import mindscope as ms
    from mindscope.activations import ActivationStore, harvest

    out = tmp_path / "killed"
    target = rng("harvest").randint(1, 6)  # of 8 shards
    kill_at("harvest", out, [tiny_dir, corpus_dir], target,
            poll=lambda: len(list((out / "shards").glob("0*.json"))))
    with pytest.raises(FileNotFoundError, match="interrupted"):  # not readable as complete
        ActivationStore.open(out)
    lm = ms.load(str(tiny_dir))
    resumed = harvest(lm, out, corpus=corpus_dir, **_jobs.HARVEST_KW)
    fresh = harvest(lm, tmp_path / "fresh", corpus=corpus_dir, **_jobs.HARVEST_KW)
    assert resumed.manifest["tokens_sha256"] == fresh.manifest["tokens_sha256"]
    assert len(resumed.shards) == len(fresh.shards) == 8 and not no_temp_files(out)
    for k in range(8):
        for site in resumed.sites:
            assert np.array_equal(resumed.load(site, k), fresh.load(site, k)), (k, site)
        assert resumed.metadata(k).equals(fresh.metadata(k))
    resumed.verify()


# ---- SAE training and sweeps --------------------------------------------------------------------

def _weights(out):
    return {f"{d.name}/{k}": v for d in sorted(Path(out).iterdir()) if d.is_dir()
            for k, v in load_file(str(d / "sae.safetensors")).items()}


def test_sae_training_killed_then_resumed_is_bitwise_identical(tmp_path):
    from mindscope.sae import Trainer

    out = tmp_path / "killed"
    target = rng("train").randint(3, 20)  # of 24 steps
    kill_at("train", out, [], target)
    assert not any(d.is_dir() for d in out.iterdir())  # no final SAE folder from a dead run
    Trainer(_jobs.train_specs(), out, checkpoint_every=1, progress=False,
            plots=False).fit(_jobs.train_data())
    Trainer(_jobs.train_specs(), tmp_path / "ref", progress=False,
            plots=False).fit(_jobs.train_data())
    a, b = _weights(out), _weights(tmp_path / "ref")
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not no_temp_files(out)


def test_sweep_killed_then_rerun_equals_uninterrupted(tmp_path):
    from mindscope.sae import sweep

    out = tmp_path / "killed"
    target = rng("sweep").randint(1, 11)  # of 12 batches
    kill_at("sweep", out, [], target)
    assert not (out / "sweep.json").exists() and not no_temp_files(out)
    got = sweep(_jobs.train_data(), out_dir=out, **_jobs.sweep_args())
    ref = sweep(_jobs.train_data(), out_dir=tmp_path / "ref", **_jobs.sweep_args())
    strip = lambda r: {k: v for k, v in r.items() if k != "saes"}  # noqa: E731
    assert json.dumps(strip(got)) == json.dumps(strip(ref))
    assert (out / "sweep.json").read_text() == (tmp_path / "ref" / "sweep.json").read_text()


# ---- feature analysis ---------------------------------------------------------------------------

def _tables(out):
    import pyarrow.parquet as pq

    return {p.name: pq.read_table(p) for p in sorted(Path(out).glob("*.parquet"))}


def test_analysis_killed_then_resumed_counts_nothing_twice(store, sae_dirs, tmp_path):
    """Killed in the pass or while writing tables (after the state is saved): the resumed
    ``--append`` analysis equals an uninterrupted one; before it finishes, the folder is never
    readable as a finished analysis."""
    from mindscope.features import AnalysisConfig, FeatureSet, analyze

    out = tmp_path / "killed"
    n_batches = sum(-(-sh["rows"] // 64) for sh in store.shards)
    target = rng("analyze").randint(1, n_batches + 8)  # pass batches, then table writes
    kill_at("analyze", out, [sae_dirs["ours"], store.path], target)
    with pytest.raises((FileNotFoundError, BadInputError)):
        FeatureSet(out)
    analyze(sae_dirs["ours"], store, out=out, append=True, progress=False,
            cfg=AnalysisConfig(batch_rows=64))
    analyze(sae_dirs["ours"], store, out=tmp_path / "ref", progress=False,
            cfg=AnalysisConfig(batch_rows=64))
    a, b = _tables(out), _tables(tmp_path / "ref")
    assert a.keys() == b.keys() and "features.parquet" in a
    for k in a:
        assert a[k].equals(b[k]), k
    info = FeatureSet(out).info
    assert info["n_rows"] == store.n_tokens and len(info["sources"]) in (1, 2)
    assert sum(s["rows"] for s in info["sources"]) == store.n_tokens  # nothing counted twice


# ---- benchmark runs -----------------------------------------------------------------------------

def _records(res):
    drop = ("time", "gen_seconds")
    return [{k: v for k, v in r.items() if k not in drop} for r in res.records]


def test_benchmark_run_killed_then_resumed_equals_uninterrupted(tmp_path):
    from mindscope.evals import EvalConfig, StaticResponder, run_eval

    out = tmp_path / "killed"
    target = rng("eval").randint(1, 11)  # of 12 items
    kill_at("eval", out, [], target)
    items = _jobs.eval_items()
    resp = StaticResponder(_jobs.eval_responses(items))
    cfg = EvalConfig(batch_size=1, plot=False)
    got = run_eval(resp, items, "rule", out, config=cfg, progress=False)
    ref = run_eval(resp, items, "rule", tmp_path / "ref", config=cfg, progress=False)
    assert _records(got) == _records(ref) and got.metrics == ref.metrics
    assert 0 < got.provenance["resumed"]["already_graded"] < 12
    lines = (out / "items.jsonl").read_text().splitlines()
    assert len({json.loads(x)["id"] for x in lines}) == 12 and len(lines) == 12
