"""Reading sites: ``capture`` (activations at chosen positions, padding removed) and
``monitor`` (projections onto directions at every token, incl. generated ones, without
storing activations)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Optional

import torch
from tqdm.auto import tqdm

from ._hooks import StopForward
from ._sites import PATTERN


@dataclass
class Captured:
    """Captured rows. ``acts[site]``: (N, d) — (N, H, d_head) for q/k/v/z, (N, H, d) for
    head_out, (N, H, S) for attn_scores/attn_pattern (key 0 = the row's first real token, zero
    padded on the right) — and ``row``/``pos``/``token_ids``: (N,) where ``pos`` counts from
    the first real token of the row."""

    acts: dict[str, torch.Tensor]
    row: torch.Tensor
    pos: torch.Tensor
    token_ids: torch.Tensor
    logits: Optional[torch.Tensor] = None

    def __getitem__(self, site: str) -> torch.Tensor:
        try:
            return self.acts[site]
        except KeyError:
            raise KeyError(f"{site!r} was not captured; captured: {list(self.acts)}") from None

    def per_row(self, site: str) -> list[torch.Tensor]:
        """Split ``acts[site]`` into one (n_b, d) tensor per batch row."""
        n = int(self.row.max()) + 1 if len(self.row) else 0
        return [self.acts[site][self.row == b] for b in range(n)]


def capture(self, prompts, sites, positions="all", stop_early: bool = True, batch_size: int = 16,
            chat: bool = False, dtype: torch.dtype | None = None, device="cpu",
            progress: bool | None = None, heads=None) -> Captured:
    """Run the model and keep ``sites`` at ``positions``. With ``stop_early`` the forward stops
    after the deepest requested site (no logits then). Results on ``device``/``dtype``.
    ``heads`` (an int or list) selects heads of every headed site (like ``z.3[1]``)."""
    names = self.expand_sites(sites, heads=heads)
    deepest = max(names, key=self.site_depth)
    early = stop_early and deepest != "final_norm"
    batch = self.tokenize(prompts, chat=chat)
    out: dict[str, list] = {s: [] for s in names}
    rows, poss, toks, logits = [], [], [], []
    chunk: dict[str, torch.Tensor] = {}

    def reader(site):
        keys_axis = site.kind in PATTERN

        def fn(h, run):
            m = run.mask(positions).to(h.device)
            x = unpad_keys(h, run) if keys_axis else h
            chunk[site] = x[m].detach().to(device=device, dtype=dtype or h.dtype)
            if early and site == deepest:
                raise StopForward
        return fn

    keys = []
    n = len(batch)
    show = progress if progress is not None else n > batch_size
    try:
        for s in names:
            keys.append((s, self._hooks.add(s, reader(s), priority=1)))
        for a in tqdm(range(0, n, batch_size), desc="capture", unit="batch", disable=not show):
            b = batch.slice(a, a + batch_size)
            chunk.clear()
            with self._running(b, row_offset=a) as run, torch.no_grad():
                try:
                    res = self._call(b.input_ids, b.attention_mask, use_cache=False)
                    if not early:
                        logits.append(res.logits.to(device))
                except StopForward:
                    pass
                run.begin_call(past=0, T=b.input_ids.shape[1])
                m = run.mask(positions)
            bi, ti = m.nonzero(as_tuple=True)
            rows.append(bi + a)
            poss.append((ti - b.pad[bi]))
            toks.append(b.input_ids[bi, ti])
            for s in names:
                out[s].append(chunk[s])
    finally:
        for s, k in keys:
            self._hooks.remove(s, k)
    lg = None
    if logits:
        T = max(x.shape[1] for x in logits)  # re-pad chunks on the left to a common T
        lg = torch.cat([torch.nn.functional.pad(x, (0, 0, T - x.shape[1], 0)) for x in logits])
    return Captured({s: _cat(v) for s, v in out.items()}, torch.cat(rows), torch.cat(poss),
                    torch.cat(toks), lg)


def unpad_keys(h: torch.Tensor, run) -> torch.Tensor:
    """(B, T, H, S) attention rows in padded key coordinates -> key 0 = the row's first real
    token (zeros past the row's last key), so rows compare across batches."""
    S = h.shape[-1]
    idx = torch.arange(S, device=h.device).unsqueeze(0) + run.pad.to(h.device).unsqueeze(1)  # (B, S)
    valid = (idx < S).to(h.dtype)
    idx = idx.clamp(max=S - 1)[:, None, None, :].expand_as(h)
    return torch.gather(h, -1, idx) * valid[:, None, None, :]


def _cat(chunks: list) -> torch.Tensor:
    """Concatenate captured chunks; attention rows (…, S) of different widths are zero-padded."""
    S = max((c.shape[-1] for c in chunks), default=0)
    if chunks and chunks[0].dim() >= 3 and any(c.shape[-1] != S for c in chunks):
        chunks = [torch.nn.functional.pad(c, (0, S - c.shape[-1])) for c in chunks]
    return torch.cat(chunks)


@dataclass
class Monitor:
    """Projections of sites onto directions, recorded at every forward call (prompt and each
    generated token). ``projections[site]``: (B, T_total, k) in padded coordinates, or use
    ``per_row(site)`` for unpadded rows."""

    lm: object
    directions: dict[str, torch.Tensor]
    normalize: bool = True
    projections: dict[str, torch.Tensor] = field(default_factory=dict)
    pads: Optional[torch.Tensor] = None
    _keys: list = field(default_factory=list)
    _parts: dict = field(default_factory=dict)

    def _fn(self, site, D):
        def fn(h, run):
            d = D.to(h.device, h.dtype)
            if self.normalize:
                d = d / d.norm(dim=-1, keepdim=True)
            if run.past == 0:
                self._parts[site] = []
                self.pads = run.pad.clone()
            self._parts[site].append((h @ d.T).float().cpu())  # (B, T_call, k)
            self.projections[site] = torch.cat(self._parts[site], dim=1)
        return fn

    def __enter__(self):
        for site, D in self.directions.items():
            D = D if D.dim() == 2 else D.unsqueeze(0)
            for s in self.lm.expand_sites(site):
                self._keys.append((s, self.lm._hooks.add(s, self._fn(s, D), priority=1)))
        return self

    def __exit__(self, *exc):
        for s, k in self._keys:
            self.lm._hooks.remove(s, k)
        self._keys.clear()
        return False

    def per_row(self, site: str) -> list[torch.Tensor]:
        P = self.projections[site]
        return [P[b, int(self.pads[b]):] for b in range(P.shape[0])]


def monitor(self, directions: dict[str, torch.Tensor], normalize: bool = True) -> Monitor:
    """``with lm.monitor({"resid_post.15": dirs (k, d)}) as mon: lm.generate(...)``."""
    return Monitor(self, directions, normalize)
