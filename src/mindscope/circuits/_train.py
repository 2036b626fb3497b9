"""Train transcoders for every layer at once from an activation store that holds the MLP inputs
and outputs of all layers (``harvest_mlp``), resumable after a kill.

>>> # store = harvest_mlp(lm, "acts/mlp", n_tokens=200_000)          # one pass, all layers
>>> # tc = train_transcoders("acts/mlp", "tc/plt", TranscoderConfig(30, 576, 1024, k=16),
>>> #                        TrainSettings(steps=400))
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..activations import ActivationStore, harvest
from ..core import (BadInputError, atomic_save_tensors, atomic_write_json, load_safetensors,
                    run_lock)
from ..sae import lr_at, step
from ._transcoders import Transcoders, TranscoderConfig

log = logging.getLogger(__name__)


@dataclass
class TrainSettings:
    steps: int = 400
    """Optimizer steps (one batch of token rows, all layers, each)."""
    batch_size: int = 1024
    """Token rows per step."""
    lr: Optional[float] = None
    """Adam learning rate; None = 2e-4 / sqrt(n_latents / 2^14) (topk), 7e-5 otherwise."""
    sparsity_coef: float = 1e-3
    """jumprelu: lambda of the L0 penalty; relu: lambda of the decoder-norm-weighted L1."""
    lr_decay: float = 0.2
    """Fraction of steps over which the lr decays linearly to 0 at the end."""
    checkpoint_every: int = 50
    """Steps between checkpoints (a killed run resumes from the last one)."""
    seed: int = 0
    """Seed of the initialisation and the data order."""
    dtype: str = "float32"
    """Matmul precision: float32, or bfloat16 (mixed precision: the encoder/decoder products
    run in bf16 under autocast, weights, optimizer state and the loss stay float32)."""

    def __post_init__(self):
        if self.steps <= 0 or self.batch_size <= 0 or self.checkpoint_every <= 0:
            raise ValueError("TrainSettings.steps, batch_size and checkpoint_every must be > 0")
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"TrainSettings.dtype={self.dtype!r} is not float32 or bfloat16")
        if self.lr is not None and not self.lr > 0:
            raise ValueError("TrainSettings.lr must be positive")


def mlp_sites(n_layers: int, layers=None) -> tuple[list, list]:
    ls = range(n_layers) if layers is None else layers
    return [f"mlp_in.{l}" for l in ls], [f"mlp_out.{l}" for l in ls]


def harvest_mlp(lm, out, n_tokens: int = 200_000, **kw) -> ActivationStore:
    """One harvest pass that stores every layer's MLP input and output (``mlp_in.*`` and
    ``mlp_out.*``); all keyword arguments go to ``activations.harvest``."""
    ins, outs = mlp_sites(lm.n_layers)
    return harvest(lm, out, sites=ins + outs, n_tokens=n_tokens, **kw)


def check_store(store: ActivationStore, cfg: TranscoderConfig) -> tuple[list, list]:
    """The store's input/output site lists for ``cfg``, or a BadInputError naming what is missing."""
    ins = [cfg.sites(l)[0] for l in range(cfg.n_layers)]
    outs = [cfg.sites(l)[1] for l in range(cfg.n_layers)]
    missing = [s for s in ins + outs if s not in store.sites]
    if missing:
        raise BadInputError(store.path, f"holds no {missing[:4]}{'...' if len(missing) > 4 else ''}"
                                        f" ({len(missing)} sites missing; it has "
                                        f"{store.sites[:4]}...)",
                            "harvest all layers with `mindscope circuits harvest` (mlp_in.* and "
                            "mlp_out.*)")
    if store.d_model != cfg.d_model:
        raise BadInputError(store.path, f"has d_model={store.d_model}, the transcoders "
                                        f"{cfg.d_model}", "use the store of the same model")
    model = store.manifest.get("model", "")
    if cfg.model and model and cfg.model != model:
        raise BadInputError(store.path, f"was harvested from {model!r}, the transcoders are for "
                                        f"{cfg.model!r}", "use a store of the same model")
    return ins, outs


