"""The ``SAE`` module: encode / decode / forward for relu, topk, batchtopk and jumprelu
autoencoders and transcoders, plus the folder format ``cfg.json`` + ``sae.safetensors``.

Inputs and outputs of ``encode``/``decode``/``forward`` are in the model's raw units; inside,
inputs are scaled by ``cfg.scale_in`` (targets by ``cfg.scale_out``):

    z = (s_in x - b_dec [if b_dec_in]) W_enc^T + b_enc            (..., n)  pre-activations
    f = relu(z) | topk(z, k) | z * [z > theta] (jumprelu, batchtopk at inference)
    x_hat = (f W_dec + b_dec) / s_out                                (..., d_out)

>>> import torch
>>> sae = SAE(SAEConfig(arch="topk", d_in=8, n_latents=32, k=4))
>>> x = torch.randn(5, 8)
>>> f = sae.encode(x); f.shape, int((f != 0).sum(-1).max()) <= 4
(torch.Size([5, 32]), True)
>>> torch.allclose(sae(x), sae.decode(f), atol=1e-6)
True
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..core import atomic_save_tensors, atomic_write_json
from ._checked import KEY_PREFIX, PathLike, read_ours
from ._config import SAEConfig
from ._kernels import sparse_decode, topk_encode

log = logging.getLogger(__name__)


class SAE(nn.Module):
    """Sparse autoencoder (or transcoder when ``cfg.d_out``/``cfg.out_site`` differ)."""

    def __init__(self, cfg: SAEConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        n, d, d_out = cfg.n_latents, cfg.d_in, cfg.out_dim
        self.W_enc = nn.Parameter(torch.zeros(n, d, dtype=dtype))            # (n, d_in) rows = latents
        self.b_enc = nn.Parameter(torch.zeros(n, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(n, d_out, dtype=dtype))        # (n, d_out)
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype))
        cfg.spec.init_tensors(self, dtype)                                 # e.g. thresholds

    # ---- inference (raw units) -------------------------------------------------------------
    @property
    def spec(self):
        """The architecture's registry object (``mindscope.sae.archs``)."""
        return self.cfg.spec

    @property
    def threshold_vec(self) -> Optional[torch.Tensor]:
        """Per-latent inference threshold (n,) for threshold architectures, else None."""
        return self.spec.threshold(self)

    def _scaled_in(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.device, self.W_enc.dtype) * self.cfg.scale_in
        return x - self.b_dec if self.cfg.b_dec_in else x

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activations z (..., n) of raw inputs x (..., d_in)."""
        return self._scaled_in(x) @ self.W_enc.T + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Dense codes f (..., n) of raw inputs x (..., d_in)."""
        return self.spec.encode(self, self.pre_acts(x))

    def encode_sparse(self, x: torch.Tensor):
        """TopK only: (vals (..., k), idx (..., k)) without a dense code matrix."""
        if not self.spec.sparse_path:
            raise ValueError(f"encode_sparse needs arch='topk', this SAE is {self.cfg.arch!r}; "
                             "use encode()")
        shape = x.shape[:-1]
        v, i, _, _ = topk_encode(self._scaled_in(x.reshape(-1, x.shape[-1])), self.W_enc,
                                 self.b_enc, self.cfg.k)
        return v.reshape(*shape, -1), i.reshape(*shape, -1)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Raw-unit reconstruction (..., d_out) of dense codes f (..., n)."""
        return (f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.cfg.scale_out

    def decode_sparse(self, vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        shape = vals.shape[:-1]
        out = sparse_decode(vals.reshape(-1, vals.shape[-1]), idx.reshape(-1, idx.shape[-1]), self.W_dec)
        return ((out + self.b_dec) / self.cfg.scale_out).reshape(*shape, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if self.spec.sparse_path:
            return self.decode_sparse(*self.encode_sparse(x)).to(dtype)
        return self.decode(self.encode(x)).to(dtype)

    # ---- training (scaled units) -------------------------------------------------------------
    def training_terms(self, x: torch.Tensor, y: torch.Tensor, *, sparsity_coef: float = 0.0,
                       dead_idx: Optional[torch.Tensor] = None, k_aux: int = 0,
                       aux_coef: float = 0.0, fast: bool = True, bf16: bool = False) -> dict:
        """Loss terms for scaled inputs x (B, d_in) and scaled targets y (B, d_out).

        mse = mean_b ||y_b - y_hat_b||^2 (sum over d), then the architecture's terms (its file in
        ``archs/``): + lambda * penalty (relu: mean_b sum_i f_bi ||W_dec,i||; jumprelu:
        mean_b sum_i H(z_bi - theta_i) through the STE) + extra_loss (e.g. Matryoshka prefixes)
        + aux_coef * mean_b ||e_b - e_hat_b||^2 (AuxK: top-k_aux dead latents reconstruct the
        detached residual e = y - y_hat; topk/batchtopk).
        Returns dict(loss, mse, l0 (mean active per row), fired (n,) bool, aux, ...)."""
        cfg, spec = self.cfg, self.spec
        x_in = x - self.b_dec if cfg.b_dec_in else x
        out = spec.codes(self, x_in, dead_idx=dead_idx, k_aux=k_aux, fast=fast, bf16=bf16)
        err = y - out["y_hat"]
        mse = err.pow(2).sum(-1).mean()
        loss = mse
        res = {k: v for k, v in out.items() if k not in ("y_hat", "aux_rec", "z", "f")}
        res.update(mse=mse.detach(), l0=out["l0"].detach(), aux=torch.zeros(()))
        pen = spec.penalty(self, out)
        if pen is not None:
            loss = loss + sparsity_coef * pen
            res["sparsity"] = pen.detach()
        extra = spec.extra_loss(self, y, out)
        if extra is not None:
            loss = loss + extra
            res["extra"] = extra.detach()
        aux_rec = out.get("aux_rec")
        if aux_rec is not None and aux_coef > 0:
            n_dead = dead_idx.numel()
            scale = min(n_dead / k_aux, 1.0)
            aux = (aux_rec - err.detach()).pow(2).sum(-1).mean()
            loss = loss + aux_coef * scale * aux
            res["aux"] = aux.detach()
        res["loss"] = loss
        return res

    # ---- folder format -------------------------------------------------------------------------
    def save(self, path: PathLike) -> Path:
        """Write ``cfg.json`` + ``sae.safetensors`` into folder ``path`` (atomically, each file)."""
        path = Path(path)
        # prefixed names: peers that read bare W_enc/W_dec/b_enc/b_dec (circuit-tracer's ReLU
        # loader) must not silently accept this file and drop TopK, the scales and b_dec
        tensors = {KEY_PREFIX + k: v for k, v in self.state_dict().items()}
        atomic_save_tensors(path / "sae.safetensors", tensors, metadata={"format": "mindscope-sae"})
        atomic_write_json(path / "cfg.json", {"format": "mindscope-sae", **self.cfg.to_dict()})
        return path

    @classmethod
    def load(cls, path: PathLike, device: str = "cpu") -> "SAE":
        """Load a folder written by ``save``, or a registered name (``mindscope sae list``); for
        SAELens / sparsify folders use ``load_any``.
        Every field and tensor is checked first (``load_ours``): BadInputError naming the file
        for anything wrong."""
        from ._registry import resolve_sae

        path = resolve_sae(path)  # a folder, or a name in the local registry (sae list)
        if not (path / "cfg.json").exists() or not (path / "sae.safetensors").exists():
            raise FileNotFoundError(f"{path} is not a mindscope SAE folder (needs cfg.json and "
                                    "sae.safetensors); for SAELens/sparsify folders use load_any()")
        cfg, sd = read_ours(path)
        return cls.from_checked(cfg, sd, device)

    @classmethod
    def from_checked(cls, cfg: SAEConfig, sd: dict, device: str = "cpu") -> "SAE":
        """An SAE from a config and tensors already checked (``_checked.read_ours``)."""
        sae = cls(cfg, dtype=sd["W_enc"].dtype)
        sae.load_state_dict(sd)
        return sae.to(device)

    def _repr_html_(self) -> str:
        from html import escape

        c = self.cfg
        rows = "".join(f"<tr><td>{k}</td><td>{escape(str(v))}</td></tr>" for k, v in (
            ("architecture", c.arch), ("model", c.model), ("site", c.site), ("d_in", c.d_in),
            ("latents", c.n_latents), ("k", c.k if c.spec.uses_k else "-"),
            ("d_out", c.out_dim)))
        return f"<div><b>SAE</b><table>{rows}</table></div>"

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"arch={c.arch}, d_in={c.d_in}, n_latents={c.n_latents}, d_out={c.out_dim}, "
                f"k={c.k}, site={c.site!r}")
