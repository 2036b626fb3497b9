"""One dispatcher per model: physical PyTorch hooks are installed only while a handler needs
them, and every handler sees the site value as a (B, T, d) tensor plus the current ``Run``.

Handlers at a site run in this order: interventions (in the order given), then readers
(captures, monitors), so a reader sees what the model actually uses downstream."""
from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Callable, Optional

import torch

from ._attn import KernelSwitch, check_kernel, head_out, head_weights, split_fused
from ._positions import Run

Handler = Callable[[torch.Tensor, Run], Optional[torch.Tensor]]
_counter = itertools.count()


class StopForward(Exception):
    """Raised by a reader after the deepest requested site (early stop)."""


def _first(x):
    return x[0] if isinstance(x, tuple) else x


def _replace_first(x, new):
    return (new,) + tuple(x[1:]) if isinstance(x, tuple) else new


class Dispatcher:
    def __init__(self, lm):
        self.lm = lm
        self.handlers: dict[str, list[tuple[int, int, Handler]]] = defaultdict(list)
        self.handles: dict[str, list] = {}
        self.run: Optional[Run] = None
        self._auto_run = False
        self._top = None
        self._pre_resid: dict[int, torch.Tensor] = {}
        self.kernel = KernelSwitch(lm)

    # ---- handler registry -------------------------------------------------------------
    def add(self, site: str, fn: Handler, priority: int) -> int:
        """Register ``fn`` at ``site`` (a head-selecting site such as ``z.3[1]`` registers at
        ``z.3`` and sees only those heads)."""
        s = self.lm.site(site)
        if s.heads is not None:
            fn = _select_heads(fn, s.heads)
        site = str(s.base)
        key = next(_counter)
        self.handlers[site].append((priority, key, fn))
        self.handlers[site].sort(key=lambda t: (t[0], t[1]))
        try:
            self._install(site)
        except Exception:
            self.remove(site, key)
            raise
        return key

    def remove(self, site: str, key: int) -> None:
        site = str(self.lm.site(site).base)
        self.handlers[site] = [t for t in self.handlers[site] if t[1] != key]
        if not self.handlers[site]:
            del self.handlers[site]
            self._uninstall(site)
        if not self.handlers and self._top is not None:
            self._top.remove()
            self._top = None

    def _dispatch(self, site: str, h: torch.Tensor) -> Optional[torch.Tensor]:
        changed = False
        for _, _, fn in list(self.handlers.get(site, ())):
            out = fn(h, self.run)
            if out is not None:
                h, changed = out, True
        return h if changed else None

    # ---- physical hooks ---------------------------------------------------------------
    def _install(self, site) -> None:
        if self._top is None:
            self._top = self.lm.model.register_forward_pre_hook(self._top_pre, with_kwargs=True)
        if site in self.handles:
            return
        s = self.lm.site(site)
        kind, layer, fam, hs = s.kind, s.layer, self.lm.family_spec, []
        part = (lambda path: self.lm.block_part(layer, path))
        if kind == "embed" and fam.embed_input:  # a VLM: text embeddings + image features
            hs.append(self.lm.module(fam.embed_input).register_forward_pre_hook(
                self._kwarg_hook(site, "inputs_embeds"), with_kwargs=True))
        elif kind == "embed":
            hs.append(self.lm.module(fam.embed).register_forward_hook(
                self._out_hook(site, self._scale(fam.embed_scale))))
        elif kind == "final_norm":
            hs.append(self.lm.module(fam.final_norm).register_forward_hook(self._out_hook(site)))
        elif kind == "module":
            hs.append(self.lm.module(s.path).register_forward_hook(self._out_hook(site)))
        elif kind == "resid_post":
            hs.append(self.lm.block(layer).register_forward_hook(self._out_hook(site)))
        elif kind == "resid_pre":
            hs.append(self.lm.block(layer).register_forward_pre_hook(
                self._pre_hook(site), with_kwargs=True))
        elif kind in ("attn_out", "mlp_out"):
            path = fam.attn_out if kind == "attn_out" else fam.mlp_out
            hs.append(part(path).register_forward_hook(
                self._out_hook(site, self._scale(fam.resid_scale))))
        elif kind == "resid_mid":
            # resid_mid = resid_pre + attn_out: remember resid_pre, edit through attn_out.
            hs.append(self.lm.block(layer).register_forward_pre_hook(
                self._remember_pre(layer), with_kwargs=True))
            hs.append(part(fam.attn_out).register_forward_hook(self._mid_hook(site, layer)))
        elif kind == "mlp_in":
            hs.append(part(fam.mlp).register_forward_pre_hook(self._pre_hook(site),
                                                              with_kwargs=True))
        elif kind == "mlp_post":
            hs.append(part(fam.mlp_down).register_forward_pre_hook(self._pre_hook(site),
                                                                   with_kwargs=True))
        elif kind in ("q", "k", "v"):
            hs.append(self._qkv_hook(site, kind, layer))
        elif kind == "z":
            hs.append(part(fam.o_proj).register_forward_pre_hook(self._z_hook(site),
                                                                 with_kwargs=True))
        elif kind == "head_out":
            hs.append(part(fam.o_proj).register_forward_hook(self._head_out_hook(site)))
        elif kind in ("attn_scores", "attn_pattern"):
            hs.append(self._pattern_hook(layer))
        elif kind in ("router", "expert_out"):
            from ._moe import install
            hs.append(install(self, site, kind, layer))
        self.handles[site] = hs

    def _uninstall(self, site: str) -> None:
        for h in self.handles.pop(site, ()):
            h.remove()

    def remove_all(self) -> None:
        for site in list(self.handles):
            self._uninstall(site)
        self.handlers.clear()
        if self._top is not None:
            self._top.remove()
            self._top = None

    def _top_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        emb = kwargs.get("inputs_embeds")
        B, T = (ids.shape if ids is not None else emb.shape[:2])
        mask = kwargs.get("attention_mask")
        total = mask.shape[1] if isinstance(mask, torch.Tensor) and mask.dim() == 2 else T
        past = total - T
        if self.run is None or (self._auto_run and past == 0):
            # A raw HF call (no lm.forward/generate around it): derive the run from the mask.
            pad = (torch.zeros(B, dtype=torch.long) if not isinstance(mask, torch.Tensor)
                   else (mask.cumsum(-1) == 0).sum(-1).cpu())
            self.run = Run(pad=pad, prompt_len=T,
                           mask=mask.cpu() if isinstance(mask, torch.Tensor) and mask.dim() == 2
                           and mask.shape[1] == T else None)
            self._auto_run = True
        self.run.begin_call(past=past, T=T)

    def _scale(self, attr) -> float:
        return 1.0 if attr is None else float(getattr(self.lm.text_config, attr))

    def _out_hook(self, site, scale: float = 1.0):
        """The module's (first) output; ``scale``: the factor applied to it outside the module
        (the site is the scaled value the residual receives)."""
        def hook(module, args, output):
            h = _first(output)
            new = self._dispatch(site, h if scale == 1.0 else h * scale)
            return None if new is None else _replace_first(output, new / scale if scale != 1.0
                                                           else new)
        return hook

    def _pre_hook(self, site):
        def hook(module, args, kwargs):
            if args:
                new = self._dispatch(site, args[0])
                return None if new is None else ((new,) + tuple(args[1:]), kwargs)
            new = self._dispatch(site, kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})
        return hook

    def _kwarg_hook(self, site, name: str):
        """The keyword input ``name`` of a module (pre-hook)."""
        def hook(module, args, kwargs):
            new = self._dispatch(site, kwargs[name])
            return None if new is None else (args, {**kwargs, name: new})
        return hook

    def _remember_pre(self, layer):
        def hook(module, args, kwargs):
            self._pre_resid[layer] = args[0] if args else kwargs["hidden_states"]
        return hook

    def _mid_hook(self, site, layer):
        scale = self._scale(self.lm.family_spec.resid_scale)

        def hook(module, args, output):
            a = _first(output)
            pre = self._pre_resid.pop(layer)
            new = self._dispatch(site, pre + a * scale)
            return None if new is None else _replace_first(output, (new - pre) / scale)
        return hook


    def _qkv_hook(self, site, kind, layer):
        lm, fam = self.lm, self.lm.family_spec
        H, Hkv = lm.n_heads, lm.n_kv_heads
        if fam.qkv is not None:
            def fused(module, args, output):
                part, put = split_fused(_first(output), fam.qkv_layout, H, Hkv, kind)
                new = self._dispatch(site, part)
                return None if new is None else _replace_first(output, put(new))
            return lm.block_part(layer, fam.qkv).register_forward_hook(fused)
        mod = lm.block_part(layer, getattr(fam, kind))  # the projection (before q/k-norm, rotary)
        n = H if kind == "q" else Hkv

        def hook(module, args, output):
            out = _first(output)
            h = out.reshape(*out.shape[:2], n, -1)  # (B, T, n, dh)
            new = self._dispatch(site, h)
            return None if new is None else _replace_first(output, new.reshape(out.shape))
        return mod.register_forward_hook(hook)

    def _z_hook(self, site):
        H = self.lm.n_heads

        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["input"]
            new = self._dispatch(site, x.view(*x.shape[:2], H, -1))  # (B, T, H, dh)
            if new is None:
                return None
            new = new.reshape(x.shape)
            return ((new,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "input": new})
        return hook

    def _head_out_hook(self, site):
        lm = self.lm

        def hook(module, args, output):
            x = args[0]
            W = head_weights(module, lm.n_heads, lm.family_spec.conv1d)  # (H, dh, d)
            per = head_out(x.view(*x.shape[:2], lm.n_heads, -1), W)  # (B, T, H, d)
            new = self._dispatch(site, per)
            if new is None:
                return None
            b = getattr(module, "bias", None)
            out = new.sum(2) + (b if b is not None else 0)  # (B, T, d)
            return _replace_first(output, out.to(_first(output).dtype))
        return hook

    def _pattern_hook(self, layer):
        attn = self.lm.block_part(layer, self.lm.family_spec.attn)
        check_kernel(attn)
        attn._ms_pattern = (self, layer)
        self.kernel.acquire()
        disp = self

        class Handle:
            def remove(self):
                disp.kernel.release()
                if not any(f"{k}.{layer}" in disp.handles for k in ("attn_scores", "attn_pattern")):
                    attn.__dict__.pop("_ms_pattern", None)
        return Handle()

    def dispatch_heads(self, site: str, x: torch.Tensor) -> torch.Tensor:
        """Dispatch a (B, H, T, S) attention tensor as (B, T, H, S); returns (B, H, T, S)."""
        if site not in self.handlers:
            return x
        new = self._dispatch(site, x.transpose(1, 2))
        return x if new is None else new.transpose(1, 2)


def _select_heads(fn: Handler, heads: tuple) -> Handler:
    """Wrap a handler so it sees h[:, :, heads] ((B, T, dx) for one head) and writes back."""
    idx = list(heads)

    def sel(h, run):
        sub = h[:, :, idx[0]] if len(idx) == 1 else h[:, :, idx]
        new = fn(sub, run)
        if new is None:
            return None
        out = h.clone()
        out[:, :, idx] = new.unsqueeze(2) if len(idx) == 1 else new
        return out
    return sel


def masked_apply(h: torch.Tensor, mask: torch.Tensor, fn, row_offset: int) -> Optional[torch.Tensor]:
    """Apply ``fn(rows_h (n, d), rows (n,)) -> (n, d)`` to the masked positions of h (B, T, ...);
    sites with more axes (heads) are flattened to (n, H * x) for ``fn`` and back."""
    mask = mask.to(h.device)
    if not bool(mask.any()):
        return None
    b, t = mask.nonzero(as_tuple=True)
    sel = h[b, t]  # (n, ...)
    new = fn(sel.reshape(sel.shape[0], -1), b.cpu() + row_offset)  # (n, d)
    out = h.clone()
    out[b, t] = new.reshape(sel.shape).to(h.dtype)
    return out
