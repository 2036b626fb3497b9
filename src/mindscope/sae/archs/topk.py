"""TopK SAE (OpenAI / sparsify): keep the k largest pre-activations per row, AuxK on dead latents."""
from __future__ import annotations

import math

import torch

from .._kernels import sparse_decode, topk_encode
from . import register
from ._base import Arch


@register
class TopK(Arch):
    name = "topk"
    doc = "top-k of z per row (relu'd); AuxK loss on dead latents; unit-norm decoder"
    uses_k = True
    unit_norm_decoder = True
    b_dec_in = True
    aux_k = True
    saelens = "topk"
    saelens_reads = ("topk",)
    sparsify = True
    sparse_path = True

    def encoder_init_norm(self, cfg):
        return 1 / math.sqrt(3)

    def encode(self, sae, z):
        v, i = z.topk(sae.cfg.k, dim=-1, sorted=False)
        return torch.zeros_like(z).scatter(-1, i, v.relu())

    def autocast_ok(self, tc):
        return not tc.fast          # the sparse kernels handle bf16 themselves

    def codes(self, sae, x_in, *, dead_idx=None, k_aux=0, fast=True, bf16=False):
        k, aux_rec = sae.cfg.k, None
        if fast:
            vals, idx, av, ai = topk_encode(x_in, sae.W_enc, sae.b_enc, k, dead_idx, k_aux, bf16)
            y_hat = sparse_decode(vals, idx, sae.W_dec) + sae.b_dec
            if ai.shape[1] > 0:
                aux_rec = sparse_decode(av, ai, sae.W_dec)
        else:
            z = x_in @ sae.W_enc.T + sae.b_enc                                  # (B, n)
            vals, idx = z.topk(k, dim=-1, sorted=False)
            vals = vals.relu()
            y_hat = torch.zeros_like(z).scatter(1, idx, vals) @ sae.W_dec + sae.b_dec
            if dead_idx is not None and dead_idx.numel() > 0 and k_aux > 0:
                av, al = z[:, dead_idx].topk(min(k_aux, dead_idx.numel()), dim=-1, sorted=False)
                aux_rec = torch.zeros_like(z).scatter(1, dead_idx[al], av) @ sae.W_dec
        fired = torch.zeros(sae.cfg.n_latents, dtype=torch.bool, device=x_in.device)
        fired[idx[vals > 0]] = True
        return {"y_hat": y_hat, "fired": fired, "l0": (vals > 0).sum(-1).float().mean(),
                "aux_rec": aux_rec}
