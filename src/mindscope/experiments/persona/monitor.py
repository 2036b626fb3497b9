"""The drift monitor: a saved (fixed) Assistant axis and a calibrated flag threshold.

Every persona run saves the axis it used as ``assistant_axis.safetensors`` (an ``ms.VectorSet``,
rows ``resid_post.0..L-1``, raw units) with a JSON sidecar whose ``meta`` holds what a later run
needs to reuse it: the model it was built on, its layer count and hidden size, the analysis
layer, the capping floors per layer and the drift monitor's threshold (``axis_meta``).

``Config.axis_from`` (CLI ``--axis-from PATH``) makes a run use such a saved axis instead of
rebuilding one from the model's own default and role answers (``load_axis`` validates it against
the model before any generation). The per-model axis stays the default, as in the paper; a fixed
axis is what a *monitor* of a changed model needs: it is calibrated once, on the reference model,
and a fine-tune that moves the model's own default and role answers also moves an axis rebuilt
from them (the persona positive control: docs/experiments/persona.md).

Monitor threshold (``calibrate``): the default assistant (the drift part's system prompt)
answers the shipped calibration questions (``data/persona/monitor.json``, general knowledge,
disjoint from the extraction questions and from the control's questions), one greedy turn each;
the statistic is the drift part's own per-turn mean projection on the unit axis at the analysis
layer, and the threshold is its ``quantile`` (default 0.05) over those answers
(``monitor_threshold``): about that fraction of ordinary answers is flagged by construction. A
turn is flagged when its projection falls below the threshold (``flag_rates``).

>>> monitor_threshold([float(x) for x in range(1, 101)], 0.05)
5.95
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import torch

from ...core import BadInputError, VectorSet
from ...runs import wilson
from .._common import shipped_json

AXIS_FILE = "assistant_axis.safetensors"
OWN_AXIS_FILE = "own_assistant_axis.safetensors"


def calibration_questions(n: Optional[int] = None) -> list[str]:
    """The shipped monitor calibration questions (the first ``n``; None = all 40)."""
    return shipped_json("persona", "monitor.json")["calibration_questions"][:n]


def monitor_threshold(projections: Sequence[float], quantile: float) -> float:
    """The ``quantile`` (0-1, linear interpolation, as ``numpy.quantile``) of the finite
    per-turn projections: the flag threshold."""
    xs = torch.tensor([x for x in projections if not math.isnan(x)], dtype=torch.float64)
    if len(xs) == 0:
        raise ValueError("no finite calibration projection to take a quantile of")
    if not 0 <= quantile <= 1:
        raise ValueError(f"quantile must be in [0, 1]; got {quantile}")
    return float(torch.quantile(xs, quantile))


def flagged(xs: Sequence[float], threshold: float) -> int:
    """Turns whose projection is below ``threshold`` (NaN turns are never flagged)."""
    return sum(1 for x in xs if not math.isnan(x) and x < threshold)


def calibrate(lm, system: Optional[str], axis: torch.Tensor, layer: int, quantile: float,
              n_questions: Optional[int], max_new_tokens: int, batch_size: int, seed: int = 0) -> dict:
    """The monitor threshold on this model: per-turn projections of the default assistant's
    answers to the calibration questions (greedy, ``drift``'s own statistic) and their quantile."""
    from .effects import drift

    qs = calibration_questions(n_questions)
    d = drift(lm, {"calibration": [[q] for q in qs]}, system, axis, layer, None, max_new_tokens,
              batch_size, seed=seed)
    xs = [t[0] for t in d["per_conversation"]["default"]["calibration"]]  # one turn each
    thr = monitor_threshold(xs, quantile)
    return {"threshold": thr, "quantile": quantile, "layer": layer, "n_calibration": len(xs),
            "flagged_calibration": wilson(flagged(xs, thr), len(xs)),
            "calibration_projections": [None if math.isnan(x) else x for x in xs],
            "calibration_set": "data/persona/monitor.json"}


def flag_rates(per_conversation: dict, threshold: float) -> dict:
    """Per drift set, the turns flagged by the monitor (Wilson rate over all its turns)."""
    out = {}
    for name, convs in per_conversation.items():
        xs = [t for c in convs for t in c]
        out[name] = wilson(flagged(xs, threshold), len(xs))
    return out


def axis_meta(lm, layer: int, taus: dict, cap_percentile: float, monitor: Optional[dict],
              **extra) -> dict:
    """What a later run needs to reuse the axis (stored in the VectorSet sidecar's ``meta``)."""
    mon = None if monitor is None else {k: v for k, v in monitor.items() if k != "flagged_calibration"}
    return {"model": lm.name, "n_layers": lm.n_layers, "d_model": lm.d_model, "layer": layer,
            "cap_thresholds": {str(k): float(v) for k, v in taus.items()},
            "cap_percentile": cap_percentile, "monitor": mon, **extra}


def _axis_path(path) -> Path:
    p = Path(path)
    return p / AXIS_FILE if p.is_dir() else p


def check_axis_path(path) -> Path:
    """The saved axis file named by ``axis_from`` (a run folder or its safetensors file);
    BadInputError when it or its JSON sidecar is missing (cheap: no tensor is read)."""
    p = _axis_path(path)
    if not p.is_file() or not p.with_suffix(".json").is_file():
        raise BadInputError(p, "axis_from: no saved Assistant axis here (needs the .safetensors "
                               "and its .json sidecar)",
                            f"give a persona run folder or its {AXIS_FILE}")
    return p


def load_axis(path, lm, other_model: bool = False) -> tuple[torch.Tensor, dict]:
    """A saved axis checked against ``lm``: (axis (L, d), meta). BadInputError (naming the fix)
    when the hidden size or layer count differs, the sidecar lacks the monitor metadata, or the
    axis was built on a model of another name and ``other_model`` is False."""
    p = check_axis_path(path)
    vs = VectorSet.load(p)
    meta = vs.meta
    need = ("model", "n_layers", "d_model", "layer", "cap_thresholds")
    if vs.method != "assistant_axis" or any(k not in meta for k in need):
        raise BadInputError(p, "axis_from: not an Assistant axis saved by a persona run (its "
                               f"metadata lacks {[k for k in need if k not in meta]})",
                            "rerun the persona protocol on the reference model and give its folder")
    d, L = vs.data.shape[1], vs.data.shape[0]
    if d != lm.d_model or meta["d_model"] != lm.d_model:
        raise BadInputError(p, f"axis_from: hidden size {d} (model {meta['model']}) but "
                               f"{lm.name} has {lm.d_model}",
                            "use an axis saved by a persona run on this model or a copy of it")
    if L != lm.n_layers or meta["n_layers"] != lm.n_layers:
        raise BadInputError(p, f"axis_from: {L} layers (model {meta['model']}) but {lm.name} has "
                               f"{lm.n_layers}", "use an axis saved by a persona run on this model "
                                                 "or a copy of it")
    if meta["model"] != lm.name and not other_model:
        raise BadInputError(p, f"axis_from: saved on model {meta['model']!r}, this run's model is "
                               f"{lm.name!r}", "use an axis from a run on this model, or set "
                                               "axis_from_other_model (--axis-from-other-model) "
                                               "to monitor a changed copy of the reference model")
    return vs.data.float(), {**meta, "path": str(p)}


def reference_settings(meta: dict, layer: Optional[int], cap_layers: Optional[Sequence[int]],
                       needs_monitor: bool) -> tuple[int, tuple, dict, Optional[dict]]:
    """The analysis layer, cap layers, capping floors and monitor a run takes from a saved
    axis: defaults are the saved ones; a layer or cap layer the saved floors / monitor do not
    cover is refused (BadInputError) before any generation."""
    p = meta.get("path")
    layer = meta["layer"] if layer is None else int(layer)
    saved = {int(k): float(v) for k, v in meta["cap_thresholds"].items()}
    caps = tuple(sorted(saved)) if cap_layers is None else tuple(int(x) for x in cap_layers)
    missing = [L for L in caps if L not in saved]
    if missing:
        raise BadInputError(p, f"axis_from: no capping floor for layer(s) {missing} (saved: "
                               f"{sorted(saved)})", "leave cap_layers unset or pick saved layers")
    mon = meta.get("monitor")
    if needs_monitor:
        if not mon:
            raise BadInputError(p, "axis_from: the saved axis has no drift-monitor threshold",
                                "save it from a persona run that includes the drift part")
        if mon["layer"] != layer:
            raise BadInputError(p, f"axis_from: the monitor was calibrated at layer {mon['layer']}"
                                   f", this run analyses layer {layer}",
                                "leave layer unset (the saved layer is used)")
    return layer, caps, {L: saved[L] for L in caps}, mon
