"""The ``Arch`` base class: what every SAE architecture defines (see ``archs/__init__``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class TrainState:
    """Per-SAE state an architecture keeps across training steps (e.g. a running threshold)."""
    values: dict = field(default_factory=dict)


class Arch:
    """One SAE architecture. Methods take the ``SAE`` module (duck-typed: ``cfg``, ``W_enc``,
    ``b_enc``, ``W_dec``, ``b_dec`` and the extra tensors of ``tensors``) so this package never
    imports ``_sae``."""

    name: str = ""
    doc: str = ""
    """One line for --help and docs."""
    uses_k: bool = False
    """``cfg.k`` is the number of active latents per row (validated 1..n_latents)."""
    unit_norm_decoder: bool = False
    """Default of TrainConfig.unit_norm_decoder."""
    b_dec_in: bool = False
    """Default of SAEConfig.apply_b_dec_to_input for autoencoders."""
    sparsity: Optional[str] = None
    """TrainConfig field holding this architecture's sparsity lambda, or None."""
    aux_k: bool = False
    """Trains an AuxK loss on dead latents (TrainConfig.aux_coef)."""
    saelens: str = ""
    """SAELens ``architecture`` written on export ('' = cannot be exported)."""
    saelens_reads: tuple = ()
    """SAELens ``architecture`` strings imported as this architecture."""
    sparsify: bool = False
    """Exportable as a sparsify TopK SAE."""
    sparse_path: bool = False
    """Has (vals, idx) sparse encode/decode (``SAE.encode_sparse``), used by forward()."""

    # ---- defaults ----------------------------------------------------------------------------
    def default_lr(self, cfg) -> float:
        """Adam LR when TrainConfig.lr is None."""
        return 2e-4 / math.sqrt(cfg.n_latents / 2 ** 14)

    def encoder_init_norm(self, cfg) -> Optional[float]:
        """Initial encoder row norm; None = the decoder's (tied transpose)."""
        return None

    def run_name(self, cfg) -> str:
        """The part of a trained SAE's folder name after ``NN_``."""
        return f"{self.name}_n{cfg.n_latents}" + (f"_k{cfg.k}" if self.uses_k else "")

    def validate(self, cfg) -> None:
        """Raise ValueError for a config this architecture cannot use."""
        if self.uses_k and not 0 < cfg.k <= cfg.n_latents:
            raise ValueError(f"SAEConfig.k={cfg.k} must be in 1..n_latents={cfg.n_latents}")

    # ---- tensors -----------------------------------------------------------------------------
    def tensors(self, cfg) -> dict:
        """Extra tensors beyond W_enc/b_enc/W_dec/b_dec: name -> (shape, is_parameter)."""
        return {}

    def init_tensors(self, sae, dtype) -> None:
        """Register the extra tensors of ``tensors`` on ``sae``."""

    def threshold(self, sae) -> Optional[torch.Tensor]:
        """Per-latent inference threshold theta (n,), or None."""
        return None

    def set_threshold(self, sae, theta: torch.Tensor) -> None:
        raise ValueError(f"a {self.name} SAE has no threshold")

    # ---- inference ---------------------------------------------------------------------------
    def encode(self, sae, z: torch.Tensor) -> torch.Tensor:
        """Dense codes f (..., n) from pre-activations z (..., n)."""
        raise NotImplementedError

    # ---- training (scaled units) ---------------------------------------------------------------
    def codes(self, sae, x_in: torch.Tensor, *, dead_idx=None, k_aux: int = 0, fast: bool = True,
              bf16: bool = False) -> dict:
        """Training forward for centred inputs x_in (B, d_in): dict with y_hat (B, d_out),
        fired (n,) bool, l0 (scalar), aux_rec (AuxK reconstruction or None), and whatever
        ``penalty``/``extra_loss``/``after_step`` need (z, f, ...)."""
        z = x_in @ sae.W_enc.T + sae.b_enc                                  # (B, n)
        f = self.train_encode(sae, z)
        active = f > 0
        return {"z": z, "f": f, "y_hat": f @ sae.W_dec + sae.b_dec, "fired": active.any(0),
                "l0": active.sum(-1).float().mean(), "aux_rec": None}

    def train_encode(self, sae, z: torch.Tensor) -> torch.Tensor:
        return self.encode(sae, z)

    def penalty(self, sae, out: dict) -> Optional[torch.Tensor]:
        """The sparsity penalty (multiplied by the ``sparsity`` lambda), or None."""
        return None

    def extra_loss(self, sae, y: torch.Tensor, out: dict) -> Optional[torch.Tensor]:
        """A loss added with weight 1 beside the MSE (e.g. Matryoshka prefix losses), or None."""
        return None

    def autocast_ok(self, tc) -> bool:
        """Whether TrainConfig.bf16 may wrap the training step in autocast."""
        return True

    @torch.no_grad()
    def after_step(self, sae, out: dict, state: TrainState, world: int) -> None:
        """Called after each optimizer step (e.g. to update a running threshold)."""
