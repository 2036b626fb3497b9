"""Configs for sparse autoencoders / transcoders (``SAEConfig``) and their training (``TrainConfig``).

>>> cfg = SAEConfig(arch="topk", d_in=8, n_latents=32, k=4)
>>> cfg.transcoder, cfg.b_dec_in
(False, True)
>>> SAEConfig.from_dict(cfg.to_dict()) == cfg
True
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from . import archs

ARCHS = archs.names()


@dataclass
class SAEConfig:
    arch: str
    """Architecture, a name in the registry ``mindscope.sae.archs`` (relu, topk, batchtopk,
    jumprelu, ...)."""
    d_in: int
    """Width of the input site (d_model for the residual stream)."""
    n_latents: int
    """Number of latents (dictionary size)."""
    k: int = 32
    """Active latents per row for topk (per row on average for batchtopk); architectures with
    ``uses_k``."""
    d_out: Optional[int] = None
    """Width of the predicted site; None = d_in (an autoencoder). Set for transcoders."""
    model: str = ""
    """Name of the model the activations came from."""
    site: str = ""
    """Site read by the encoder, e.g. resid_post.15."""
    out_site: Optional[str] = None
    """Site the decoder predicts (transcoders only); None = same as site."""
    scale_in: float = 1.0
    """Inputs are multiplied by this constant before encoding (chosen so E||s x||^2 = d_in)."""
    scale_out: float = 1.0
    """Targets are multiplied by this constant; decode() divides by it to return raw units."""
    apply_b_dec_to_input: Optional[bool] = None
    """Encode (s x - b_dec) instead of s x. None = the architecture's default for autoencoders
    (True for topk/batchtopk)."""
    threshold_init: float = 0.001
    """jumprelu: initial threshold (in scaled units)."""
    bandwidth: float = 0.001
    """jumprelu: width of the straight-through rectangle kernel."""
    excluded_rows: str = ""
    """Which rows were excluded from training/eval data (e.g. 'norm > 10x batch median')."""
    arch_params: dict = field(default_factory=dict)
    """Architecture-specific settings, checked by the architecture (e.g. matryoshka:
    {"widths": [n/16, ..., n]})."""
    meta: dict = field(default_factory=dict)
    """Free-form provenance (tokens trained, data hash, source format, ...)."""

    def __post_init__(self):
        if self.arch not in archs.names():
            raise ValueError(f"SAEConfig.arch={self.arch!r} is not one of {archs.names()}")
        if self.d_in <= 0 or self.n_latents <= 0:
            raise ValueError(f"SAEConfig needs d_in > 0 and n_latents > 0, got d_in={self.d_in}, "
                             f"n_latents={self.n_latents}")
        self.spec.validate(self)
        if self.scale_in <= 0 or self.scale_out <= 0:
            raise ValueError("SAEConfig.scale_in/scale_out must be positive")
        if self.apply_b_dec_to_input and self.transcoder:
            raise ValueError("apply_b_dec_to_input=True makes no sense for a transcoder (the "
                             "decoder bias lives in the output space); leave it None")

    @property
    def spec(self) -> "archs.Arch":
        """The registry object of ``arch``."""
        return archs.get(self.arch)

    @property
    def transcoder(self) -> bool:
        return self.out_site is not None or (self.d_out is not None and self.d_out != self.d_in)

    @property
    def out_dim(self) -> int:
        return self.d_out if self.d_out is not None else self.d_in

    @property
    def b_dec_in(self) -> bool:
        if self.apply_b_dec_to_input is not None:
            return bool(self.apply_b_dec_to_input)
        return self.spec.b_dec_in and not self.transcoder

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SAEConfig fields {sorted(unknown)}; known: {sorted(names)}")
        return cls(**d)


@dataclass
class TrainConfig:
    steps: int
    """Optimizer steps (one batch each). Schedules (warm-up, decay) are fractions of this."""
    lr: Optional[float] = None
    """Adam learning rate. None = 2e-4 / sqrt(n_latents / 2^14) for topk/batchtopk
    (OpenAI/sparsify scaling), 5e-5 for relu (April-2024 update), 7e-5 for jumprelu."""
    l1_coef: float = 5.0
    """relu: lambda of the decoder-norm-weighted L1 penalty (April-2024 recipe uses ~5)."""
    l0_coef: float = 1e-3
    """jumprelu: lambda of the L0 penalty (per latent fired per row)."""
    sparsity_warmup: float = 0.05
    """Fraction of steps over which lambda rises linearly from 0 (relu, jumprelu)."""
    lr_warmup: float = 0.0
    """Fraction of steps of linear LR warm-up."""
    lr_decay: float = 0.2
    """LR decays linearly to 0 over this last fraction of steps."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = off)."""
    betas: tuple = (0.9, 0.999)
    """Adam betas."""
    aux_coef: float = 1 / 32
    """topk/batchtopk: weight of the AuxK loss on dead latents (0 = off)."""
    k_aux: Optional[int] = None
    """Dead latents used by AuxK per row; None = d_in // 2."""
    dead_tokens: int = 10_000_000
    """A latent that has not fired for this many tokens counts as dead."""
    init_b_dec: str = "mean"
    """Decoder-bias init from the first batch: mean, geometric_median or zeros."""
    normalize: bool = True
    """Estimate scale_in/scale_out from the first batch so that E||s x||^2 = d."""
    unit_norm_decoder: Optional[bool] = None
    """Keep decoder rows at unit norm. None = True for topk/batchtopk, False otherwise."""
    decoder_init_norm: float = 0.1
    """relu/jumprelu: initial decoder row norm (April-2024 recipe)."""
    encoder_init_norm: Optional[float] = None
    """Initial encoder row norm. None = 1/sqrt(3) for topk/batchtopk (the row norm of a default
    ``nn.Linear`` init, as sparsify uses: held-out FVU 0.575 vs 0.652 for a tied unit-norm
    encoder after 2^19 tokens at 9,216 latents), the decoder's row norm (tied transpose, the
    April-2024 recipe) for relu/jumprelu."""
    outlier_factor: Optional[float] = 10.0
    """Drop rows whose norm exceeds this multiple of the batch median (BOS-like outliers). None = keep."""
    fast: bool = True
    """topk: use the sparse autograd kernels (same math as the dense path)."""
    bf16: Optional[bool] = None
    """Run the encoder matmul in bfloat16 (autocast; weights, grads and Adam stay fp32).
    None = on for CUDA, off on CPU (the device policy, docs/gpu.md)."""
    seed: int = 0
    """Seed of the weight initialisation."""
    name: str = ""
    """Folder name of this SAE inside the run; empty = derived from the config."""

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"TrainConfig.steps must be positive, got {self.steps}")
        if self.init_b_dec not in ("mean", "geometric_median", "zeros"):
            raise ValueError(f"TrainConfig.init_b_dec={self.init_b_dec!r}: use mean, "
                             "geometric_median or zeros")
        for f in ("sparsity_warmup", "lr_warmup", "lr_decay"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"TrainConfig.{f} must be a fraction in [0, 1]")
        if self.lr_warmup + self.lr_decay > 1.0:
            raise ValueError("TrainConfig.lr_warmup + lr_decay exceed 1 (they would overlap)")
        if self.lr is not None and self.lr <= 0:
            raise ValueError("TrainConfig.lr must be positive")
        if self.encoder_init_norm is not None and not self.encoder_init_norm > 0:
            raise ValueError("TrainConfig.encoder_init_norm must be positive (or None for the "
                             "architecture's default)")
        self.betas = tuple(self.betas)

    def resolved_lr(self, cfg: SAEConfig) -> float:
        if self.lr is not None:
            return self.lr
        return cfg.spec.default_lr(cfg)

    def resolved_encoder_norm(self, cfg: SAEConfig) -> Optional[float]:
        """The initial encoder row norm, or None for "same as the decoder"."""
        if self.encoder_init_norm is not None:
            return self.encoder_init_norm
        return cfg.spec.encoder_init_norm(cfg)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        return cls(**d)
