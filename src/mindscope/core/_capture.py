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


@dataclass
class Captured:
    """Captured rows. ``acts[site]``: (N, d); ``row``/``pos``/``token_ids``: (N,) where ``pos``
    counts from the first real token of the row."""

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

    def padded(self, site: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, mask)``: ``x`` (B, T, d) with row b's captured token at unpadded position p in
        ``x[b, p]`` (zeros elsewhere) and ``mask`` (B, T) True where a token was captured,
        T = 1 + the largest captured position (TransformerLens/nnsight-style batches)."""
        a = self[site]                                                   # (N, d)
        B = int(self.row.max()) + 1 if len(self.row) else 0
        T = int(self.pos.max()) + 1 if len(self.pos) else 0
        x = a.new_zeros((B, T) + tuple(a.shape[1:]))                     # (B, T, d)
        mask = torch.zeros((B, T), dtype=torch.bool)
        x[self.row, self.pos] = a
        mask[self.row, self.pos] = True
        return x, mask

    def __repr__(self) -> str:
        n_rows = int(self.row.max()) + 1 if len(self.row) else 0
        sites = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in list(self.acts.items())[:6])
        more = f", ... {len(self.acts) - 6} more" if len(self.acts) > 6 else ""
        d = next(iter(self.acts.values())).dtype if self.acts else None
        return (f"Captured({len(self.row)} tokens of {n_rows} prompts; {sites}{more}; "
                f"dtype={str(d).replace('torch.', '')}{'; logits' if self.logits is not None else ''})")

    def _repr_html_(self) -> str:
        from html import escape

        rows = "".join(f"<tr><td>{escape(k)}</td><td>{tuple(v.shape)}</td><td>"
                       f"{v.float().norm(dim=-1).mean():.3g}</td></tr>" for k, v in self.acts.items())
        return (f"<div><b>Captured</b>: {len(self.row)} tokens of "
                f"{int(self.row.max()) + 1 if len(self.row) else 0} prompts"
                f"<table><tr><th>site</th><th>shape</th><th>mean norm</th></tr>{rows}</table>"
                "<small>cap[site] (N, d) with cap.row / cap.pos; cap.padded(site) (B, T, d) + mask"
                "</small></div>")


def capture(self, prompts, sites, positions="all", stop_early: bool = True, batch_size: int = 16,
            chat: bool = False, dtype: torch.dtype | None = None, device="cpu",
            progress: bool | None = None) -> Captured:
    """Run the model and keep ``sites`` at ``positions``. With ``stop_early`` the forward stops
    after the deepest requested site (no logits then). Results on ``device``/``dtype``."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"capture: batch_size must be a whole number >= 1, got {batch_size!r}")
    names = self.expand_sites(sites)
    deepest = max(names, key=self.site_depth)
    early = stop_early and deepest != "final_norm"
    batch = self.tokenize(prompts, chat=chat)
    out: dict[str, list] = {s: [] for s in names}
    rows, poss, toks, logits = [], [], [], []
    chunk: dict[str, torch.Tensor] = {}

    def reader(site):
        def fn(h, run):
            m = run.mask(positions).to(h.device)
            chunk[site] = h[m].detach().to(device=device, dtype=dtype or h.dtype)
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
    return Captured({s: torch.cat(v) for s, v in out.items()}, torch.cat(rows), torch.cat(poss),
                    torch.cat(toks), lg)


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
