"""Transcoders for every layer of a model in one module: per-layer transcoders (PLT, each layer's
MLP input predicts that layer's MLP output), optional skip terms (a linear map of the input added
to the reconstruction, arXiv 2501.18823), and cross-layer transcoders (CLT: the encoder at layer
l writes to the MLP outputs of layers l..L-1). Activations: topk, jumprelu or relu.

Raw units in, raw units out; inside, the input of layer l is scaled by ``scale_in[l]`` and the
target by ``scale_out[l]`` (E||s x||^2 = d, set from the first batch):

    z_l = s_in,l x_l W_enc,l^T + b_enc,l                             (..., n)   per layer l
    a_l = topk(z_l) | z_l [z_l > theta_l] | relu(z_l)
    y_l = (sum_{m <= l} a_m W_dec,m->l + b_dec,l + s_in,l x_l W_skip,l^T) / s_out,l   (CLT)
    y_l = (a_l W_dec,l + b_dec,l + s_in,l x_l W_skip,l^T) / s_out,l                   (PLT)

>>> import torch
>>> tc = Transcoders(TranscoderConfig(n_layers=3, d_model=8, n_latents=16, k=2, kind="clt"))
>>> x = torch.randn(5, 3, 8)
>>> tc(x).shape, int((tc.encode(x) != 0).sum(-1).max()) <= 2
(torch.Size([5, 3, 8]), True)
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..core import (BadInputError, atomic_save_tensors, atomic_write_json, check_finite,
                    load_safetensors, read_json)
from ..sae import jumprelu, step

TRANSCODER_KINDS = ("plt", "clt")
ACTIVATIONS = ("topk", "jumprelu", "relu")
FORMAT = "mindscope-transcoders/1"
KEY_PREFIX = "mindscope_tc."


@dataclass
class TranscoderConfig:
    n_layers: int
    """Number of layers (blocks) covered; layer l reads mlp_in.l and predicts mlp_out.l."""
    d_model: int
    """Width of the MLP input and output."""
    n_latents: int
    """Latents per layer."""
    k: int = 32
    """topk: active latents per layer and token."""
    kind: str = "plt"
    """plt (each layer's transcoder writes to its own layer) or clt (to every later layer)."""
    activation: str = "topk"
    """topk, jumprelu or relu."""
    skip: bool = False
    """Add a linear skip term W_skip x (a d x d matrix per layer, zero at init)."""
    model: str = ""
    """Name of the model the activations came from."""
    in_site: str = "mlp_in"
    """Site family read by the encoders (layer l reads f'{in_site}.{l}')."""
    out_site: str = "mlp_out"
    """Site family the decoders predict."""
    scale_in: list = field(default_factory=list)
    """Per-layer input scale (empty = 1.0)."""
    scale_out: list = field(default_factory=list)
    """Per-layer target scale (empty = 1.0)."""
    threshold_init: float = 0.001
    """jumprelu: initial threshold (scaled units)."""
    bandwidth: float = 0.001
    """jumprelu: width of the straight-through rectangle kernel."""
    meta: dict = field(default_factory=dict)
    """Provenance: tokens trained, store, metrics."""

    def __post_init__(self):
        if self.kind not in TRANSCODER_KINDS:
            raise ValueError(f"TranscoderConfig.kind={self.kind!r} is not one of {TRANSCODER_KINDS}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TranscoderConfig.activation={self.activation!r} is not one of "
                             f"{ACTIVATIONS}")
        for f in ("n_layers", "d_model", "n_latents"):
            if getattr(self, f) <= 0:
                raise ValueError(f"TranscoderConfig.{f} must be positive, got {getattr(self, f)}")
        if self.activation == "topk" and not 0 < self.k <= self.n_latents:
            raise ValueError(f"TranscoderConfig.k={self.k} must be in 1..n_latents={self.n_latents}")
        for f in ("scale_in", "scale_out"):
            v = getattr(self, f)
            if v and (len(v) != self.n_layers or not all(s > 0 for s in v)):
                raise ValueError(f"TranscoderConfig.{f} needs {self.n_layers} positive numbers")

    def sites(self, layer: int) -> tuple[str, str]:
        return f"{self.in_site}.{layer}", f"{self.out_site}.{layer}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TranscoderConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) - names:
            raise ValueError(f"unknown TranscoderConfig fields {sorted(set(d) - names)}")
        return cls(**d)


class Transcoders(nn.Module):
    """PLT or CLT over all layers; see the module docstring for the maths."""

    def __init__(self, cfg: TranscoderConfig):
        super().__init__()
        self.cfg = cfg
        L, n, d = cfg.n_layers, cfg.n_latents, cfg.d_model
        self.W_enc = nn.Parameter(torch.zeros(L, n, d))                 # (L, n, d)
        self.b_enc = nn.Parameter(torch.zeros(L, n))                    # (L, n)
        self.b_dec = nn.Parameter(torch.zeros(L, d))                    # (L, d) scaled units
        if cfg.kind == "plt":
            self.W_dec = nn.Parameter(torch.zeros(L, n, d))             # (L, n, d)
        else:  # W_dec_l: (n, L - l, d), layer l -> layers l..L-1
            self.W_dec = nn.ParameterList([nn.Parameter(torch.zeros(n, L - l, d)) for l in range(L)])
        if cfg.activation == "jumprelu":
            self.log_threshold = nn.Parameter(torch.full((L, n), math.log(cfg.threshold_init)))
        if cfg.skip:
            self.W_skip = nn.Parameter(torch.zeros(L, d, d))            # (L, d_out, d_in)
        s_in = cfg.scale_in or [1.0] * L
        s_out = cfg.scale_out or [1.0] * L
        # explicit device: built under torch.device("meta") by ``load``, the scales stay real
        self.register_buffer("s_in", torch.tensor(s_in, dtype=torch.float32, device="cpu"),
                             persistent=False)
        self.register_buffer("s_out", torch.tensor(s_out, dtype=torch.float32, device="cpu"),
                             persistent=False)

    def set_scales(self, s_in, s_out) -> None:
        self.cfg.scale_in, self.cfg.scale_out = [float(v) for v in s_in], [float(v) for v in s_out]
        self.s_in.copy_(torch.tensor(self.cfg.scale_in))
        self.s_out.copy_(torch.tensor(self.cfg.scale_out))

    # ---- scaled units (training) ---------------------------------------------------------
    def pre_acts_scaled(self, xs: torch.Tensor) -> torch.Tensor:
        """xs (B, L, d) scaled inputs -> z (B, L, n)."""
        return torch.einsum("bld,lnd->bln", xs, self.W_enc) + self.b_enc

    def activate(self, z: torch.Tensor, train: bool = False) -> torch.Tensor:
        a = self.cfg.activation
        if a == "topk":
            v, i = z.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(z).scatter(-1, i, v.relu())
        if a == "jumprelu":
            if train:
                return jumprelu(z, self.log_threshold, self.cfg.bandwidth)
            return z * (z > self.log_threshold.exp())
        return z.relu()

    def decode_scaled(self, acts: torch.Tensor, xs: Optional[torch.Tensor]) -> torch.Tensor:
        """acts (B, L, n), xs (B, L, d) scaled inputs -> y (B, L, d) scaled targets."""
        if self.cfg.kind == "plt":
            y = torch.einsum("bln,lnd->bld", acts, self.W_dec)
        else:
            L = self.cfg.n_layers
            y = torch.zeros(acts.shape[0], L, self.cfg.d_model, dtype=acts.dtype, device=acts.device)
            for l in range(L):
                y[:, l:] += torch.einsum("bn,nmd->bmd", acts[:, l], self.W_dec[l])
        y = y + self.b_dec
        if self.cfg.skip and xs is not None:
            y = y + torch.einsum("bld,led->ble", xs, self.W_skip)
        return y

    # ---- raw units -------------------------------------------------------------------------
    def _flat(self, x: torch.Tensor):
        return x.reshape(-1, *x.shape[-2:]), x.shape[:-2]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., L, d) raw MLP inputs -> activations (..., L, n)."""
        xs, shape = self._flat(x.float())
        a = self.activate(self.pre_acts_scaled(xs * self.s_in[:, None]))
        return a.reshape(*shape, *a.shape[-2:])

    def decode(self, acts: torch.Tensor, x: Optional[torch.Tensor] = None) -> torch.Tensor:
        """acts (..., L, n) (+ raw inputs x for the skip term) -> raw outputs (..., L, d)."""
        a, shape = self._flat(acts.float())
        xs = None if x is None else self._flat(x.float())[0] * self.s_in[:, None]
        y = self.decode_scaled(a, xs) / self.s_out[:, None]
        return y.reshape(*shape, *y.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    # ---- one layer at a time (splicing into a running model) ---------------------------------
    def encode_layer(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """x (..., d) raw input of ``layer`` -> activations (..., n)."""
        z = (x.float() * self.s_in[layer]) @ self.W_enc[layer].T + self.b_enc[layer]
        if self.cfg.activation == "jumprelu":
            return z * (z > self.log_threshold[layer].exp())
        if self.cfg.activation == "topk":
            v, i = z.topk(self.cfg.k, dim=-1, sorted=False)
            return torch.zeros_like(z).scatter(-1, i, v.relu())
        return z.relu()

    def decode_layer(self, acts: list, x: Optional[torch.Tensor], layer: int) -> torch.Tensor:
        """Raw output (..., d) of ``layer`` from the activations ``acts[m]`` (..., n) of layers
        m <= layer (PLT reads only ``acts[layer]``) and the raw input x (for the skip term)."""
        if self.cfg.kind == "plt":
            y = acts[layer] @ self.W_dec[layer]
        else:
            y = sum(acts[m] @ self.W_dec[m][:, layer - m] for m in range(layer + 1))
        y = y + self.b_dec[layer]
        if self.cfg.skip and x is not None:
            y = y + (x.float() * self.s_in[layer]) @ self.W_skip[layer].T
        return y / self.s_out[layer]

    def encoder_vectors(self, layer: int) -> torch.Tensor:
        """(n, d): z = x . row + b_enc for a raw input x at ``layer``."""
        return self.W_enc[layer] * self.s_in[layer]

    def decoder_vectors(self, layer: int) -> torch.Tensor:
        """(n, L - layer, d) raw-unit output of one unit of each latent of ``layer`` at layers
        layer.. (PLT: only the first slot is non-zero, shape (n, 1, d))."""
        if self.cfg.kind == "plt":
            return (self.W_dec[layer] / self.s_out[layer])[:, None]
        return self.W_dec[layer] / self.s_out[layer:, None]

    def bias_out(self) -> torch.Tensor:
        """(L, d) raw-unit decoder bias."""
        return self.b_dec / self.s_out[:, None]

    def skip_matrix(self, layer: int) -> Optional[torch.Tensor]:
        """(d, d) raw-unit skip map: y_skip = x @ M.T, or None."""
        if not self.cfg.skip:
            return None
        return self.W_skip[layer] * (self.s_in[layer] / self.s_out[layer])

    def thresholds(self) -> Optional[torch.Tensor]:
        return self.log_threshold.exp() if self.cfg.activation == "jumprelu" else None

    # ---- files -----------------------------------------------------------------------------
    def save(self, path) -> Path:
        path = Path(path)
        # prefixed names, so that no peer loader reading bare W_enc/W_dec can mistake this file
        t = {KEY_PREFIX + k: v.detach().contiguous() for k, v in self.state_dict().items()}
        atomic_save_tensors(path / "transcoders.safetensors", t, metadata={"format": FORMAT})
        atomic_write_json(path / "cfg.json", {"format": FORMAT, **self.cfg.to_dict()})
        return path

    @classmethod
    def load(cls, path, device: str = "cpu") -> "Transcoders":
        """Load a folder written by ``save``; every tensor is checked (shape, finite) first.

        The weights stay the file's (copy-on-write) memory map: nothing is copied, a page is
        read when first used (an attribution graph touches the encoders and only the active
        latents' decoder rows), and a write (training) copies that page, never the file."""
        path = Path(path)
        cj, st = path / "cfg.json", path / "transcoders.safetensors"
        if not cj.exists() or not st.exists():
            raise BadInputError(path, "is not a mindscope transcoder folder (needs cfg.json and "
                                      "transcoders.safetensors)",
                                "train one with `mindscope circuits train`")
        d = read_json(cj, expect=dict, what="transcoder config")
        if d.pop("format", None) != FORMAT:
            raise BadInputError(cj, f"is not a {FORMAT} config", "point at a transcoder folder")
        try:
            cfg = TranscoderConfig.from_dict(d)
        except (TypeError, ValueError) as e:
            raise BadInputError(cj, f"has a bad field ({e})", "retrain or restore it") from None
        fix = "the file is damaged or the training diverged: retrain the transcoders"
        t = {k[len(KEY_PREFIX):] if k.startswith(KEY_PREFIX) else k: v
             for k, v in load_safetensors(st, "transcoder weights", fix).items()}
        with torch.device("meta"):  # no zero-filled weights to copy into: assign the map
            tc = cls(cfg)
        want = tc.state_dict()
        if set(t) != set(want):
            raise BadInputError(st, f"holds tensors {sorted(t)[:6]}, expected {sorted(want)[:6]}",
                                fix)
        for k, v in t.items():
            if v.shape != want[k].shape:
                raise BadInputError(st, f"tensor {k!r} has shape {tuple(v.shape)}, the config "
                                        f"needs {tuple(want[k].shape)}", fix)
            check_finite(v, st, f"tensor {k!r}", fix)  # chunked: no weights-sized copy
        tc.load_state_dict(t, assign=True)
        return tc.to(device)

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"kind={c.kind}, activation={c.activation}, layers={c.n_layers}, d={c.d_model}, "
                f"n_latents={c.n_latents}, k={c.k}, skip={c.skip}, model={c.model!r}")
