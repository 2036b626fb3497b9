"""Streaming readers during generation: ``Recorder`` (site values) and ``Monitor``
(projections onto directions) record at every forward call — the prompt, then one call per
generated token — with rows kept across ``generate``'s batches (row = index in the prompt list),
recording stopped at each row's EOS, an optional bound on the tokens kept per row, and an
optional per-call callback. Chunks are kept per row and joined once, when read.

>>> # with lm.monitor({"resid_post.2": D}, max_tokens=64, callback=print) as mon:
>>> #     lm.generate(prompts, batch_size=2)
>>> # mon.per_row("resid_post.2")  -> [(n_0, k), (n_1, k), ...]
"""
from __future__ import annotations

from collections import defaultdict, deque
from typing import Callable, Optional

import torch

from ._capture import _cat as join
from ._capture import unpad_keys
from ._sites import PATTERN


class Recorder:
    """Site values at ``positions`` of every forward call while the context is open."""

    def __init__(self, lm, sites, positions="all", max_tokens: Optional[int] = None,
                 callback: Optional[Callable] = None, dtype: Optional[torch.dtype] = None):
        if max_tokens is not None and max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0 (or None for no bound), got {max_tokens}")
        self.lm, self.sites, self.positions = lm, list(sites), positions
        self.max_tokens, self.callback, self.dtype = max_tokens, callback, dtype
        self._rows: dict = defaultdict(lambda: defaultdict(deque))  # site -> row -> chunks
        self._count: dict = defaultdict(lambda: defaultdict(int))  # site -> row -> tokens kept
        self._joined: dict = {}
        self._keys: list = []

    def _value(self, site, h: torch.Tensor, run) -> torch.Tensor:
        if getattr(site, "kind", None) in PATTERN:  # key 0 = the row's first real token
            h = unpad_keys(h, run)
        return h.detach().to("cpu", self.dtype or h.dtype)  # (B, T, ...)

    def _fn(self, site):
        def fn(h, run):
            m = run.mask(self.positions).clone()  # (B, T_call)
            fin = getattr(run, "finished", None)
            if fin is not None:
                m &= ~fin.to(m.device).unsqueeze(1)  # a row that produced EOS records no more
            x = self._value(site, h, run)
            rows = torch.arange(run.row_offset, run.row_offset + run.B)
            if self.callback is not None:
                self.callback(site, rows, x, m)
            self._joined.pop(site, None)
            for b in m.any(1).nonzero().flatten().tolist():
                self._append(site, int(rows[b]), x[b][m[b]])
        return fn

    def _append(self, site, row: int, chunk: torch.Tensor) -> None:
        q, n = self._rows[site][row], self._count[site]
        q.append(chunk)
        n[row] += chunk.shape[0]
        while self.max_tokens is not None and n[row] > self.max_tokens:
            extra = n[row] - self.max_tokens
            if q[0].shape[0] <= extra:
                n[row] -= q.popleft().shape[0]
            else:
                q[0] = q[0][extra:]
                n[row] -= extra

    def __enter__(self):
        try:
            for s in self.sites:
                self._keys.append((s, self.lm._hooks.add(s, self._fn(s), priority=1)))
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for s, k in self._keys:
            self.lm._hooks.remove(s, k)
        self._keys.clear()
        return False

    @property
    def n_rows(self) -> int:
        return max((max(r) + 1 for r in self._rows.values() if r), default=0)

    def per_row(self, site: str) -> list[torch.Tensor]:
        """One tensor per prompt row (n_b, ...): its recorded tokens in order."""
        if site not in self._joined:
            if site not in self._rows and site not in [str(s) for s in self.sites]:
                raise KeyError(f"{site!r} was not recorded; recorded: {[str(s) for s in self.sites]}")
            rows = self._rows.get(site, {})
            empty = next((c[0][:0] for c in rows.values() if c), torch.empty(0))
            self._joined[site] = [join(list(rows[r])) if rows.get(r) else empty
                                  for r in range(self.n_rows)]
        return self._joined[site]

    def padded(self, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T_max, ...) rows left-padded with zeros, and the pad count per row (B,)."""
        rows = self.per_row(site)
        T = max((r.shape[0] for r in rows), default=0)
        out = torch.stack([torch.nn.functional.pad(r, (0, 0) * (r.dim() - 1) + (T - r.shape[0], 0))
                           for r in rows]) if rows else torch.empty(0)
        return out, torch.tensor([T - r.shape[0] for r in rows])


class Monitor(Recorder):
    """Projections of sites onto directions (k, d) at every token. ``projections[site]``:
    (B, T_max, k), rows left-padded (``pads``); ``per_row(site)`` for unpadded rows."""

    def __init__(self, lm, directions: dict, normalize: bool = True, **kw):
        self.directions, self.normalize, self._dirs = directions, normalize, {}
        sites = []
        for site, D in directions.items():
            D = D if D.dim() == 2 else D.unsqueeze(0)
            for s in lm.expand_sites(site):
                sites.append(s)
                self._dirs[s] = D
        super().__init__(lm, sites, **kw)

    def _value(self, site, h, run):
        d = self._dirs[site].to(h.device, h.dtype)
        if self.normalize:
            d = d / d.norm(dim=-1, keepdim=True)
        return (h @ d.T).float().cpu()  # (B, T_call, k)

    @property
    def projections(self) -> dict[str, torch.Tensor]:
        return {str(s): self.padded(s)[0] for s in self.sites if s in self._rows}

    @property
    def pads(self) -> Optional[torch.Tensor]:
        return self.padded(self.sites[0])[1] if self.sites and self.sites[0] in self._rows else None
