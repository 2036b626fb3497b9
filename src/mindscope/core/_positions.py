"""Token positions: which tokens of each row an intervention or a capture touches.

A position spec is resolved per forward call into a boolean mask ``(B, T)`` over the tokens of
that call. Rows are left-padded by ``lm.tokenize``; right-padded input (a raw HF call, a Batch
built by hand) is resolved from its attention mask. A row's *unpadded* index ``u`` counts from
its first real token (``u = 0``). During KV-cached generation each call sees only the new tokens, so the
resolver knows how many tokens came before (``past``) and how long the prompt was.

>>> import torch
>>> run = Run(pad=torch.tensor([0, 2]), prompt_len=5)
>>> run.begin_call(past=0, T=5)
>>> run.mask("last").int().tolist()
[[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]
>>> run.mask(-1).int().tolist()           # an int: that one position (-1: the last)
[[0, 0, 0, 0, 1], [0, 0, 0, 0, 1]]
>>> run.mask(slice(0, 1)).int().tolist()
[[1, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import torch


@dataclass(frozen=True)
class span:
    """The tokens covering a piece of text, e.g. ``span("Trial 1")``.

    ``occurrence`` picks which match (0 = first, -1 = last); ``start_offset`` extends the span
    by that many tokens to the left (``-1`` also takes the token before the text)."""

    text: str
    occurrence: int = 0
    start_offset: int = 0
    through_end: bool = False
    """If True the span continues to the end of the sequence, generated tokens included."""


@dataclass(frozen=True)
class role:
    """The tokens of every chat turn with this role (``"user"``, ``"assistant"``, ``"system"``).
    For ``"assistant"``, generated tokens count too. ``role("image")``: the image tokens of a
    vision-language model's prompt."""

    name: str


PositionSpec = Union[str, int, slice, span, role, torch.Tensor, list]
NAMED = ("all", "prompt", "generated", "last")


@dataclass
class RowMeta:
    """What a row's text looks like: char offsets per token and chat-role char spans."""

    text: str
    offsets: list[tuple[int, int]]
    roles: list[tuple[str, int, int]] = field(default_factory=list)


