"""torchrun worker for tests/gpu: NCCL harvest + SAE training, one GPU per rank."""
import sys
from pathlib import Path

import mindscope as ms
from mindscope.activations import harvest
from mindscope.core import init_distributed, shutdown_distributed
from mindscope.sae import SAEConfig, StoreBatches, TrainConfig, Trainer

out, model, corpus = map(Path, sys.argv[1:4])
rank, world, dev = init_distributed("cuda")
assert dev.index == rank
lm = ms.load(str(model), device=dev)
st = harvest(lm, out / "store", sites="resid_post.1", corpus=corpus, n_tokens=8 * 32,
             window=32, shard_tokens=64, progress=False)
Trainer([(SAEConfig("topk", lm.d_model, 64, k=4), TrainConfig(steps=6))], out / "sae",
        checkpoint_every=3, progress=False, device=dev).fit(StoreBatches(st, 64, split="all"))
shutdown_distributed()
