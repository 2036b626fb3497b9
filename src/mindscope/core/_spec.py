"""One grammar for vector specs on command lines: ``FILE[#KEY][@SITE][:A[:B]]``.

- ``FILE`` a ``.safetensors`` vector (with or without its mindscope ``.json`` sidecar);
- ``#KEY`` picks one tensor of several (a raw file) or one named vector of a VectorSet;
- ``@SITE`` where to apply it; optional when the file records its site (``Vector.site``);
- ``:A[:B]`` numbers: the scale of ``steer``, MIN[:MAX] of ``cap`` (empty = no bound), none for
  ``ablate``.

>>> s = parse_vector_spec("v.safetensors@resid_post.15:4")
>>> (s.file.name, s.site, s.values)
('v.safetensors', 'resid_post.15', (4.0,))
>>> parse_vector_spec("v.safetensors:-2.5").site is None     # the file's own site
True

``spec_interventions(lm, steer=[...], cap=[...], ablate=[...])`` turns specs into ``Add`` /
``Cap`` / ``Ablate``; ``VectorSpec.read()`` checks a spec's file without a model (before loading).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ._files import BadInputError, load_safetensors

# kind -> (allowed counts of numbers, the spelling shown in errors)
KINDS = {"steer": ((1,), "FILE[@SITE]:SCALE"), "cap": ((1, 2), "FILE[@SITE]:MIN[:MAX]"),
         "ablate": ((0,), "FILE[@SITE]"), "any": ((0, 1, 2), "FILE[#KEY][@SITE][:A[:B]]")}
_EXAMPLE = "e.g. vec.safetensors@resid_post.15:4 (or vec.safetensors:4 if the file records its site)"


@dataclass(frozen=True)
class VectorSpec:
    """A parsed spec (see the module docstring)."""

    text: str
    """The spec as written."""
    file: Path
    """The .safetensors file."""
    key: Optional[str]
    """Tensor or VectorSet name after ``#``."""
    site: Optional[str]
    """Site after ``@`` (None: the file's own)."""
    values: tuple
    """The numbers after ``:`` (None where left empty)."""

    def read(self, d_model: Optional[int] = None) -> tuple[torch.Tensor, Optional[str]]:
        """The direction (d,) and its site (the spec's, else the file's); no model needed."""
        v, site = _read(self.file, self.key, self.text)
        if d_model is not None and v.shape[0] != d_model:
            raise BadInputError(f"{self.text}: the vector has d = {v.shape[0]} but the model has "
                                f"d_model = {d_model}; was it made for another model?")
        site = self.site or site
        if not site:
            raise BadInputError(f"{self.text}: {self.file.name} records no site; name one: "
                                f"{self.file}@SITE{self.text[len(str(self.file)):]}")
        return v, site


def _number(s: str) -> Optional[float]:
    if s.strip() == "":
        return None
    try:
        x = float(s)
    except ValueError:
        return None
    return x if x == x and abs(x) != float("inf") else None


def _is_number(s: str) -> bool:
    return s.strip() == "" or _number(s) is not None


def parse_vector_spec(spec: str, kind: str = "any") -> VectorSpec:
    """Parse ``FILE[#KEY][@SITE][:A[:B]]`` (no file is read). ``kind`` (steer, cap, ablate)
    fixes how many numbers follow."""
    counts, form = KINDS[kind]
    bad = f"{kind if kind != 'any' else 'vector'} spec {spec!r}: expected {form}, {_EXAMPLE}"
    text = spec.strip()
    if "@" in text:
        head, rest = text.rsplit("@", 1)
        if rest.startswith("module:"):  # module:<dotted.path> holds one ':' of its own
            path, *vals = rest[len("module:"):].split(":")
            site = "module:" + path
        else:
            site, *vals = rest.split(":")
        if not site:
            raise BadInputError(bad + " (empty site after '@')")
    else:
        parts = text.split(":")
        vals = []
        while len(parts) > 1 and len(vals) < 2 and _is_number(parts[-1]):
            vals.insert(0, parts.pop())
        head, site = ":".join(parts), None
    file, key = (head.split("#", 1) + [None])[:2] if "#" in head else (head, None)
    if not file:
        raise BadInputError(bad + " (no file)")
    if any(not _is_number(v) for v in vals):
        raise BadInputError(bad + f" ({', '.join(repr(v) for v in vals if not _is_number(v))} "
                            "is not a number)")
    numbers = tuple(_number(v) for v in vals)
    if len(numbers) not in counts:
        raise BadInputError(bad)
    if kind == "steer" and numbers[0] is None:
        raise BadInputError(bad + " (the scale is empty)")
    if kind == "cap" and all(x is None for x in numbers):
        raise BadInputError(bad + " (give MIN, MAX or both)")
    return VectorSpec(spec, Path(file), key or None, site, numbers)


