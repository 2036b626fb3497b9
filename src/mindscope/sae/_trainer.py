"""Train one or many SAEs from one stream of activation batches (a sweep costs one harvest).

>>> import torch
>>> from mindscope.sae import SAEConfig, TrainConfig, Trainer, TensorBatches
>>> data = TensorBatches(torch.randn(512, 16), batch_size=64, seed=0)
>>> [sae] = Trainer([(SAEConfig("topk", 16, 64, k=4), TrainConfig(steps=5))], progress=False).fit(data)
>>> sae.cfg.meta["tokens"]
320

* batches: an iterable of (B, d) tensors, or of (x, y) pairs for transcoders; objects with
  ``iter_from(step)`` (``TensorBatches``) or callables ``f(step) -> iterator`` resume without
  replaying data, other iterables are re-iterated and the first ``step`` batches skipped.
* Checkpoints: every ``checkpoint_every`` steps one ``checkpoint.safetensors`` holding every SAE,
  its Adam state and the trainer state (JSON in the safetensors metadata), written atomically.
  A killed run started again with the same arguments continues bit-for-bit (CPU).
* Data parallel: under torchrun (``torch.distributed`` initialised, ``init_distributed``) a
  source with ``shard(rank, world)`` (``TensorBatches``, ``StoreBatches``) makes each rank read
  only its own rows of every global batch; gradients are summed so the update equals the
  single-process update on the whole batch (up to float summation order). Other iterables are
  read whole by every rank and sliced. A checkpoint holds no per-rank state: it resumes on any
  number of ranks.
* Device: the SAE, its optimizer state, the dead-latent counters and every batch live on
  ``device`` (default: the rank's CUDA device under NCCL, else CUDA if visible, else CPU);
  bf16 autocast follows ``TrainConfig.bf16`` (None = on for CUDA).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..core import (BadInputError, atomic_save_tensors, atomic_write_json, check_finite,
                    dist_info, load_safetensors, need, need_int, resolve_device, run_lock,
                    safetensors_json_meta)
from ._config import SAEConfig, TrainConfig
from .archs import TrainState
from ._data import drop_outliers, geometric_median
from ._sae import SAE

log = logging.getLogger(__name__)


_dist = dist_info


def train_device(device=None) -> torch.device:
    """The trainer's device: ``device`` if given (policy checks included); under NCCL the
    rank's CUDA device; else CUDA if visible, else CPU."""
    if device is not None:
        return resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    return resolve_device(None)


def _gather_rows(x: torch.Tensor, world: int) -> torch.Tensor:
    """Concatenate every rank's rows (rank order; ranks may hold different counts) -> (N, ...)."""
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(v) for v in sizes]
    pad = x.new_zeros((max(sizes),) + tuple(x.shape[1:]))
    pad[:x.shape[0]] = x
    parts = [torch.empty_like(pad) for _ in range(world)]
    dist.all_gather(parts, pad)
    return torch.cat([p[:k] for p, k in zip(parts, sizes)])


def lr_at(step: int, tc: TrainConfig, base: float) -> float:
    """Linear warm-up over the first lr_warmup*steps, linear decay to 0 over the last lr_decay*steps."""
    wu, dec = int(tc.lr_warmup * tc.steps), int(tc.lr_decay * tc.steps)
    if wu and step < wu:
        return base * (step + 1) / wu
    start = tc.steps - dec
    if dec and step >= start:
        return base * (tc.steps - step) / dec
    return base


def sparsity_at(step: int, tc: TrainConfig, coef: float) -> float:
    """lambda rises linearly from 0 over the first sparsity_warmup*steps."""
    wu = int(tc.sparsity_warmup * tc.steps)
    return coef * min(1.0, step / wu) if wu else coef


