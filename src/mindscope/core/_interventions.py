"""Interventions: small immutable ``(site, positions, op)`` objects applied during a forward.

Each op maps the residual (or other site) value ``h`` at the selected positions to a new value.
Directions are normalised to unit length where the math needs it (Ablate, Clamp, Cap).

>>> import torch
>>> h = torch.tensor([[3.0, 4.0]])
>>> Ablate("resid_post.0", torch.tensor([1.0, 0.0])).apply_rows(h, rows=torch.tensor([0]))
tensor([[0., 4.]])
>>> Cap("resid_post.0", torch.tensor([0.0, 2.0]), max=1.0).apply_rows(h, rows=torch.tensor([0]))
tensor([[3., 1.]])
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch

from ._device import module_device
from ._positions import PositionSpec

Scale = Union[float, torch.Tensor]


def _per_row(x: Any, rows: torch.Tensor, ref: torch.Tensor, name: str) -> torch.Tensor:
    """Broadcast a scalar, (B,) or (B, d) value to the rows being edited -> (n, 1) or (n, d)."""
    if not isinstance(x, torch.Tensor):
        return torch.tensor(float(x), dtype=ref.dtype, device=ref.device).view(1, 1)
    x = x.to(device=ref.device, dtype=ref.dtype)
    if x.dim() == 0:
        return x.view(1, 1)
    if int(rows.max()) >= x.shape[0]:
        raise ValueError(f"{name} has {x.shape[0]} rows but the batch has at least "
                         f"{int(rows.max()) + 1}; give one value per row (or a scalar)")
    x = x[rows]
    return x.unsqueeze(1) if x.dim() == 1 else x


def _unit(d: torch.Tensor) -> torch.Tensor:
    n = d.norm(dim=-1, keepdim=True)
    if bool((n == 0).any()):
        raise ValueError("direction has zero norm")
    return d / n


@dataclass(frozen=True)
class Intervention:
    site: str
    positions: PositionSpec = field(default="all", kw_only=True)

    def apply_rows(self, h: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """h: (n, d) selected vectors; rows: (n,) global batch row of each. Returns (n, d)."""
        raise NotImplementedError

    def _dir(self, d: torch.Tensor, rows: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        d = d.to(device=h.device, dtype=h.dtype)
        if d.shape[-1] != h.shape[-1]:
            raise ValueError(f"{type(self).__name__} at {self.site}: direction has dimension "
                             f"{d.shape[-1]} but the site has d = {h.shape[-1]}; was it made "
                             "for another model?")
        return _unit(d[rows] if d.dim() == 2 else d.expand_as(h))  # (n, d)


@dataclass(frozen=True)
class Add(Intervention):
    """h <- h + scale * vector. ``vector`` (d,) or per-row (B, d); ``scale`` float or (B,)."""

    vector: torch.Tensor
    scale: Scale = 1.0

    def apply_rows(self, h, rows):
        v = self.vector.to(device=h.device, dtype=h.dtype)
        if v.shape[-1] != h.shape[-1]:
            raise ValueError(f"Add at {self.site}: vector has dimension {v.shape[-1]} but the "
                             f"site has d = {h.shape[-1]}; was it made for another model?")
        v = v[rows] if v.dim() == 2 else v.unsqueeze(0)
        return h + _per_row(self.scale, rows, h, "scale") * v


@dataclass(frozen=True)
class Ablate(Intervention):
    """Project out a direction (d,) or an orthonormalised subspace (k, d): h <- h - P h."""

    direction: torch.Tensor
    subspace: bool = False
    """If True, ``direction`` (k, d) spans a subspace to remove (not one direction per row)."""

    def apply_rows(self, h, rows):
        if self.subspace:   # QR has no bf16/fp16 kernel, and the basis wants fp32 anyway
            d = self.direction.to(device=h.device, dtype=torch.float32)
            if d.shape[-1] != h.shape[-1]:
                raise ValueError(f"Ablate at {self.site}: subspace has dimension {d.shape[-1]} "
                                 f"but the site has d = {h.shape[-1]}; was it made for another "
                                 "model?")
            q, _ = torch.linalg.qr(d.T)                       # (d, k) orthonormal basis, fp32
            hf = h.float()                                    # (n, d)
            return (hf - (hf @ q) @ q.T).to(h.dtype)
        u = self._dir(self.direction, rows, h)
        return h - (h * u).sum(-1, keepdim=True) * u


@dataclass(frozen=True)
class Clamp(Intervention):
    """Set the projection on a unit direction to ``value``: h <- h + (value - <h,u>) u."""

    direction: torch.Tensor
    value: Scale = 0.0

    def apply_rows(self, h, rows):
        u = self._dir(self.direction, rows, h)
        p = (h * u).sum(-1, keepdim=True)
        return h + (_per_row(self.value, rows, h, "value") - p) * u


@dataclass(frozen=True)
class Cap(Intervention):
    """Keep the projection on a unit direction inside [min, max] (either may be None).

    ``min`` is the Assistant-axis floor: h <- h - u * min(<h,u> - min, 0)."""

    direction: torch.Tensor
    min: Optional[Scale] = None
    max: Optional[Scale] = None

    def __post_init__(self):
        if self.min is None and self.max is None:
            raise ValueError("Cap needs min, max or both")

    def apply_rows(self, h, rows):
        u = self._dir(self.direction, rows, h)
        p = (h * u).sum(-1, keepdim=True)
        q = p
        if self.min is not None:
            q = torch.maximum(q, _per_row(self.min, rows, h, "min").expand_as(q))
        if self.max is not None:
            q = torch.minimum(q, _per_row(self.max, rows, h, "max").expand_as(q))
        return h + (q - p) * u


@dataclass(frozen=True)
class Replace(Intervention):
    """Any function of the selected vectors: ``fn(h (n, d)) -> (n, d)``; with ``full=True``
    ``fn`` takes the whole site value (B, T, d) (TransformerLens-style hook functions) and its
    result is kept at the selected positions."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    full: bool = False
    """If True, call ``fn`` on the full (B, T, ...) tensor of each forward call."""

    def apply_full(self, h: torch.Tensor, mask: torch.Tensor) -> Optional[torch.Tensor]:
        """h (B, T, ...), mask (B, T) -> h with ``fn(h)`` at the masked positions."""
        out = self.fn(h)
        if out is None or out.shape != h.shape:
            raise ValueError(f"Replace(full=True) at {self.site}: fn returned "
                             f"{None if out is None else tuple(out.shape)}, expected "
                             f"{tuple(h.shape)} (return the edited tensor)")
        m = mask.to(h.device).view(*mask.shape, *([1] * (h.dim() - 2)))
        return torch.where(m, out.to(h.dtype), h)

    def apply_rows(self, h, rows):
        out = self.fn(h)
        if out.shape != h.shape:
            raise ValueError(f"Replace at {self.site}: fn returned {tuple(out.shape)}, "
                             f"expected {tuple(h.shape)}")
        return out


@dataclass(frozen=True)
class Splice(Intervention):
    """Run the selected vectors through an SAE-like object (``encode``/``decode``).

    h <- decode(edit(encode(h))) + (h - decode(encode(h)))  when ``keep_error`` (default), so
    with no edit the model is unchanged up to float error. ``edit(f (n, m)) -> (n, m)``.
    Without ``keep_error`` the reconstruction replaces h (used for CE-loss metrics)."""

    sae: Any
    edit: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    keep_error: bool = True

    def apply_rows(self, h, rows):
        if isinstance(self.sae, torch.nn.Module) and module_device(self.sae) != h.device:
            self.sae.to(h.device)       # the SAE follows the model (its module's device)
        f = self.sae.encode(h)
        recon = self.sae.decode(f)
        f2 = self.edit(f) if self.edit is not None else f
        out = self.sae.decode(f2) if self.edit is not None else recon
        return out + (h - recon) if self.keep_error else out
