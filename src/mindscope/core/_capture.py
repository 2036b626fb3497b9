"""Reading sites: ``capture`` (activations at chosen positions, padding removed) and
``monitor`` (projections onto directions at every token, incl. generated ones, without
storing activations)."""
from __future__ import annotations

from dataclasses import dataclass
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
    early = stop_early and self.site_depth(deepest) < self.n_layers
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
            if early and len(chunk) == len(names):  # every site read: skip the rest
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
                    res = self._call(b.input_ids, b.attention_mask, use_cache=False,
                                     **b.model_inputs())
                    if not early:
                        logits.append(res.logits.to(device))
                except StopForward:
                    pass
                run.begin_call(past=0, T=b.input_ids.shape[1])
                m = run.mask(positions)
                u = run.unpadded()
            bi, ti = m.nonzero(as_tuple=True)
            rows.append(bi + a)
            poss.append(u[bi, ti])
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


def monitor(self, directions: dict[str, torch.Tensor], normalize: bool = True,
            max_tokens: int | None = None, callback=None) -> "Monitor":
    """``with lm.monitor({"resid_post.15": dirs (k, d)}) as mon: lm.generate(...)``: the
    projections at every token (prompt and generated), rows kept across generate's batches,
    each row stopping at its EOS. ``max_tokens`` bounds the tokens kept per row (the latest);
    ``callback(site, rows, values, mask)`` is called at every forward call (streaming)."""
    from ._record import Monitor
    return Monitor(self, directions, normalize, max_tokens=max_tokens, callback=callback)


def record(self, sites, positions="all", max_tokens: int | None = None, callback=None,
           dtype: torch.dtype | None = None, heads=None) -> "Recorder":
    """``with lm.record("resid_post.3", positions="generated") as rec: lm.generate(...)``:
    capture during generation (or any forward); ``rec.per_row(site)`` -> one (n_b, ...) tensor
    per prompt. Same streaming options as ``monitor``."""
    from ._record import Recorder
    return Recorder(self, self.expand_sites(sites, heads=heads), positions=positions,
                    max_tokens=max_tokens, callback=callback, dtype=dtype)
