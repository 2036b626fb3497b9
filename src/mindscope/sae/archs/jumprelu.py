"""JumpReLU SAE (Rajamanoharan et al. 2024): z * [z > theta], L0 through a straight-through step."""
from __future__ import annotations

import torch
from torch import nn

from .._kernels import jumprelu, step
from . import register
from ._base import Arch


@register
class JumpReLU(Arch):
    name = "jumprelu"
    doc = "z * [z > theta] with learned theta; L0 penalty via straight-through (TrainConfig.l0_coef)"
    sparsity = "l0_coef"
    saelens = "jumprelu"
    saelens_reads = ("jumprelu",)

    def default_lr(self, cfg) -> float:
        return 7e-5

    def tensors(self, cfg):
        return {"log_threshold": ((cfg.n_latents,), True)}

    def init_tensors(self, sae, dtype):
        c = sae.cfg
        sae.log_threshold = nn.Parameter(torch.full((c.n_latents,),
                                                    float(torch.tensor(c.threshold_init).log()),
                                                    dtype=dtype))

    def threshold(self, sae):
        return sae.log_threshold.exp()

    def set_threshold(self, sae, theta):
        with torch.no_grad():
            sae.log_threshold.copy_(theta.clamp_min(1e-30).log())

    def encode(self, sae, z):
        return z * (z > self.threshold(sae))

    def train_encode(self, sae, z):
        return jumprelu(z, sae.log_threshold, sae.cfg.bandwidth)

    def penalty(self, sae, out):
        # lambda * mean_b sum_i H(z_bi - theta_i)
        return step(out["z"], sae.log_threshold, sae.cfg.bandwidth).sum(-1).mean()