def _batches(store, ins, outs, st: TrainSettings, start: int):
    def stream():
        for e in itertools.count():
            got = False
            for x, y in store.paired_reader(st.batch_size, ins, outs, seed=st.seed + e,
                                            drop_last=True):
                got = True
                yield x, y
            if not got:
                raise BadInputError(store.path, f"has fewer than batch_size={st.batch_size} "
                                                "training rows", "harvest more tokens or lower "
                                                "--batch-size")
    return itertools.islice(stream(), start, None)


@torch.no_grad()
def _init(tc: Transcoders, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    """Scales from the first batch (E||s x||^2 = d per layer), b_dec = mean target, unit-norm
    random decoder rows, encoder rows of norm 1/sqrt(3) (sparsify's default init)."""
    c = tc.cfg
    d = c.d_model
    s_in = (d / x.double().pow(2).sum(-1).mean(0)).sqrt()          # (L,)
    s_out = (d / y.double().pow(2).sum(-1).mean(0)).sqrt()         # (L,)
    tc.set_scales(s_in.tolist(), s_out.tolist())
    g = torch.Generator().manual_seed(seed)
    for p in (tc.W_enc,):
        w = torch.randn(p.shape, generator=g)
        p.copy_(w / w.norm(dim=-1, keepdim=True) / math.sqrt(3))
    decs = [tc.W_dec] if c.kind == "plt" else list(tc.W_dec)
    for p in decs:  # CLT: L layers write into the last one, so rows start 1/sqrt(L) long
        w = torch.randn(p.shape, generator=g)
        p.copy_(w / w.norm(dim=-1, keepdim=True) / (math.sqrt(c.n_layers) if c.kind == "clt"
                                                    else 1.0))
    tc.b_dec.copy_((y.double() * s_out[:, None]).mean(0).float())


def _loss(tc: Transcoders, xs, ys, coef: float) -> dict:
    c = tc.cfg
    z = tc.pre_acts_scaled(xs).float()                              # (B, L, n)
    a = tc.activate(z, train=True)
    err = ys - tc.decode_scaled(a, xs).float()                      # (B, L, d)
    mse_l = err.pow(2).sum(-1).mean(0)                              # (L,)
    loss = mse_l.sum()
    if c.activation == "jumprelu":
        loss = loss + coef * step(z, tc.log_threshold, c.bandwidth).sum(-1).mean(0).sum()
    elif c.activation == "relu":
        if c.kind == "plt":
            norms = tc.W_dec.norm(dim=-1)                           # (L, n)
        else:
            norms = torch.stack([w.norm(dim=-1).sum(-1) for w in tc.W_dec])
        loss = loss + coef * (a * norms).sum(-1).mean(0).sum()
    var = (ys - ys.mean(0)).pow(2).sum(-1).mean(0)                  # (L,)
    return {"loss": loss, "fvu": (mse_l / var).detach(), "l0": (a > 0).sum(-1).float().mean(0)}


def train_transcoders(store, out, cfg: TranscoderConfig, st: TrainSettings,
                      progress: bool = True) -> Transcoders:
    """Train ``cfg``'s transcoders on ``store`` (a path or ActivationStore) into folder ``out``
    (``cfg.json`` + ``transcoders.safetensors`` + ``history.json``). A checkpoint every
    ``st.checkpoint_every`` steps; run again with the same arguments to resume."""
    store = store if isinstance(store, ActivationStore) else ActivationStore.open(store)
    if not cfg.model:
        cfg.model = store.manifest.get("model", "")
    ins, outs = check_store(store, cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out, "circuits train"):
        return _train(store, out, cfg, st, ins, outs, progress)


def _signature(cfg: TranscoderConfig, st: TrainSettings, store) -> dict:
    c = {k: v for k, v in cfg.to_dict().items() if k not in ("scale_in", "scale_out", "meta")}
    return {"cfg": c, "train": asdict(st), "store": str(store.manifest.get("tokens_sha256"))}


def _train(store, out, cfg, st, ins, outs, progress) -> Transcoders:
    tc = Transcoders(cfg)
    lr = st.lr or (2e-4 / math.sqrt(cfg.n_latents / 2 ** 14) if cfg.activation == "topk" else 7e-5)
    opt = torch.optim.Adam(tc.parameters(), lr=lr)
    ckpt = out / "checkpoint.safetensors"
    sig = _signature(cfg, st, store)
    start, history = 0, []
    if ckpt.exists():
        fix = "delete checkpoint.safetensors to start over"
        from safetensors import safe_open
        with safe_open(str(ckpt), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("trainer", "{}"))
        if meta.get("signature") != json.loads(json.dumps(sig)):
            raise BadInputError(ckpt, "was written by a run with other settings",
                                "use the same settings to resume, or another --out folder")
        t = load_safetensors(ckpt, "transcoder checkpoint", fix)
        tc.set_scales(meta["scale_in"], meta["scale_out"])
        tc.load_state_dict({k[6:]: v for k, v in t.items() if k.startswith("model.")})
        sd = opt.state_dict()
        state: dict = {}
        for k, v in t.items():
            if k.startswith("opt."):
                j, key = k[4:].split(".", 1)
                state.setdefault(int(j), {})[key] = v
        sd["state"] = state
        opt.load_state_dict(sd)
        start, history = int(meta["step"]), meta["history"]
        log.info("resuming %s at step %d", out, start)
    bar = tqdm(total=st.steps, initial=start, disable=not progress, desc="circuits train",
               unit="step")
    t0, rows = time.perf_counter(), 0
    it = _batches(store, ins, outs, st, start)
    tc.train()
    for s in range(start, st.steps):
        x, y = next(it)                                             # (B, L, d) each
        if s == 0:
            _init(tc, x, y, st.seed)
        xs, ys = x * tc.s_in[:, None], y * tc.s_out[:, None]
        coef = st.sparsity_coef * min(1.0, s / max(1, st.steps // 20))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=st.dtype == "bfloat16"):
            terms = _loss(tc, xs, ys, coef)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        for g in opt.param_groups:
            g["lr"] = lr_at(s, _Sched(st), lr)
        opt.step()
        rows += x.shape[0]
        if (s + 1) % 10 == 0 or s + 1 == st.steps:
            history.append({"step": s + 1, "loss": float(terms["loss"].detach()),
                            "fvu": terms["fvu"].tolist(), "l0": terms["l0"].tolist()})
            bar.set_postfix({"tok/s": f"{rows / (time.perf_counter() - t0):,.0f}",
                             "fvu": f"{float(terms['fvu'].mean()):.3f}",
                             "L0": f"{float(terms['l0'].mean()):.1f}"})
        bar.update(1)
        if (s + 1) % st.checkpoint_every == 0 and s + 1 < st.steps:
            _save_ckpt(ckpt, tc, opt, s + 1, history, sig)
    bar.close()
    tc.cfg.meta = {**tc.cfg.meta, "steps": st.steps, "tokens": st.steps * st.batch_size,
                   "store": str(store.path), "train": asdict(st)}
    tc.save(out)
    atomic_write_json(out / "history.json", history)
    ckpt.unlink(missing_ok=True)
    return tc.eval()


class _Sched:  # the fields sae.lr_at reads
    def __init__(self, st: TrainSettings):
        self.steps, self.lr_warmup, self.lr_decay = st.steps, 0.0, st.lr_decay


def _save_ckpt(path, tc, opt, step_, history, sig) -> None:
    t = {"model." + k: v for k, v in tc.state_dict().items()}
    for j, stt in opt.state_dict()["state"].items():
        for key, v in stt.items():
            t[f"opt.{j}.{key}"] = v if torch.is_tensor(v) else torch.tensor(v)
    meta = {"step": step_, "history": history, "signature": sig,
            "scale_in": tc.cfg.scale_in, "scale_out": tc.cfg.scale_out}
    atomic_save_tensors(path, t, metadata={"trainer": json.dumps(meta)})
