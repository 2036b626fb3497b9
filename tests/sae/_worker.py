"""Subprocess worker for the resume (SIGKILL), data-parallel and rank-count-change tests.

python _worker.py OUT [--sleep S] [--steps N] [--ckpt C] [--stop-at S]
(also runs under torch.distributed.run; ``train`` is importable for in-process runs)"""
import argparse
import time

import torch

from mindscope.sae import (SAEConfig, TensorBatches, TrainConfig, Trainer, init_distributed,
                           shutdown_distributed)


class Slow(TensorBatches):
    sleep = 0.0
    stop = None
    """The stream ends before this global step (a run stopped part-way)."""

    def iter_from(self, step):
        for i, b in enumerate(super().iter_from(step), start=step):
            if self.stop is not None and i >= self.stop:
                return
            time.sleep(self.sleep)
            yield b


def data(n_rows=4096, d=16, n_true=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_true, d, generator=g)
    codes = (torch.rand(n_rows, n_true, generator=g) < 0.08) * torch.rand(n_rows, n_true, generator=g) * 3
    return codes @ D + 0.05 * torch.randn(n_rows, d, generator=g)


def train(out, steps=40, ckpt=1, sleep=0.0, stop=None):
    src = Slow(data(), batch_size=64, seed=3)
    src.sleep, src.stop = sleep, stop
    specs = [(SAEConfig("topk", 16, 64, k=4), TrainConfig(steps=steps, dead_tokens=256, seed=1)),
             (SAEConfig("relu", 16, 32), TrainConfig(steps=steps, seed=2))]
    return Trainer(specs, out, checkpoint_every=ckpt, progress=False, plots=False,
                   device="cpu").fit(src)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ckpt", type=int, default=1)
    ap.add_argument("--stop-at", type=int, default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    init_distributed("cpu")
    train(a.out, a.steps, a.ckpt, a.sleep, a.stop_at)
    shutdown_distributed()
