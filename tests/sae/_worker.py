"""Subprocess worker for the resume (SIGKILL) and data-parallel tests.

python _worker.py OUT [--sleep S] [--steps N]  (also runs under torch.distributed.run)"""
import argparse
import time

import torch

from mindscope.sae import (SAEConfig, TensorBatches, TrainConfig, Trainer, init_distributed,
                           shutdown_distributed)


class Slow(TensorBatches):
    sleep = 0.0

    def iter_from(self, step):
        for b in super().iter_from(step):
            time.sleep(self.sleep)
            yield b


def data(n_rows=4096, d=16, n_true=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(n_true, d, generator=g)
    codes = (torch.rand(n_rows, n_true, generator=g) < 0.08) * torch.rand(n_rows, n_true, generator=g) * 3
    return codes @ D + 0.05 * torch.randn(n_rows, d, generator=g)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--ckpt", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(1)
    init_distributed("cpu")
    src = Slow(data(), batch_size=64, seed=3)
    src.sleep = a.sleep
    specs = [(SAEConfig("topk", 16, 64, k=4), TrainConfig(steps=a.steps, dead_tokens=256, seed=1)),
             (SAEConfig("relu", 16, 32), TrainConfig(steps=a.steps, seed=2))]
    Trainer(specs, a.out, checkpoint_every=a.ckpt, progress=False, plots=False,
            device="cpu").fit(src)
    shutdown_distributed()
