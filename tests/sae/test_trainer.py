"""Trainer: learning on synthetic sparse data, fast == dense path, schedules, one stream for many
SAEs, SIGKILL + resume bit-for-bit, and 2-process data parallel == single process."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mindscope.sae import (SAE, SAEConfig, TensorBatches, TrainConfig, Trainer, evaluate, lr_at,
                           sparsity_at)

sys.path.insert(0, str(Path(__file__).parent))
from _worker import data  # noqa: E402

WORKER = str(Path(__file__).parent / "_worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[2] / "src")}


@pytest.mark.parametrize("arch,kw,tkw", [
    ("topk", dict(k=4), {}),
    ("batchtopk", dict(k=4), {}),
    ("relu", {}, dict(l1_coef=0.5, lr=3e-3)),
    ("jumprelu", dict(bandwidth=0.1, threshold_init=0.5), dict(l0_coef=0.05, lr=3e-3)),
])
def test_each_arch_learns_sparse_data(arch, kw, tkw):
    x = data(n_rows=6144)
    train, held = x[:5120], x[5120:]
    tc = TrainConfig(steps=240, **{"lr": 4e-3, **tkw})
    [sae] = Trainer([(SAEConfig(arch, 16, 64, **kw), tc)], progress=False).fit(TensorBatches(train, 128))
    m = evaluate(sae, [held])
    assert m["fvu"] < 0.35, m["fvu"]
    assert m["l0"] < 40
    if arch == "batchtopk":
        assert sae.threshold.min() > 0 and 1 < m["l0"] < 12     # inference threshold ~ k per row
    assert sae.cfg.meta["tokens"] == 240 * 128


def test_fast_topk_path_equals_dense_path():
    x = data(n_rows=2048)
    out = []
    for fast in (True, False):
        tc = TrainConfig(steps=20, fast=fast, dead_tokens=256, lr=1e-3)
        [sae] = Trainer([(SAEConfig("topk", 16, 64, k=4), tc)], progress=False).fit(TensorBatches(x, 64))
        out.append(sae.state_dict())
    for k in out[0]:
        assert torch.allclose(out[0][k], out[1][k], atol=2e-5), k


def test_many_saes_from_one_stream_equal_separate_runs():
    x = data(n_rows=1024)
    specs = [(SAEConfig("topk", 16, 64, k=4), TrainConfig(steps=12, seed=1)),
             (SAEConfig("relu", 16, 32), TrainConfig(steps=7, seed=2))]
    both = Trainer(specs, progress=False).fit(TensorBatches(x, 64))
    for (c, t), sae in zip(specs, both):
        [alone] = Trainer([(c, t)], progress=False).fit(TensorBatches(x, 64))
        for k, v in alone.state_dict().items():
            assert torch.equal(v, sae.state_dict()[k]), k
    assert both[1].cfg.meta["tokens"] == 7 * 64 and both[0].cfg.meta["tokens"] == 12 * 64


def test_schedules():
    tc = TrainConfig(steps=100, lr_warmup=0.1, lr_decay=0.2, sparsity_warmup=0.05)
    assert lr_at(0, tc, 1.0) == pytest.approx(0.1) and lr_at(9, tc, 1.0) == 1.0
    assert lr_at(50, tc, 1.0) == 1.0 and lr_at(80, tc, 1.0) == 1.0
    assert lr_at(90, tc, 1.0) == pytest.approx(0.5) and lr_at(99, tc, 1.0) == pytest.approx(0.05)
    assert sparsity_at(0, tc, 5.0) == 0.0 and sparsity_at(2, tc, 5.0) == pytest.approx(2.0)
    assert sparsity_at(50, tc, 5.0) == 5.0


def test_init_scale_bias_and_outlier_exclusion():
    x = data(n_rows=512) + 3.0
    x[0] *= 500.0                                            # a BOS-like outlier row
    tr = Trainer([(SAEConfig("topk", 16, 64, k=4), TrainConfig(steps=1, lr=1e-12))], progress=False)
    [sae] = tr.fit(iter([x]))
    clean = x[1:]
    s = (16 / clean.pow(2).sum(-1).mean()) ** 0.5
    assert sae.cfg.scale_in == pytest.approx(float(s), rel=1e-5)   # outlier did not set the scale
    assert torch.allclose(sae.b_dec, clean.mean(0) * s, atol=1e-3)
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(64), atol=1e-5)
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)


@pytest.mark.parametrize("arch,kw,tkw,want", [
    ("topk", dict(k=4), {}, 3 ** -0.5),                       # nn.Linear-like default
    ("topk", dict(k=4), dict(encoder_init_norm=1.0), 1.0),
    ("relu", {}, dict(decoder_init_norm=0.1), 0.1),           # tied to the decoder
    ("jumprelu", {}, dict(encoder_init_norm=0.3), 0.3),
])
def test_encoder_init_norm(arch, kw, tkw, want):
    x = data(n_rows=256)
    tr = Trainer([(SAEConfig(arch, 16, 64, **kw), TrainConfig(steps=1, lr=1e-12, **tkw))],
                 progress=False)
    [sae] = tr.fit(iter([x]))
    assert torch.allclose(sae.W_enc.norm(dim=1), torch.full((64,), want), rtol=1e-4)
    # same directions as the decoder (tied init), only the scale differs
    cos = torch.nn.functional.cosine_similarity(sae.W_enc, sae.W_dec, dim=1)
    assert torch.allclose(cos, torch.ones(64), atol=1e-4)
    with pytest.raises(ValueError, match="encoder_init_norm"):
        TrainConfig(steps=1, encoder_init_norm=0.0)


def test_transcoder_learns_a_map():
    g = torch.Generator().manual_seed(0)
    x = data(n_rows=4096)
    A = torch.randn(16, 12, generator=g) / 4
    y = torch.relu(x) @ A
    cfg = SAEConfig("topk", 16, 64, k=8, d_out=12, site="resid_mid.0", out_site="mlp_out.0")
    [tc] = Trainer([(cfg, TrainConfig(steps=200, lr=4e-3))], progress=False).fit(
        TensorBatches((x[:3584], y[:3584]), 128))
    assert tc.cfg.transcoder and not tc.cfg.b_dec_in
    m = evaluate(tc, [(x[3584:], y[3584:])])
    assert m["fvu"] < 0.5, m["fvu"]


def _final(out):
    return {f"{d.name}/{k}": v for d in sorted(Path(out).iterdir()) if d.is_dir()
            for k, v in load_file(str(d / "sae.safetensors")).items()}


def test_sigkill_then_resume_is_bit_for_bit(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run([sys.executable, WORKER, str(ref)], check=True, env=ENV, timeout=120)
    p = subprocess.Popen([sys.executable, WORKER, str(run), "--sleep", "0.15"], env=ENV)
    ck = run / "checkpoint.safetensors"
    deadline = time.time() + 90
    step = 0
    while time.time() < deadline and step < 6:
        time.sleep(0.1)
        if ck.exists():
            try:
                with safe_open(str(ck), "pt") as f:
                    import json
                    step = json.loads(f.metadata()["trainer"])["step"]
            except Exception:
                pass
    assert p.poll() is None, "worker finished before it could be killed"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert 6 <= step < 40                                     # killed mid-run, after checkpoints
    assert not any(d.is_dir() for d in run.iterdir())          # no final SAE folders yet
    subprocess.run([sys.executable, WORKER, str(run)], check=True, env=ENV, timeout=120)
    a, b = _final(ref), _final(run)
    assert a.keys() == b.keys() and len(a) >= 8
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_two_process_data_parallel_matches_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run([sys.executable, WORKER, str(single), "--steps", "15", "--ckpt", "0"],
                   check=True, env=ENV, timeout=120)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", WORKER, str(ddp), "--steps", "15", "--ckpt", "0"],
                   check=True, env=ENV, timeout=180)
    a, b = _final(single), _final(ddp)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-4, rtol=1e-4), (k, (a[k] - b[k]).abs().max())


def _torchrun(*args):
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    "--nproc_per_node", "2", WORKER, *map(str, args)],
                   check=True, env=ENV, timeout=300)


def test_checkpoint_resumes_on_another_number_of_ranks(tmp_path):
    """2 ranks stop at step 5, 1 rank finishes; 1 rank stops at 5, 2 ranks finish: both equal
    one uninterrupted single-process run (the checkpoint holds no per-rank state, and each rank
    reads its rows of the same global batches)."""
    from _worker import train

    ref, a, b = tmp_path / "ref", tmp_path / "a", tmp_path / "b"
    train(ref, steps=12, ckpt=0)
    _torchrun(a, "--steps", 12, "--ckpt", 0, "--stop-at", 5)        # 2 ranks, stopped part-way
    with safe_open(str(a / "checkpoint.safetensors"), "pt") as f:
        import json
        assert json.loads(f.metadata()["trainer"])["step"] == 5
    train(a, steps=12, ckpt=0)                                       # ... resumed on 1 rank
    train(b, steps=12, ckpt=0, stop=5)                               # 1 rank, stopped part-way
    _torchrun(b, "--steps", 12, "--ckpt", 0)                         # ... resumed on 2 ranks
    r = _final(ref)
    for run in (a, b):
        got = _final(run)
        assert got.keys() == r.keys() and len(r) >= 8
        for k in r:
            assert torch.allclose(got[k], r[k], atol=2e-4, rtol=1e-4), (run.name, k,
                                                                         (got[k] - r[k]).abs().max())
