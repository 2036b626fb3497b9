"""The same model with and without interventions, evaluated side by side.

``--steer FILE@SITE:SCALE`` -> ``ms.Add(SITE, v, scale=SCALE)``;
``--cap FILE@SITE:MIN[:MAX]`` -> ``ms.Cap(SITE, v, min=MIN, max=MAX)`` (empty = no bound);
``--ablate FILE@SITE`` -> ``ms.Ablate(SITE, v)``. FILE is a safetensors file holding one vector
(d,) or (1, d), or ``FILE#key`` to pick one tensor of several.

>>> parse_spec("v.safetensors@resid_post.15:4")
('v.safetensors', None, 'resid_post.15', ['4'])
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..core import atomic_write_text, load_safetensors
from ._items import Item, ItemSet
from ..judges import Judge, make_judge
from ._responders import LMResponder
from ._runner import EvalConfig, EvalResult, run_eval
from ._store import write_json_atomic

log = logging.getLogger(__name__)


def parse_spec(spec: str) -> tuple[str, Optional[str], str, list[str]]:
    """``FILE[#key]@SITE[:a[:b]]`` -> (file, key, site, [a, b])."""
    if "@" not in spec:
        raise ValueError(f"bad intervention spec {spec!r}; expected FILE@SITE:VALUE, "
                         "e.g. vec.safetensors@resid_post.15:4.0")
    file, rest = spec.rsplit("@", 1)
    key = None
    if "#" in file:
        file, key = file.split("#", 1)
    site, *vals = rest.split(":")
    if not file or not site:
        raise ValueError(f"bad intervention spec {spec!r}: empty file or site")
    return file, key, site, vals


def load_direction(file: str | Path, key: Optional[str] = None, d_model: Optional[int] = None):
    """One direction (d,) from a safetensors file (never pickle; the header is checked before a
    tensor is read, BadInputError naming the file if it is damaged)."""
    path = Path(file)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such vector file (expected .safetensors)")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: vectors are read from .safetensors files only")
    tensors = load_safetensors(path, "vector file")
    if key is None:
        if len(tensors) != 1:
            raise ValueError(f"{path} holds {sorted(tensors)}; pick one with {path}#KEY@SITE:...")
        key = next(iter(tensors))
    if key not in tensors:
        raise KeyError(f"{path} has no tensor {key!r}; it has {sorted(tensors)}")
    v = tensors[key].float()
    if v.dim() == 2 and v.shape[0] == 1:
        v = v[0]
    if v.dim() != 1:
        raise ValueError(f"{path}#{key}: expected one vector (d,), got shape {tuple(v.shape)}")
    if d_model is not None and v.shape[0] != d_model:
        raise ValueError(f"{path}#{key}: vector has d = {v.shape[0]} but the model has "
                         f"d_model = {d_model}; was it made for another model?")
    return v


def _float(s: str, what: str, spec: str) -> Optional[float]:
    if s.strip() == "":
        return None
    try:
        return float(s)
    except ValueError:
        raise ValueError(f"{spec}: {what} {s!r} is not a number") from None


def build_interventions(lm: Any, steer: Sequence[str] = (), cap: Sequence[str] = (),
                        ablate: Sequence[str] = ()) -> list:
    """Interventions from CLI specs (see module docstring), checked against ``lm.sites``."""
    import mindscope as ms

    out = []
    d = getattr(lm, "d_model", None)
    sites = set(getattr(lm, "sites", []) or [])
    for kind, specs in (("steer", steer), ("cap", cap), ("ablate", ablate)):
        for spec in specs:
            file, key, site, vals = parse_spec(spec)
            if sites and site not in sites:
                raise ValueError(f"{spec}: unknown site {site!r} for {getattr(lm, 'name', 'model')}; "
                                 "see lm.sites (e.g. resid_post.15)")
            v = load_direction(file, key, d)
            if kind == "steer":
                if len(vals) != 1:
                    raise ValueError(f"{spec}: --steer takes FILE@SITE:SCALE")
                out.append(ms.Add(site, v, scale=_float(vals[0], "scale", spec)))
            elif kind == "cap":
                if not 1 <= len(vals) <= 2:
                    raise ValueError(f"{spec}: --cap takes FILE@SITE:MIN or FILE@SITE:MIN:MAX")
                lo = _float(vals[0], "min", spec)
                hi = _float(vals[1], "max", spec) if len(vals) == 2 else None
                out.append(ms.Cap(site, v, min=lo, max=hi))
            else:
                if vals:
                    raise ValueError(f"{spec}: --ablate takes FILE@SITE")
                out.append(ms.Ablate(site, v))
    return out


def compare_variants(lm: Any, items: Union[ItemSet, Sequence[Item]],
                     variants: dict[str, Sequence[Any]], judge: Union[str, Judge, None] = "rule",
                     out: Union[str, Path, None] = None, *, config: Optional[EvalConfig] = None,
                     max_new_tokens: int = 256, temperature: float = 0.0,
                     progress: bool = True) -> dict[str, EvalResult]:
    """Run ``items`` once per variant ``{name: interventions}`` on the same ``lm`` and judge.

    Each variant gets ``out/<name>/`` (resumable); ``out/comparison.json`` and
    ``out/comparison.md`` hold the side-by-side table."""
    cfg = config or EvalConfig()
    judge = make_judge(judge) if not isinstance(judge, Judge) else judge
    results: dict[str, EvalResult] = {}
    for name, ivs in variants.items():
        resp = LMResponder(lm, ivs, max_new_tokens=max_new_tokens, temperature=temperature,
                           batch_size=cfg.batch_size)
        results[name] = run_eval(resp, items, judge, Path(out) / name if out else None,
                                 config=cfg, variant=name, progress=progress)
    if out:
        write_json_atomic(Path(out) / "comparison.json",
                          {k: {"metrics": r.metrics, "provenance": r.provenance} for k, r in results.items()})
        atomic_write_text(Path(out) / "comparison.md", comparison_table(results) + "\n")
    return results


def _fmt(v: Any, nd: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def comparison_table(results: dict[str, EvalResult]) -> str:
    """Markdown table: one row per variant (accuracy ± Wald, calibration, failure counts)."""
    head = ("| variant | n | accuracy % | ± 95% | calib. err. (official) | calib. err. (corrected) "
            "| mean conf. | no answer | no confidence | judge errors |")
    lines = [head, "|" + "---|" * 10]
    for name, r in results.items():
        m = r.metrics
        lines.append(f"| {name} | {m['n']} | {_fmt(m['accuracy'])} | {_fmt(m['half_width'])} | "
                     f"{_fmt(m.get('calibration_error_official'))} | "
                     f"{_fmt(m.get('calibration_error_corrected'))} | {_fmt(m.get('mean_confidence'))} | "
                     f"{m['answer_missing']} | {m['confidence_missing'] + m['confidence_malformed']} | "
                     f"{m['judge_errors']} |")
    return "\n".join(lines)
