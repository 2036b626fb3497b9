"""BatchTopK SAE (Bussmann et al. 2024): the k*B largest codes of a batch during training; at
inference a fixed threshold (running mean of the batch minimum), i.e. a JumpReLU."""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from . import register
from ._base import Arch, TrainState


@register
class BatchTopK(Arch):
    name = "batchtopk"
    doc = "top k*B codes per batch in training, z * [z > theta] at inference; AuxK; unit-norm decoder"
    uses_k = True
    unit_norm_decoder = True
    b_dec_in = True
    aux_k = True
    saelens = "jumprelu"          # inference is a JumpReLU with the learned threshold
    saelens_reads = ()

    def encoder_init_norm(self, cfg):
        return 1 / math.sqrt(3)

    def tensors(self, cfg):
        return {"threshold": ((cfg.n_latents,), False)}

    def init_tensors(self, sae, dtype):
        sae.register_buffer("threshold", torch.zeros(sae.cfg.n_latents, dtype=dtype))

    def threshold(self, sae):
        return sae.threshold

    def set_threshold(self, sae, theta):
        with torch.no_grad():
            sae.threshold.copy_(theta)

    def encode(self, sae, z):
        return z * (z > sae.threshold)

    def batch_codes(self, z: torch.Tensor, k: int):
        """(f (B, n), batch_min or None): the k*B largest relu'd codes of the batch."""
        zr = z.relu()
        flat_v, flat_i = zr.reshape(-1).topk(k * z.shape[0], sorted=False)
        f = torch.zeros_like(zr).reshape(-1).scatter(0, flat_i, flat_v).reshape_as(zr)
        pos = flat_v > 0
        return f, (flat_v[pos].min().detach() if bool(pos.any()) else None)

    def codes(self, sae, x_in, *, dead_idx=None, k_aux=0, fast=True, bf16=False):
        z = x_in @ sae.W_enc.T + sae.b_enc                                      # (B, n)
        f, batch_min = self.batch_codes(z, sae.cfg.k)
        active = f > 0
        aux_rec = None
        if dead_idx is not None and dead_idx.numel() > 0 and k_aux > 0:
            av, al = z[:, dead_idx].topk(min(k_aux, dead_idx.numel()), dim=-1, sorted=False)
            aux_rec = torch.zeros_like(z).scatter(1, dead_idx[al], av) @ sae.W_dec
        return {"z": z, "f": f, "y_hat": f @ sae.W_dec + sae.b_dec, "fired": active.any(0),
                "l0": active.sum(-1).float().mean(), "aux_rec": aux_rec, "batch_min": batch_min}

    @torch.no_grad()
    def after_step(self, sae, out, state: TrainState, world):
        if out.get("batch_min") is None:
            return
        bm = out["batch_min"].reshape(1).clone()
        if world > 1:
            dist.all_reduce(bm, op=dist.ReduceOp.MIN)
        theta = state.values.get("theta")
        theta = float(bm) if theta is None else 0.99 * theta + 0.01 * float(bm)
        state.values["theta"] = theta
        sae.threshold.fill_(theta)