class Run:
    """The state of one batched forward (or one generation) used to resolve positions."""

    def __init__(self, pad: torch.Tensor, prompt_len: int, meta: list[RowMeta] | None = None,
                 row_offset: int = 0, mask: torch.Tensor | None = None,
                 image: torch.Tensor | None = None):
        self.pad = pad.long()  # (B,) left padding per row (leading zeros of the mask)
        self.prompt_len = int(prompt_len)  # padded prompt length
        self.meta = meta
        self.row_offset = row_offset  # global index of row 0 (for per-row values split in chunks)
        self.past = 0
        self.T = prompt_len
        self._cache: dict = {}
        # Any padding (right-padded rows included): the prompt's real tokens and their count.
        if mask is None or mask.shape[1] != self.prompt_len:
            j = torch.arange(self.prompt_len).unsqueeze(0)
            mask = j >= self.pad.unsqueeze(1)
        self.valid = mask.bool().cpu()  # (B, prompt_len)
        self.n_real = self.valid.sum(-1)  # (B,) real prompt tokens per row
        self.image = None if image is None else image.bool().cpu()  # (B, prompt_len) image tokens
        self.rope_delta: torch.Tensor | None = None
        """(B, 1) shift of 1-D positions after a prompt with images on a multimodal-rotary model."""

    @property
    def B(self) -> int:
        return self.pad.shape[0]

    def begin_call(self, past: int, T: int) -> None:
        self.past, self.T = int(past), int(T)
        self._cache = {}

    def _abs(self) -> torch.Tensor:
        return torch.arange(self.past, self.past + self.T).unsqueeze(0).expand(self.B, -1)  # (B, T)

    def unpadded(self) -> torch.Tensor:
        """(B, T) index of each token among its row's real tokens; < 0 on padding. Prompt
        padding may sit on either side; generated tokens follow the row's last real token."""
        j = self._abs()
        P = self.prompt_len
        rank = self.valid.long().cumsum(-1) - 1  # (B, P)
        rank = torch.where(self.valid, rank, torch.full_like(rank, -1))
        inside = rank.gather(1, j.clamp(max=P - 1))
        after = self.n_real.unsqueeze(1) + (j - P)
        return torch.where(j < P, inside, after)

    def mask(self, spec: PositionSpec) -> torch.Tensor:
        if isinstance(spec, int) and not isinstance(spec, bool):  # one position, -1 = last
            spec = slice(spec, spec + 1 if spec != -1 else None)
        if isinstance(spec, slice):
            key = ("slice", spec.start, spec.stop, spec.step)
        else:
            key = spec if isinstance(spec, (str, span, role)) else id(spec)
        if key not in self._cache:
            self._cache[key] = self._resolve(spec)
        return self._cache[key]

    def _resolve(self, spec: PositionSpec) -> torch.Tensor:
        j = self._abs()  # (B, T) padded absolute index
        u = self.unpadded()
        real = u >= 0
        if isinstance(spec, str):
            if spec == "all":
                return real
            if spec == "prompt":
                return real & (j < self.prompt_len)
            if spec == "generated":
                return j >= self.prompt_len
            if spec == "last":
                return (u == self.n_real.unsqueeze(1) - 1) & (j < self.prompt_len)
            raise ValueError(f"unknown position {spec!r}; use one of {NAMED}, a slice, "
                             "ms.span(text), ms.role(name) or a boolean mask (B, T)")
        if isinstance(spec, slice):
            if spec.step not in (None, 1):
                raise ValueError("position slices take no step")
            n = self.n_real.unsqueeze(1)  # (B, 1) prompt length per row
            lo = 0 if spec.start is None else spec.start
            lo = torch.as_tensor(lo) + (n if lo < 0 else 0)
            if spec.stop is None:
                hi = torch.full_like(n, 1 << 40)
            else:
                hi = torch.as_tensor(spec.stop) + (n if spec.stop < 0 else 0)
            return real & (u >= lo) & (u < hi)
        if isinstance(spec, role) and spec.name == "image":
            if self.image is None:
                raise ValueError("role('image') needs a vision-language model and the prompt's "
                                 "tokens: run through lm.forward/capture/generate")
            return self.image.gather(1, j.clamp(max=self.prompt_len - 1)) & (j < self.prompt_len)
        if isinstance(spec, (span, role)):
            return self._text_mask(spec, u, j)
        if isinstance(spec, list):
            spec = torch.tensor(spec, dtype=torch.bool)
        if isinstance(spec, torch.Tensor):
            m = spec.bool()
            rows = torch.arange(self.row_offset, self.row_offset + self.B)
            if m.dim() != 2 or m.shape[0] < self.row_offset + self.B:
                raise ValueError(f"a position mask must be (N, T_unpadded) with one row per "
                                 f"prompt (N >= {self.row_offset + self.B}); got {tuple(m.shape)}")
            m = m[rows]  # rows of this batch (the mask indexes the whole prompt list)
            idx = u.clamp(min=0)
            inside = idx < m.shape[1]
            picked = torch.gather(m, 1, idx.clamp(max=m.shape[1] - 1))
            return real & inside & picked
        raise TypeError(f"cannot use {type(spec).__name__} as a position spec")

    def _token_ranges(self, spec) -> list[list[tuple[int, int]]]:
        """Per row, half-open unpadded token ranges covering the spec's character ranges."""
        if self.meta is None:
            raise ValueError(f"{spec!r} needs the row text: run through lm.forward/capture/"
                             "generate (which record it), not the raw HF model")
        out = []
        for m in self.meta:
            if isinstance(spec, span):
                starts, pos = [], m.text.find(spec.text)
                while pos >= 0:
                    starts.append(pos)
                    pos = m.text.find(spec.text, pos + 1)
                if not starts:
                    raise ValueError(f"span text {spec.text!r} not found in row text "
                                     f"{m.text[:80]!r}...")
                s = starts[spec.occurrence]
                chars = [(s, s + len(spec.text))]
            else:
                chars = [(a, b) for r, a, b in m.roles if r == spec.name]
            ranges = []
            for a, b in chars:
                toks = [i for i, (x, y) in enumerate(m.offsets) if x < b and y > a]
                if toks:
                    ranges.append((toks[0] + getattr(spec, "start_offset", 0), toks[-1] + 1))
            out.append(ranges)
        return out

    def _text_mask(self, spec, u, j) -> torch.Tensor:
        ranges = self._token_ranges(spec)
        m = torch.zeros_like(u, dtype=torch.bool)
        for b, rr in enumerate(ranges):
            for lo, hi in rr:
                m[b] |= (u[b] >= lo) & (u[b] < hi)
        through = (isinstance(spec, span) and spec.through_end and ranges) or \
                  (isinstance(spec, role) and spec.name == "assistant")
        if isinstance(spec, span) and spec.through_end:
            for b, rr in enumerate(ranges):
                if rr:
                    m[b] |= u[b] >= rr[0][0]
        elif through:
            m |= j >= self.prompt_len
        return m
