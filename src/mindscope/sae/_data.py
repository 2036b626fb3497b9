"""Batch sources for SAE training: in-memory tensors and the activation store, with an order
that is a pure function of (seed, step) so a resumed run sees exactly the same batches.

>>> import torch
>>> tb = TensorBatches(torch.arange(12.).view(6, 2), batch_size=2, seed=0)
>>> torch.equal(next(iter(tb.iter_from(4))), list(zip(range(5), tb))[4][1])
True
"""
from __future__ import annotations

import copy
import itertools
import logging
from typing import Iterator, Optional, Union

import torch

log = logging.getLogger(__name__)


def drop_outliers(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Keep-mask (B,) of rows whose L2 norm is at most ``factor`` x the batch median norm.

    On SmolLM2 resid_post.15 the first position has norm ~24,000 against ~360 for a typical
    token (0.02% of rows carry 86% of the variance); such rows would dominate MSE and FVU."""
    n = x.float().norm(dim=-1)
    return n <= factor * n.median()


@torch.no_grad()
def geometric_median(x: torch.Tensor, iters: int = 50, eps: float = 1e-8) -> torch.Tensor:
    """Weiszfeld's algorithm: argmin_m sum_i ||x_i - m||, started at the mean. x (N, d) -> (d,)."""
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(eps)          # (N,)
        m_new = (w[:, None] * x).sum(0) / w.sum()
        if (m_new - m).norm() <= 1e-7 * (m.norm() + 1e-12):
            return m_new
        m = m_new
    return m


class TensorBatches:
    """Shuffled batches from an in-memory (N, d) tensor, or an (x, y) pair for transcoders.

    Epoch e uses permutation randperm(N, seed + e); the stream cycles forever (the trainer stops).
    ``exclude`` (bool mask (N,)) drops rows up front, e.g. ``positions == 0``."""

    def __init__(self, data: Union[torch.Tensor, tuple], batch_size: int, seed: int = 0,
                 exclude: Optional[torch.Tensor] = None):
        xs = data if isinstance(data, (tuple, list)) else (data,)
        if any(t.shape[0] != xs[0].shape[0] for t in xs):
            raise ValueError("TensorBatches: x and y must have the same number of rows")
        if exclude is not None:
            xs = tuple(t[~exclude] for t in xs)
            log.info("TensorBatches: excluded %d rows", int(exclude.sum()))
        self.xs, self.batch_size, self.seed = xs, batch_size, seed
        self.n = xs[0].shape[0]
        if batch_size > self.n:
            raise ValueError(f"batch_size={batch_size} exceeds the {self.n} rows available")
        self.per_epoch = self.n // batch_size
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> "TensorBatches":
        """The same global batches, of which this source yields only rank ``rank``'s rows
        (``tensor_split(world)[rank]`` of each): a data-parallel rank gathers nothing else."""
        out = copy.copy(self)
        out.rank, out.world = rank, world
        return out

    def iter_from(self, step: int) -> Iterator:
        epoch, off = divmod(step, self.per_epoch)
        while True:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            for i in range(off, self.per_epoch):
                idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
                if self.world > 1:
                    idx = idx.tensor_split(self.world)[self.rank]
                out = tuple(t[idx] for t in self.xs)
                yield out if len(out) > 1 else out[0]
            epoch, off = epoch + 1, 0

    def __iter__(self):
        return self.iter_from(0)


class StoreBatches:
    """Batches from ``mindscope.activations.ActivationStore`` (imported lazily): epoch e reads
    ``store.reader(batch_size, shuffle=True, seed=seed + e, split=split)``; resuming at step s
    re-opens the reader and skips s batches (the reader's order is a function of its seed)."""

    def __init__(self, store, batch_size: int, seed: int = 0, split: str = "train",
                 site: Optional[str] = None):
        self.store, self.batch_size, self.seed, self.split = store, batch_size, seed, split
        self.site = site
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> "StoreBatches":
        """Rank ``rank`` of ``world`` reads only the shards ``k % world == rank`` and yields its
        ``tensor_split`` share of every global batch; the ranks' rows together make the global
        batch. The stream depends on ``world`` (resuming on another rank count continues the
        weights and schedule exactly, with a differently drawn data order)."""
        n = len(self.store.shards)
        if n < world:
            raise ValueError(f"the activation store has {n} shard(s), fewer than the {world} "
                             "ranks (each rank reads whole shards); harvest with a smaller "
                             "--shard-tokens or train on fewer ranks")
        out = copy.copy(self)
        out.rank, out.world = rank, world
        return out

    @classmethod
    def open(cls, path, batch_size: int, seed: int = 0, split: str = "train",
             site: Optional[str] = None) -> "StoreBatches":
        try:
            from mindscope.activations import ActivationStore
        except ImportError as e:  # pragma: no cover - depends on the activations layer
            raise ImportError("mindscope.activations.ActivationStore is not available; "
                              "train from tensors with TensorBatches instead") from e
        return cls(ActivationStore.open(path), batch_size, seed, split, site)

    def _stream(self):
        for e in itertools.count():
            got = False
            b_local = len(range(self.batch_size)[self.rank::self.world]) if self.world > 1 \
                else self.batch_size
            for b in self.store.reader(b_local, site=self.site, shuffle=True, seed=self.seed + e,
                                       split=self.split, drop_last=True,
                                       part=(self.rank, self.world)):
                got = True
                yield b
            if not got:
                raise ValueError(f"activation store split {self.split!r} yielded no batches")

    def iter_from(self, step: int):
        return itertools.islice(self._stream(), step, None)

    def __iter__(self):
        return self.iter_from(0)


def heldout_batches(store, batch_size: int, site: Optional[str] = None,
                    max_batches: Optional[int] = None, split: str = "heldout") -> list:
    """The store's held-out rows as (B, d) batches in store order, the last partial batch
    included (a held-out split smaller than one batch is still evaluated), at most
    ``max_batches`` batches. Raises ``ValueError`` naming the store when the split is empty."""
    out = []
    for b in store.reader(batch_size, site=site, shuffle=False, split=split, drop_last=False):
        if max_batches is not None and len(out) >= max_batches:
            break
        out.append(b)
    if not out:
        raise ValueError(f"activation store {getattr(store, 'path', '')} has no {split} rows; "
                         "harvest more tokens (about 5% of documents are held out)")
    return out
