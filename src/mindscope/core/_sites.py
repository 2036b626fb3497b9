"""Site names, parsed once: a ``Site`` is the canonical name (a ``str``) with its parts.

>>> s = parse("z.3[1,2]", n_layers=4, n_heads=4)
>>> s, s.kind, s.layer, s.heads, s.base
('z.3[1,2]', 'z', 3, (1, 2), 'z.3')
>>> parse("blocks.2.hook_resid_post", n_layers=4, n_heads=4)
'resid_post.2'
"""
from __future__ import annotations

import difflib
import logging
import re
from typing import Optional

log = logging.getLogger(__name__)

RESID = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
MLP = ("mlp_in", "mlp_post")
ATTN = ("q", "k", "v", "z", "head_out", "attn_scores", "attn_pattern")
MOE = ("router", "expert_out")
KINDS = RESID + MLP + ATTN + MOE
HEADED = ("q", "k", "v", "z", "head_out", "attn_scores", "attn_pattern")
"""Kinds with a head axis (selectable with ``[h]`` or ``heads=``)."""
PATTERN = ("attn_scores", "attn_pattern")
DEPTH = {"resid_pre": 0.0, "q": 0.05, "k": 0.05, "v": 0.05, "attn_scores": 0.1,
         "attn_pattern": 0.15, "z": 0.2, "head_out": 0.25, "attn_out": 0.3, "resid_mid": 0.4,
         "mlp_in": 0.5, "router": 0.55, "mlp_post": 0.6, "expert_out": 0.65, "mlp_out": 0.7,
         "resid_post": 0.9}
_RE = re.compile(r"^(\w+)\.(\d+)(?:\[([\d,\s]+)\])?$")

# TransformerLens / nnsight names -> ours ("blocks.L.<hook>" and "blocks.L.attn.<hook>").
TL = {"hook_resid_pre": "resid_pre", "hook_resid_mid": "resid_mid", "hook_resid_post": "resid_post",
      "hook_attn_out": "attn_out", "hook_mlp_out": "mlp_out", "ln2.hook_normalized": "mlp_in",
      "mlp.hook_pre": "mlp_pre", "mlp.hook_post": "mlp_post", "attn.hook_q": "q",
      "attn.hook_k": "k", "attn.hook_v": "v", "attn.hook_z": "z", "attn.hook_result": "head_out",
      "attn.hook_pattern": "attn_pattern", "attn.hook_attn_scores": "attn_scores"}
_TL_RE = re.compile(r"^(?:model\.)?blocks\.(\d+)\.(.+)$")
_noted: set = set()


class Site(str):
    """A parsed site name. ``kind``: one of KINDS, ``embed``, ``final_norm`` or ``module``;
    ``layer``: block index (None for embed/final_norm/module); ``heads``: selected heads or None;
    ``path``: the module path of a ``module:`` site. ``base`` is the name without heads."""

    kind: str
    layer: Optional[int]
    heads: Optional[tuple]
    path: Optional[str]

    def __new__(cls, kind: str, layer: Optional[int] = None, heads=None, path=None):
        if kind == "module":
            name = f"module:{path}"
        elif layer is None:
            name = kind
        else:
            name = f"{kind}.{layer}" + (f"[{','.join(map(str, heads))}]" if heads else "")
        s = super().__new__(cls, name)
        s.kind, s.layer, s.heads, s.path = kind, layer, tuple(heads) if heads else None, path
        return s

    @property
    def base(self) -> "Site":
        return self if self.heads is None else Site(self.kind, self.layer, None, self.path)

    def with_heads(self, heads) -> "Site":
        return Site(self.kind, self.layer, heads, self.path)

    def __reduce__(self):  # copy/deepcopy keep the parsed parts
        return (Site, (self.kind, self.layer, self.heads, self.path))


_NN_RE = re.compile(r"^(?:model\.)?([\w.\[\]]+)\.output$")


def translate(name: str, model=None) -> str:
    """A TransformerLens hook name or an nnsight ``<module path>.output`` -> mindscope site
    name (unchanged if neither)."""
    nn = _NN_RE.match(name) if name.endswith(".output") else None
    if nn:
        path = re.sub(r"\[(\d+)\]", r".\1", nn.group(1))
        if model is not None and path not in dict(model.named_modules()):
            full = re.sub(r"\[(\d+)\]", r".\1", name[: -len(".output")])
            path = full if full in dict(model.named_modules()) else path
        out = f"module:{path}"
    elif name in ("hook_embed", "embed.hook_embed"):
        out = "embed"
    elif name in ("ln_final.hook_normalized",):
        out = "final_norm"
    else:
        m = _TL_RE.match(name)
        if not m or m.group(2) not in TL:
            return name
        kind = TL[m.group(2)]
        if kind == "mlp_pre":
            raise ValueError(f"{name!r} (the MLP pre-activation) has no mindscope site; use "
                             f"'mlp_post.{m.group(1)}' (after the activation) or "
                             f"'module:<path of the up projection>'")
        out = f"{kind}.{m.group(1)}"
    if name not in _noted:
        _noted.add(name)
        log.warning("site %r read as %r (TransformerLens/nnsight name translated)", name, out)
    return out


def parse(name: str, n_layers: int, n_heads: int, kinds=KINDS, model=None,
          why: Optional[dict] = None) -> Site:
    """Parse and validate one site name. ``kinds``: the layer kinds this model has; ``why``:
    reasons for kinds it lacks (shown in the error); ``model``: checks ``module:`` paths."""
    if isinstance(name, Site):
        return name
    name = translate(name.strip(), model)
    if name in ("embed", "final_norm"):
        return Site(name)
    if name.startswith("module:"):
        path = name[len("module:"):]
        if model is not None:
            names = [n for n, _ in model.named_modules() if n]
            if path not in names:
                near = difflib.get_close_matches(path, names, n=4, cutoff=0.5)
                raise ValueError(f"no module {path!r} in the model; nearest: "
                                 f"{', '.join(near) or '(none)'} (see lm.model.named_modules())")
        return Site("module", path=path)
    m = _RE.match(name)
    kind = m and m.group(1)
    if not m or kind not in kinds or int(m.group(2)) >= n_layers:
        hint = f"; {why[kind]}" if m and why and kind in why else ""
        raise ValueError(
            f"unknown site {name!r} ({n_layers} layers){hint}. Valid: embed, final_norm, "
            f"{{{', '.join(kinds)}}}.L for L in 0..{n_layers - 1}, 'z.L[h]' for heads, "
            "'module:<dotted.path>' (patterns: 'resid_post.*', 'resid_post.10:20')")
    heads = None
    if m.group(3):
        if kind not in HEADED:
            raise ValueError(f"site {name!r}: only {', '.join(HEADED)} have heads to select")
        heads = tuple(int(h) for h in m.group(3).split(",") if h.strip())
        check_heads(name, heads, n_heads)
    return Site(kind, int(m.group(2)), heads)


def check_heads(name: str, heads, n_heads: int) -> None:
    bad = [h for h in heads if not 0 <= h < n_heads]
    if bad:
        raise ValueError(f"site {name!r}: head index {bad[0]} is out of range; this model has "
                         f"{n_heads} heads (0..{n_heads - 1}) at this site")