def _read(path: Path, key: Optional[str], spec: str) -> tuple[torch.Tensor, Optional[str]]:
    """(d,) direction and the recorded site of ``path`` (``#key`` picks a tensor or a name)."""
    from ._vector import VectorSet, load_vector

    if not path.is_file():
        raise FileNotFoundError(f"{spec}: no such vector file {path}")
    if path.suffix != ".safetensors":
        raise BadInputError(f"{spec}: vectors are read from .safetensors files, not {path.name}")
    if path.with_suffix(".json").is_file():  # a mindscope Vector / VectorSet with metadata
        v = load_vector(path)
        if isinstance(v, VectorSet):
            if key is None and len(v) != 1:
                raise BadInputError(f"{spec}: {path.name} is a set of {len(v)} vectors "
                                    f"{v.names[:6]}; pick one with {path}#NAME")
            i = 0 if key is None else (v.names.index(key) if key in v.names else -1)
            if i < 0:
                raise BadInputError(f"{spec}: {path.name} has no vector {key!r}; it has "
                                    f"{v.names[:10]}")
            site = v.sites[i] if v.sites else v.site
            return v.data[i].float(), site
        if key is not None:
            raise BadInputError(f"{spec}: {path.name} holds one vector; drop '#{key}'")
        return v.data.float(), v.site
    tensors = load_safetensors(path, "vector file")
    if key is None:
        if len(tensors) != 1 and "vector" not in tensors:
            raise BadInputError(f"{spec}: {path.name} holds {sorted(tensors)[:6]}; pick one "
                                f"with {path}#KEY")
        key = "vector" if "vector" in tensors else next(iter(tensors))
    if key not in tensors:
        raise BadInputError(f"{spec}: {path.name} has no tensor {key!r}; it has "
                            f"{sorted(tensors)[:6]}")
    v = tensors[key].float()
    if v.dim() == 2 and v.shape[0] == 1:
        v = v[0]
    if v.dim() != 1:
        raise BadInputError(f"{spec}: expected one vector (d,), got shape {tuple(v.shape)}")
    return v, None


def load_direction(file, key: Optional[str] = None, d_model: Optional[int] = None) -> torch.Tensor:
    """One direction (d,) from a ``.safetensors`` file (``key`` picks a tensor or a VectorSet
    name), checked against ``d_model``; the reader behind every vector spec."""
    text = f"{file}#{key}" if key else str(file)
    v, _ = _read(Path(file), key, text)
    if d_model is not None and v.shape[0] != d_model:
        raise BadInputError(f"{text}: the vector has d = {v.shape[0]} but the model has "
                            f"d_model = {d_model}; was it made for another model?")
    return v


def spec_interventions(lm: Any, steer: Sequence[str] = (), cap: Sequence[str] = (),
                       ablate: Sequence[str] = ()) -> list:
    """``Add`` / ``Cap`` / ``Ablate`` interventions from specs, checked against ``lm``'s sites
    and ``d_model``. A site pattern (``resid_post.*``) gives one intervention per site."""
    from ._interventions import Ablate, Add, Cap

    out = []
    for kind, specs in (("steer", steer), ("cap", cap), ("ablate", ablate)):
        for text in specs:
            s = text if isinstance(text, VectorSpec) else parse_vector_spec(text, kind)
            v, site = s.read(getattr(lm, "d_model", None))
            try:
                sites = lm.expand_sites(site) if hasattr(lm, "expand_sites") else [site]
            except ValueError as e:
                raise BadInputError(f"{s.text}: {e}") from None
            for one in sites:
                if kind == "steer":
                    out.append(Add(one, v, scale=s.values[0]))
                elif kind == "cap":
                    out.append(Cap(one, v, min=s.values[0],
                                   max=s.values[1] if len(s.values) == 2 else None))
                else:
                    out.append(Ablate(one, v))
    return out
