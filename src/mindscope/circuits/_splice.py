"""Run the model with transcoders in place of its MLPs (all layers at once, or some), with or
without the error term, with feature edits; and the per-layer metrics built on that.

At each spliced layer l the MLP's output becomes ``decode_l(acts) (+ error_l)`` where ``acts``
are the transcoder activations computed from the MLP inputs *of this run* (so a CLT sees the
edited earlier layers). The first real token of each row keeps its true MLP output (the
BOS-like outlier, as circuit-tracer does).

>>> # ce = spliced_loss(lm, tc, texts)                           # every MLP replaced
>>> # with splice(lm, tc, keep_error=True, edits={(5, 7, 123): 0.0}): lm.forward(...)
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from ..core import BadInputError, count_nonfinite
from ._transcoders import Transcoders


def mlp_module(lm, layer: int) -> torch.nn.Module:
    """The MLP module of ``layer`` (its input is mlp_in.L, its output mlp_out.L)."""
    fam = lm.family_spec
    if fam.parallel or fam.moe or fam.mlp_out != fam.mlp:
        raise BadInputError(lm.name, f"family {lm.family!r} wraps its MLP in extra norms, runs "
                                     "it in parallel or routes it (MoE); circuits supports "
                                     "llama-style blocks",
                            "use a llama/mistral/qwen2-family model (e.g. SmolLM2)")
    return lm.block_part(layer, fam.mlp)


def check_transcoders(lm, tc: Transcoders) -> None:
    """BadInputError if ``tc`` does not fit ``lm`` (model, width, layers, sites, finite)."""
    c = tc.cfg
    where = f"transcoders ({c.model or 'unnamed model'})"
    if c.model and lm.name and c.model != lm.name:
        raise BadInputError(where, f"were trained on model {c.model!r}, not {lm.name!r}",
                            "train transcoders for this model with `mindscope circuits train`")
    if c.d_model != lm.d_model:
        raise BadInputError(where, f"have d_model={c.d_model}, the model {lm.d_model}",
                            "use transcoders of this model")
    if c.n_layers != lm.n_layers:
        raise BadInputError(where, f"cover {c.n_layers} layers, the model has {lm.n_layers} "
                                   f"(layers {c.n_layers}..{lm.n_layers - 1} are missing)",
                            "train transcoders for every layer (`--layers all`)")
    if (c.in_site, c.out_site) != ("mlp_in", "mlp_out"):
        raise BadInputError(where, f"read {c.in_site}.L and predict {c.out_site}.L; graphs need "
                                   "mlp_in.L -> mlp_out.L", "train on the MLP sites")
    for name, p in tc.named_parameters():
        if count_nonfinite(p):
            raise BadInputError(where, f"tensor {name!r} holds NaN/Inf",
                                "the training diverged: retrain with a lower lr")


@contextlib.contextmanager
def splice(lm, tc: Transcoders, layers: Optional[Iterable[int]] = None, keep_error: bool = False,
           edits: Optional[dict] = None, first: Optional[torch.Tensor] = None,
           record: Optional[dict] = None):
    """Replace the MLP outputs of ``layers`` (default all) by the transcoders' reconstruction.

    edits: {(layer, position, feature): value} sets that activation (in the running model,
    batch row 0..B alike). keep_error: add the error (true MLP output - unedited
    reconstruction), so only the edit changes the output. first: (B, T) bool of positions left
    untouched (default: position 0). record: a dict that receives {layer: acts (B, T, n)}."""
    L = lm.n_layers
    todo = set(range(L) if layers is None else layers)
    acts: dict = {}
    clean: dict = {}
    edits = edits or {}
    handles = []

    def hook(layer):
        def fn(module, args, output):
            x = args[0]                                               # (B, T, d)
            a = clean[layer] = tc.encode_layer(x, layer)              # (B, T, n)
            mine = [(p, f, v) for (l_, p, f), v in edits.items() if l_ == layer]
            if mine:
                a = a.clone()
                for p, f, v in mine:
                    a[:, p, f] = v
            acts[layer] = a
            if record is not None:
                record[layer] = a.detach()
            if layer not in todo:
                return None
            y = tc.decode_layer([acts.get(m) for m in range(layer + 1)], x, layer)  # (B, T, d)
            if keep_error:  # true output + (edited - unedited reconstruction)
                y = output.float() + y - tc.decode_layer([clean.get(m) for m in range(layer + 1)],
                                                         x, layer)
            keep = (first if first is not None else
                    torch.arange(x.shape[1])[None].expand(x.shape[0], -1) == 0)
            y = torch.where(keep[..., None].to(y.device), output.float(), y)
            return y.to(output.dtype)
        return fn

    try:
        for l in range(L):
            handles.append(mlp_module(lm, l).register_forward_hook(hook(l)))
        yield acts
    finally:
        for h in handles:
            h.remove()


def _run_logits(lm, tc, b, first, layers, mode: str) -> torch.Tensor:
    """(B, T, V) float logits of batch ``b`` with the MLPs of ``layers`` spliced ('splice'),
    zero-ablated ('zero') or untouched ('clean'); ``first`` (B, T) positions are never edited."""
    handles = []
    ctx = contextlib.nullcontext()
    if mode == "splice":
        ctx = splice(lm, tc, layers, first=first)
    elif mode == "zero":
        for l in (range(lm.n_layers) if layers is None else layers):
            def fn(module, args, output):
                return torch.where(first[..., None].to(output.device), output, 0.0)
            handles.append(mlp_module(lm, l).register_forward_hook(fn))
    try:
        with ctx, lm.run_context(b):
            return lm.call(b.input_ids, b.attention_mask, use_cache=False).logits.float().cpu()
    finally:
        for h in handles:
            h.remove()


class _Evaluator:
    """Next-token CE and KL(clean || run) per scored token of ``texts``, the clean run once."""

    def __init__(self, lm, tc, texts: list):
        self.lm, self.tc = lm, tc
        self.b = lm.tokenize(texts)
        self.first = self.b.attention_mask.cumsum(-1) <= 1                # (B, T) pad + first
        self.m = (self.b.attention_mask[:, 1:] * self.b.attention_mask[:, :-1]).float()  # (B, T-1)
        self.clean = self._logp(_run_logits(lm, tc, self.b, self.first, None, "clean"))

    def _logp(self, logits):
        return logits[:, :-1].log_softmax(-1)                            # (B, T-1, V)

    def stats(self, layers=None, mode: str = "splice") -> tuple:
        """(CE, KL) with ``layers`` spliced / zeroed; mode 'clean' gives (CE clean, 0)."""
        lp = self.clean if mode == "clean" else self._logp(
            _run_logits(self.lm, self.tc, self.b, self.first, layers, mode))
        tgt = self.b.input_ids[:, 1:]
        ce = -lp.gather(-1, tgt[..., None])[..., 0]                      # (B, T-1)
        kl = (self.clean.exp() * (self.clean - lp)).sum(-1)              # (B, T-1)
        n = self.m.sum().clamp(min=1)
        return float((ce * self.m).sum() / n), float((kl * self.m).sum() / n)


@torch.no_grad()
def spliced_loss(lm, tc: Transcoders, texts: list, layers=None, mode: str = "splice") -> float:
    """Mean next-token CE over ``texts`` with the MLPs of ``layers`` spliced (mode 'splice'),
    zero-ablated ('zero') or untouched ('clean'); the first token of each row is never edited."""
    b = lm.tokenize(texts)
    first = b.attention_mask.cumsum(-1) <= 1                          # (B, T) pad + first token
    logits = _run_logits(lm, tc, b, first, layers, mode)
    tgt = b.input_ids[:, 1:]
    m = b.attention_mask[:, 1:] * b.attention_mask[:, :-1]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tgt.reshape(-1),
                         reduction="none").view(tgt.shape) * m
    return float(ce.sum() / m.sum().clamp(min=1))


@torch.no_grad()
def store_metrics(tc: Transcoders, store, max_rows: int = 8192) -> dict:
    """Per layer, on the store's held-out rows (at most ``max_rows``): FVU of the output, L0
    (mean active latents per token) and the dead fraction (latents that never fire on those
    rows). Lists of n_layers floats under 'fvu', 'l0', 'dead', and 'rows'."""
    from ._train import check_store
    L, n = tc.cfg.n_layers, tc.cfg.n_latents
    ins, outs = check_store(store, tc.cfg)
    se = torch.zeros(L, dtype=torch.float64)
    ys = torch.zeros(L, tc.cfg.d_model, dtype=torch.float64)
    y2s = torch.zeros(L, dtype=torch.float64)
    active = torch.zeros(L, dtype=torch.float64)
    fired = torch.zeros(L, n, dtype=torch.bool)
    rows = 0
    for x, y in store.paired_reader(1024, ins, outs, shuffle=False, split="heldout"):
        x, y = x[:max_rows - rows], y[:max_rows - rows]                   # (B, L, d) each
        a = tc.encode(x)                                                  # (B, L, n)
        y_hat = tc.decode(a, x)                                           # (B, L, d)
        se += (y - y_hat).double().pow(2).sum((0, 2))
        ys += y.double().sum(0)
        y2s += y.double().pow(2).sum((0, 2))
        nz = a != 0
        active += nz.sum((0, 2)).double()
        fired |= nz.any(0)
        rows += x.shape[0]
        if rows >= max_rows:
            break
    if not rows:
        return {"rows": 0, "fvu": [None] * L, "l0": [None] * L, "dead": [None] * L}
    var = y2s - ys.pow(2).sum(-1) / rows
    return {"rows": rows, "fvu": (se / var).tolist(), "l0": (active / rows).tolist(),
            "dead": (1 - fired.double().mean(-1)).tolist()}


@torch.no_grad()
def transcoder_metrics(lm, tc: Transcoders, texts: list, store=None, max_rows: int = 8192,
                       per_layer: bool = True, per_layer_zero: bool = True) -> dict:
    """Per layer: FVU of mlp_out, L0 and dead fraction on the store's held-out rows (if a store
    is given), and with that layer alone spliced in: CE, KL(clean || spliced) per token and the
    replacement score (fraction of the CE increase of zero-ablating that MLP that the
    transcoder recovers). A CLT layer's output is the sum of the decoders of all layers <= l,
    their activations read from the unedited run. Overall: CE clean, with every MLP spliced at
    once (and its KL), with every MLP zero-ablated, and the all-layer replacement score.
    per_layer=False skips the per-layer forwards; per_layer_zero=False skips the per-layer
    zero ablations (and so the per-layer replacement score): half the forwards."""
    check_transcoders(lm, tc)
    L = lm.n_layers
    out: dict = {"layers": []}
    sm = store_metrics(tc, store, max_rows) if store is not None else \
        {"rows": 0, "fvu": [None] * L, "l0": [None] * L, "dead": [None] * L}
    ev = _Evaluator(lm, tc, texts)
    clean, _ = ev.stats(mode="clean")
    spliced, kl = ev.stats(mode="splice")
    zero, kl_zero = ev.stats(mode="zero")
    out.update(ce_clean=clean, ce_spliced=spliced, kl_spliced=kl, ce_zero=zero,
               kl_zero=kl_zero, heldout_rows=sm["rows"],
               replacement_score=(zero - spliced) / (zero - clean) if zero != clean else None)
    for l in range(L):
        layer = {"layer": l, "fvu": sm["fvu"][l], "l0": sm["l0"][l], "dead": sm["dead"][l]}
        if per_layer:
            s, k = ev.stats([l], "splice")
            layer.update(ce_spliced=s, kl_spliced=k)
            if per_layer_zero:
                z, kz = ev.stats([l], "zero")
                layer.update(ce_zero=z, kl_zero=kz,
                             replacement_score=(z - s) / (z - clean) if z != clean else None)
        out["layers"].append(layer)
    return out
