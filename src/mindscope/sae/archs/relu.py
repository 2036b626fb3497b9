"""ReLU SAE with the April-2024 recipe: L1 on decoder-norm-weighted codes (Anthropic)."""
from __future__ import annotations

from . import register
from ._base import Arch


@register
class ReLU(Arch):
    name = "relu"
    doc = "relu(z); L1 penalty on f_i ||W_dec,i|| (TrainConfig.l1_coef)"
    sparsity = "l1_coef"
    saelens = "standard"
    saelens_reads = ("standard",)

    def default_lr(self, cfg) -> float:
        return 5e-5

    def encode(self, sae, z):
        return z.relu()

    def penalty(self, sae, out):
        # lambda * mean_b sum_i f_bi ||W_dec,i||
        return (out["f"] * sae.W_dec.norm(dim=1)).sum(-1).mean()