class _Slot:
    """One SAE being trained: module, optimizer and bookkeeping."""

    def __init__(self, cfg: SAEConfig, tc: TrainConfig, index: int, device: torch.device):
        self.cfg0, self.tc, self.index, self.device = cfg, tc, index, device
        self.sae = SAE(copy.deepcopy(cfg)).to(device)
        self.bf16 = (device.type == "cuda") if tc.bf16 is None else bool(tc.bf16)
        self.tokens = 0
        self.base_lr = tc.resolved_lr(cfg)
        self.unit = tc.unit_norm_decoder if tc.unit_norm_decoder is not None else cfg.spec.unit_norm_decoder
        self.opt = None
        self.since_fired = torch.zeros(cfg.n_latents, dtype=torch.long, device=device)
        self.state = TrainState()    # the architecture's own state (batchtopk: running threshold)
        self.history: list = []
        self.name = tc.name or f"{index:02d}_{cfg.spec.run_name(cfg)}_lr{self.base_lr:.1e}_s{tc.steps}"

    @property
    def theta(self):
        """Running inference threshold of threshold-trained architectures (checkpointed)."""
        return self.state.values.get("theta")

    @theta.setter
    def theta(self, value):
        self.state.values["theta"] = value

    def make_opt(self):
        self.opt = torch.optim.Adam(self.sae.parameters(), lr=self.base_lr, betas=self.tc.betas,
                                    fused=True)

    @torch.no_grad()
    def init_from(self, x: torch.Tensor, y: torch.Tensor):
        c, tc = self.sae.cfg, self.tc
        if tc.normalize:
            c.scale_in = math.sqrt(c.d_in / float(x.double().pow(2).sum(-1).mean()))
            c.scale_out = c.scale_in if not c.transcoder else math.sqrt(
                c.out_dim / float(y.double().pow(2).sum(-1).mean()))
        g = torch.Generator().manual_seed(tc.seed)
        n = c.n_latents
        W_dec = torch.randn(n, c.out_dim, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if not self.unit:
            W_dec *= tc.decoder_init_norm
        if c.transcoder:
            W_enc = torch.randn(n, c.d_in, generator=g)
            W_enc *= (W_dec.norm(dim=1, keepdim=True) / W_enc.norm(dim=1, keepdim=True))
        else:
            W_enc = W_dec.clone()                                  # encoder = decoder^T
        enc_norm = tc.resolved_encoder_norm(c)
        if enc_norm is not None:
            W_enc *= enc_norm / W_enc.norm(dim=1, keepdim=True)
        ys = y.double() * c.scale_out
        b = {"mean": lambda: ys.mean(0), "zeros": lambda: ys.new_zeros(c.out_dim),
             "geometric_median": lambda: geometric_median(ys)}[tc.init_b_dec]()
        s = self.sae
        s.W_enc.copy_(W_enc); s.W_dec.copy_(W_dec); s.b_enc.zero_(); s.b_dec.copy_(b.float())

    def state_tensors(self) -> dict:
        p = f"{self.index}."
        out = {p + "sae." + k: v for k, v in self.sae.state_dict().items()}
        out[p + "since_fired"] = self.since_fired
        for j, st in self.opt.state_dict()["state"].items():
            for key, v in st.items():
                out[f"{p}opt.{j}.{key}"] = v if torch.is_tensor(v) else torch.tensor(v)
        return {k: v.detach().cpu() for k, v in out.items()}   # the file is device-free

    def load_tensors(self, t: dict, meta: dict):
        p = f"{self.index}."
        self.sae.cfg = SAEConfig.from_dict(meta["cfg"])
        self.sae.load_state_dict({k[len(p) + 4:]: v for k, v in t.items() if k.startswith(p + "sae.")})
        self.since_fired = t[p + "since_fired"].to(self.device).clone()
        self.theta = meta.get("theta")
        self.tokens = meta.get("tokens", 0)
        self.history = meta.get("history", [])
        self.make_opt()
        sd = self.opt.state_dict()
        state: dict = {}
        for k, v in t.items():
            if k.startswith(p + "opt."):
                j, key = k[len(p) + 4:].split(".", 1)
                state.setdefault(int(j), {})[key] = v.clone()
        sd["state"] = state
        self.opt.load_state_dict(sd)


class Trainer:
    """Train SAEs ``specs = [(SAEConfig, TrainConfig), ...]`` on one batch stream."""

    def __init__(self, specs: Sequence[tuple], out_dir=None, *, checkpoint_every: int = 0,
                 log_every: int = 10, progress: bool = True, plots: bool = True, device=None):
        if not specs:
            raise ValueError("Trainer needs at least one (SAEConfig, TrainConfig) pair")
        self.device = train_device(device)
        self.slots = [_Slot(c, t, i, self.device) for i, (c, t) in enumerate(specs)]
        names = [s.name for s in self.slots]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate SAE names in one run: {names}; set TrainConfig.name")
        self.out = Path(out_dir) if out_dir is not None else None
        if checkpoint_every and self.out is None:
            raise ValueError("checkpoint_every needs out_dir")
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.progress, self.plots = progress, plots
        self.steps = max(s.tc.steps for s in self.slots)
        self.step, self.tokens = 0, 0

    # ---- checkpoints ---------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Optional[Path]:
        return self.out / "checkpoint.safetensors" if self.out is not None else None

    def _signature(self) -> list:
        return [[s.cfg0.to_dict(), s.tc.to_dict()] for s in self.slots]

    def save_checkpoint(self):
        if _dist()[0] != 0:
            return
        tensors: dict = {}
        for s in self.slots:
            tensors.update(s.state_tensors())
        meta = {"step": self.step, "tokens": self.tokens, "signature": self._signature(),
                "slots": [{"cfg": s.sae.cfg.to_dict(), "theta": s.theta, "history": s.history,
                           "tokens": s.tokens}
                          for s in self.slots]}
        atomic_save_tensors(self.ckpt_path, tensors, metadata={"trainer": json.dumps(meta)})

    def load_checkpoint(self) -> bool:
        p = self.ckpt_path
        if p is None or not p.exists():
            return False
        fix = "the checkpoint is damaged: delete it to start this run over"
        _, meta = safetensors_json_meta(p, "trainer", "mindscope trainer checkpoint", fix,
                                        max_depth=32)
        if meta.get("signature") != json.loads(json.dumps(self._signature())):
            raise ValueError(f"{p} was written by a run with other settings; delete it or use "
                             "another out_dir (resume needs identical configs)")
        step = need_int(meta, "step", p, 0, self.steps)
        tokens = need_int(meta, "tokens", p, 0, 1 << 62)
        slots = need(meta, "slots", list, p)
        if len(slots) != len(self.slots) or not all(isinstance(m, dict) for m in slots):
            raise BadInputError(p, "its 'slots' do not match this run's SAEs", fix)
        t = load_safetensors(p, "trainer checkpoint", fix)
        for k, v in t.items():
            if ".sae." in k:
                check_finite(v, p, f"tensor {k!r}", fix)
        try:
            for s, m in zip(self.slots, slots):
                s.load_tensors(t, m)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise BadInputError(p, f"does not fit this run ({str(e)[:200]})", fix) from None
        self.step, self.tokens = step, tokens
        log.info("resumed from %s at step %d (%d tokens)", p, self.step, self.tokens)
        return True

    # ---- training --------------------------------------------------------------------------------
    def _iterator(self, batches, start: int):
        rank, world = _dist()
        self.sharded = world > 1 and hasattr(batches, "shard")
        if self.sharded:          # each rank reads only its own rows of every global batch
            batches = batches.shard(rank, world)
        if hasattr(batches, "iter_from"):
            return iter(batches.iter_from(start))
        if callable(batches):
            return iter(batches(start))
        it = iter(batches)
        for _ in range(start):
            next(it)
        return it

    def fit(self, batches: Iterable, resume: bool = True) -> list:
        """Train on ``batches`` (resuming from ``out_dir``'s checkpoint); returns the SAEs.
        ``out_dir`` is locked while training: a second run there raises ``RunLockedError``."""
        lock = run_lock(self.out, "sae train").acquire() \
            if self.out is not None and _dist()[0] == 0 else None
        try:
            return self._fit(batches, resume)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, batches: Iterable, resume: bool = True) -> list:
        rank, world = _dist()
        resumed = resume and self.load_checkpoint()
        it = self._iterator(batches, self.step)
        bar = tqdm(total=self.steps, initial=self.step, disable=not self.progress or rank != 0,
                   desc="sae train", unit="step")
        t0, tok0 = time.perf_counter(), self.tokens
        while self.step < self.steps:
            try:
                batch = next(it)
            except StopIteration:
                log.warning("data ran out after %d of %d steps", self.step, self.steps)
                break
            xl, yl, B_glob, x_all, y_all = self._local_rows(batch, rank, world,
                                                            need_all=self.step == 0 and not resumed)
            if self.step == 0 and not resumed:
                for s in self.slots:
                    s.init_from(x_all, y_all)
                    s.make_opt()
                resumed = True
            weight = xl.shape[0] / B_glob
            for s in self.slots:
                if self.step < s.tc.steps:
                    self._step(s, xl, yl, weight, B_glob, world)
            self.step += 1
            self.tokens += B_glob
            if self.checkpoint_every and self.step % self.checkpoint_every == 0:
                self.save_checkpoint()
            if self.step % self.log_every == 0 or self.step == self.steps:
                h = self.slots[0].history[-1] if self.slots[0].history else {}
                rate = (self.tokens - tok0) / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix({"tok/s": f"{rate:,.0f}", "loss": f"{h.get('loss', 0):.4g}",
                                 "L0": f"{h.get('l0', 0):.1f}", "dead%": f"{100 * h.get('dead', 0):.1f}"})
            bar.update(1)
        bar.close()
        self.tokens_per_s = (self.tokens - tok0) / max(time.perf_counter() - t0, 1e-9)
        return self._finish()

    def _local_rows(self, batch, rank: int, world: int, need_all: bool):
        """-> (x, y) rows of this rank on the device, the global row count after outlier
        removal, and (only when ``need_all``, for the init) the whole global batch. Ranks
        exchange row norms (B floats), never rows, except for the one init batch."""
        x, y = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, batch)
        same = y is x
        x = x.to(self.device, torch.float32)                                    # (b, d)
        y = x if same else y.to(self.device, torch.float32)
        if world > 1 and not self.sharded:                                      # read whole, keep ours
            xa, ya = x, y
            x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
        elif world > 1 and need_all:
            xa = _gather_rows(x, world)
            ya = xa if same else _gather_rows(y, world)
        else:
            xa, ya = x, y
        f = self.slots[0].tc.outlier_factor
        if f:   # the median is over the global batch, so every world size keeps the same rows
            keep = self._keep(x, f) if same else self._keep(x, f) & self._keep(y, f)
            x, y = x[keep], (None if same else y[keep])
            if need_all:
                ka = drop_outliers(xa, f) if same else drop_outliers(xa, f) & drop_outliers(ya, f)
                xa, ya = xa[ka], (None if same else ya[ka])
        n = torch.tensor([x.shape[0]], device=self.device)
        if world > 1:
            dist.all_reduce(n)
        if same:
            y, ya = x, xa
        return x, y, int(n), xa, ya

    def _keep(self, x: torch.Tensor, f: float) -> torch.Tensor:
        """``drop_outliers`` with the median taken over every rank's rows."""
        norms = x.norm(dim=-1)                                                  # (b,)
        if _dist()[1] > 1:
            norms_all = _gather_rows(norms, _dist()[1])                          # (B,)
        else:
            norms_all = norms
        return norms <= f * norms_all.median()

    def _step(self, s: _Slot, x, y, weight, B_glob, world):
        sae, tc, c = s.sae, s.tc, s.sae.cfg
        xs, ys = x * c.scale_in, (y * c.scale_out if y is not x else None)
        ys = xs if ys is None else ys
        dead_idx = None
        k_aux = tc.k_aux or c.out_dim // 2
        if c.spec.aux_k and tc.aux_coef > 0:
            dead = s.since_fired >= tc.dead_tokens
            if bool(dead.any()):
                dead_idx = dead.nonzero().squeeze(1)
        coef = sparsity_at(self.step, tc, getattr(tc, c.spec.sparsity) if c.spec.sparsity else 0.0)
        with torch.autocast(self.device.type, dtype=torch.bfloat16,
                            enabled=s.bf16 and c.spec.autocast_ok(tc)):
            terms = sae.training_terms(xs, ys, sparsity_coef=coef, dead_idx=dead_idx, k_aux=k_aux,
                                       aux_coef=tc.aux_coef, fast=tc.fast, bf16=s.bf16)
        s.opt.zero_grad(set_to_none=True)
        (terms["loss"] * weight).backward()
        params = [p for p in sae.parameters() if p.grad is not None]
        fired = terms["fired"]
        if world > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in params])
            dist.all_reduce(flat)
            off = 0
            for p in params:
                p.grad.copy_(flat[off:off + p.numel()].view_as(p)); off += p.numel()
            f = fired.to(torch.int32)
            dist.all_reduce(f, op=dist.ReduceOp.MAX)
            fired = f.bool()
        if s.unit:   # remove the gradient component parallel to each (unit) decoder row
            W, g = sae.W_dec.data, sae.W_dec.grad
            g -= (g * W).sum(1, keepdim=True) * W
        if tc.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
        for grp in s.opt.param_groups:
            grp["lr"] = lr_at(self.step, tc, s.base_lr)
        s.opt.step()
        if s.unit:
            with torch.no_grad():
                sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))
        s.tokens += B_glob
        s.since_fired = torch.where(fired, torch.zeros_like(s.since_fired), s.since_fired + B_glob)
        c.spec.after_step(sae, terms, s.state, world)
        if (self.step + 1) % self.log_every == 0 or self.step + 1 == tc.steps:
            vals = torch.stack([terms["loss"].detach() * weight, terms["mse"] * weight,
                                terms["l0"] * weight, terms["aux"] * weight])
            if world > 1:
                dist.all_reduce(vals)
            fvu_den = float((ys - ys.mean(0)).pow(2).sum(-1).mean()) if world == 1 else float("nan")
            s.history.append({"step": self.step + 1, "tokens": self.tokens + B_glob,
                              "loss": float(vals[0]), "mse": float(vals[1]), "l0": float(vals[2]),
                              "aux": float(vals[3]), "fvu": float(vals[1]) / fvu_den if fvu_den else None,
                              "dead": float((s.since_fired >= tc.dead_tokens).float().mean()),
                              "lr": lr_at(self.step, tc, s.base_lr), "coef": coef})

    def _finish(self) -> list:
        rank, _ = _dist()
        out = []
        for s in self.slots:
            s.sae.cfg.meta = {**s.sae.cfg.meta, "tokens": s.tokens,
                              "steps": min(self.step, s.tc.steps), "train": s.tc.to_dict(),
                              "dead_tokens": s.tc.dead_tokens}
            out.append(s.sae)
            if self.out is not None and rank == 0:
                d = self.out / s.name
                s.sae.save(d)
                atomic_write_json(d / "history.json", s.history)
                if self.plots and s.history:
                    from ._metrics import plot_history
                    plot_history(s.history, d / "training.png", title=s.name)
        if self.out is not None and rank == 0:
            self.save_checkpoint()
        return out
