"""Positive controls: plant an effect of known size, run the protocol unchanged, show it is seen.

A null result ("the model shows no introspection") is informative only when the same pipeline
detects a planted effect. A protocol package registers its control beside its ``run``:

    @control("introspection", detect=detect_effect, strengths=(0.5, 1.0))
    def plant(lm, cfg, work_dir, strength) -> Planted: ...

* ``plant(lm, cfg, work_dir, strength)`` builds (or reuses, from ``work_dir``) a model in which
  the effect is planted at ``strength`` (a trained additive bias, a LoRA, a planted direction)
  and returns ``Planted(lm, effect, close)``: ``effect`` describes what was planted (kind,
  where, size, what it was trained on and what is held out); ``close()`` undoes hooks.
* ``detect(results) -> Detection``: the protocol's headline effect read from its
  ``results.json`` (a dict), with its interval and the value meaning "no effect";
  ``results["run_dir"]`` names the run folder, for a measure that needs the files the protocol
  wrote beside results.json (e.g. saved vectors).
* ``configure(cfg) -> cfg`` (optional): the settings the control runs with (e.g. only the parts
  the planted effect is about).
* ``reference(cfg, untouched_run_dir) -> cfg`` (optional): the settings of each planted run,
  given the untouched run of the same seed (for a measure calibrated once on the untouched model,
  e.g. a monitor's fixed axis and threshold, which a planted model must not rebuild for itself).

``run_control(name, lm, cfg, out_dir)`` runs the protocol on the untouched model and on the
planted model at every strength, for every seed, each run in its own folder
(``untouched/seed<k>/``, ``planted-<s>/seed<k>/``, the planted model in ``planted-<s>/model/``);
a run whose ``results.json`` exists is reused, so a killed control resumes. It writes
``control.json``, ``control.md`` (the rows the protocol docs carry) and ``control.png`` (the
effect with its interval against strength), and says whether the control passed: the planted
effect detected (interval excludes "no effect") at the full strength in every seed, and the
untouched model reporting no effect in every seed.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..core import BadInputError
from ..runs import mde_from_curve, save_figure, write_json, write_text
from ._protocol import ResultDisplay, protocols

log = logging.getLogger(__name__)

__all__ = ["Detection", "Planted", "ControlSpec", "ControlResult", "control", "controls",
           "run_control"]


@dataclass(frozen=True)
class Detection:
    """A protocol's headline effect with its interval; ``null`` is its value under no effect."""

    measure: str
    value: Optional[float]
    lo: Optional[float]
    hi: Optional[float]
    null: float = 0.0
    n: Any = None
    direction: int = 0
    """The side the planted effect is predicted on, fixed before any run: +1 (above ``null``),
    -1 (below), 0 (either). With a direction, an interval that excludes ``null`` on the other
    side is not a detection (a one-sided test at half the interval's error rate, e.g. 2.5% for
    a 95% interval)."""

    @property
    def detected(self) -> bool:
        """The interval excludes the no-effect value (on the predicted side, if any)."""
        if self.lo is None or self.hi is None:
            return False
        above, below = self.lo > self.null, self.hi < self.null
        return {1: above, -1: below}.get(self.direction, above or below)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "detected": self.detected}


@dataclass
class Planted:
    """A model with a planted effect. ``close()`` removes what ``plant`` attached."""

    lm: Any
    effect: dict
    close: Optional[Callable[[], None]] = None

    @classmethod
    def hooked(cls, lm, effect: dict, *interventions) -> "Planted":
        """The same model with ``interventions`` (``ms.Add`` etc.) kept on until ``close()``:
        the way to plant a trained bias or a direction without copying the weights."""
        ctx = lm.intervene(*interventions)
        ctx.__enter__()
        return cls(lm, effect, lambda: ctx.__exit__(None, None, None))


@dataclass(frozen=True)
class ControlSpec:
    name: str
    plant: Callable
    """``plant(lm, cfg, work_dir, strength) -> Planted``."""
    detect: Callable
    """``detect(results: dict) -> Detection``."""
    strengths: tuple = (1.0,)
    """Planted strengths run by default; the largest is the one the control must detect."""
    configure: Optional[Callable] = None
    """``configure(cfg) -> cfg``: the settings the control runs with."""
    doc: str = ""
    reference: Optional[Callable] = None
    """``reference(cfg, untouched_run_dir) -> cfg``: a planted run's settings, from the untouched
    run of the same seed (a reference calibrated once on the untouched model)."""


_CONTROLS: dict[str, ControlSpec] = {}


def control(name: str, *, detect: Callable, strengths: Sequence[float] = (1.0,),
            configure: Optional[Callable] = None, reference: Optional[Callable] = None):
    """Register ``plant`` as protocol ``name``'s positive control (see the module doc)."""
    if not strengths or any(not s > 0 for s in strengths):
        raise ValueError(f"strengths must be positive numbers; got {strengths!r}")

    def deco(plant: Callable) -> Callable:
        doc = " ".join((plant.__doc__ or "").strip().split("\n\n")[0].split())
        _CONTROLS[name] = ControlSpec(name, plant, detect, tuple(float(s) for s in strengths),
                                      configure, doc, reference)
        return plant
    return deco


def controls() -> dict[str, ControlSpec]:
    """The registered controls (after importing every protocol package)."""
    protocols()
    return dict(sorted(_CONTROLS.items()))


@dataclass(repr=False)
class ControlResult(ResultDisplay):
    """What ``run_control`` measured; ``results`` is what ``control.json`` holds."""

    out_dir: Path
    results: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.results.get("passed"))

    def _name(self) -> str:
        return f"{self.results.get('protocol', '?')} control"

    def summary_rows(self) -> list[dict]:
        r, rows = self.results, []
        for d in r.get("untouched", []):
            rows.append({"metric": f"untouched, seed {d['seed']}: {d['measure']}",
                         "value": {"value": d["value"], "lo": d["lo"], "hi": d["hi"]}})
        for s, runs in r.get("planted", {}).items():
            for d in runs:
                rows.append({"metric": f"planted x{s}, seed {d['seed']}: {d['measure']}",
                             "value": {"value": d["value"], "lo": d["lo"], "hi": d["hi"]}})
        rows.append({"metric": "control passed (planted detected, untouched not)",
                     "value": r.get("passed")})
        if "mde_strength" in r:
            rows.append({"metric": "smallest planted strength detected in 80% of seeds",
                         "value": r["mde_strength"]})
        return rows

    def report(self) -> Path:
        return self.out_dir / "control.md"


def _with_seed(cfg: Any, seed: int) -> Any:
    names = {f.name for f in dataclasses.fields(cfg)}
    return dataclasses.replace(cfg, seed=seed) if "seed" in names else cfg


def _det_row(det: Detection, seed: int) -> dict:
    return {**det.to_dict(), "seed": seed}


def _final_results(run_dir: Path) -> Optional[dict]:
    """The run folder's results.json as a dict when it is final; None when it is missing,
    unreadable, or marked ``"partial": true`` (a protocol that saves as it goes)."""
    f = Path(run_dir) / "results.json"
    if not f.exists():
        return None
    try:
        res = json.loads(f.read_text(encoding="utf-8"))
        return None if res.get("partial", False) else res
    except (json.JSONDecodeError, AttributeError):
        return None


def finished(run_dir: Path) -> bool:
    """A run folder holds a final results.json (a protocol that saves as it goes marks its
    intermediate results ``"partial": true``; those runs are resumed, not reused)."""
    return _final_results(run_dir) is not None


_TIMING = "timing.json"


def _seconds(d: Path) -> Optional[float]:
    """The seconds recorded in ``d/timing.json`` when the run (or plant) was made; None if not."""
    try:
        return float(json.loads((Path(d) / _TIMING).read_text(encoding="utf-8"))["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _one(proto, lm, cfg, run_dir: Path) -> dict:
    """Run (or reuse) the protocol into ``run_dir``; its results.json as a dict. A fresh run
    records its wall seconds in ``run_dir/timing.json`` (the control's compute from scratch)."""
    res = _final_results(run_dir)
    if res is not None:
        log.info("control: reusing %s", run_dir)
    else:
        t0 = time.time()
        proto.run(lm, cfg, run_dir)
        res_file = run_dir / "results.json"
        if not res_file.exists():
            raise RuntimeError(f"protocol {proto.name} wrote no results.json in {run_dir}")
        write_json(run_dir / _TIMING, {"seconds": round(time.time() - t0, 2)})
        log.info("control: %s done in %.0f s", run_dir, time.time() - t0)
        res = json.loads(res_file.read_text(encoding="utf-8"))
    res.setdefault("run_dir", str(run_dir))  # detect may read files the run wrote beside it
    return res


def _fmt(d: dict) -> str:
    def n(x):
        return "–" if x is None else f"{x:.3g}"
    return f"{n(d['value'])} [{n(d['lo'])}, {n(d['hi'])}]"


def _markdown(r: dict) -> str:
    meas = (r["untouched"] or [{}])[0].get("measure", "effect")
    side = {1: f"; detected only above {r['null']:g}", -1: f"; detected only below {r['null']:g}"}.get(
        (r["untouched"] or [{}])[0].get("direction", 0), "")
    lines = [f"| {r['protocol']} control | {meas} (95% interval; no effect = {r['null']:g}{side}) | "
             "detected in |", "|---|---|---|"]
    k = len(r["untouched"])
    lines.append(f"| untouched model ({r['model']}) | "
                 + "; ".join(f"s{d['seed']}: {_fmt(d)}" for d in r["untouched"])
                 + f" | {sum(d['detected'] for d in r['untouched'])}/{k} seeds |")
    for s, runs in r["planted"].items():
        lines.append(f"| planted x{s}: {r['effects'][s].get('summary', r['effects'][s].get('kind', ''))} | "
                     + "; ".join(f"s{d['seed']}: {_fmt(d)}" for d in runs)
                     + f" | {sum(d['detected'] for d in runs)}/{len(runs)} seeds |")
    verdict = "PASSED" if r["passed"] else "FAILED"
    lines.append("")
    lines.append(f"Positive control {verdict}: the planted effect at x{r['full_strength']:g} "
                 f"{'is' if r['planted_detected'] else 'is not'} detected in every seed; the "
                 f"untouched model {'reports no effect' if not r['untouched_detected'] else 'shows an effect'}"
                 " in every seed." if r["passed"] else
                 f"Positive control {verdict}: planted detected in every seed: "
                 f"{r['planted_detected']}; untouched model free of detections: "
                 f"{not r['untouched_detected']}.")
    if r.get("mde_strength") is not None:
        lines.append(f"Smallest planted strength detected in 80% of seeds: x{r['mde_strength']:.3g}.")
    return "\n".join(lines) + "\n"


def _plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    pts = [(0.0, d) for d in r["untouched"]] + [
        (float(s), d) for s, runs in r["planted"].items() for d in runs]
    for x, d in pts:
        if d["value"] is None:
            continue
        lo = d["value"] - (d["lo"] if d["lo"] is not None else d["value"])
        hi = (d["hi"] if d["hi"] is not None else d["value"]) - d["value"]
        ax.errorbar(x + 0.02 * d["seed"], d["value"], yerr=[[lo], [hi]], fmt="o",
                    color="C1" if d["detected"] else "C0", capsize=3)
    ax.axhline(r["null"], color="grey", lw=1, ls="--", label="no effect")
    ax.set_xlabel("planted strength (0 = untouched model)")
    ax.set_ylabel(r["untouched"][0]["measure"][:40] if r["untouched"] else "effect")
    ax.set_title(f"{r['protocol']}: positive control (orange = detected)")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    save_figure(path, fig)


def run_control(name: str, lm, cfg, out_dir, strengths: Optional[Sequence[float]] = None,
                seeds: Optional[Sequence[int]] = None) -> ControlResult:
    """Run protocol ``name`` on ``lm`` untouched and with its planted effect at each strength,
    for each seed (default: the config's seed). Resumes from the run folders already there."""
    protos = protocols()  # imports every protocol package, which registers its control
    ctrls = dict(_CONTROLS)
    if name not in protos:
        raise BadInputError(f"no protocol {name!r}; registered: {', '.join(protos)}")
    if name not in ctrls:
        have = ", ".join(ctrls) or "none yet"
        raise BadInputError(f"protocol {name!r} has no registered positive control "
                            f"(controls: {have}); register one with @control in its package")
    spec, proto = ctrls[name], protos[name]
    strengths = tuple(float(s) for s in (strengths or spec.strengths))
    if any(not (s > 0 and math.isfinite(s)) for s in strengths):
        raise BadInputError(f"control strengths must be positive; got {strengths}")
    if spec.configure is not None:
        cfg = spec.configure(cfg)
    seeds = tuple(seeds) if seeds else (getattr(cfg, "seed", 0),)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_runs, done, t0 = len(seeds) * (1 + len(strengths)), 0, time.time()

    def tick(what: str) -> None:
        nonlocal done
        done += 1
        log.info("control %s: %d/%d runs (%s), %.1f min elapsed", name, done, n_runs, what,
                 (time.time() - t0) / 60)

    untouched = []
    for s in seeds:
        res = _one(proto, lm, _with_seed(cfg, s), out / "untouched" / f"seed{s}")
        untouched.append(_det_row(spec.detect(res), s))
        tick(f"untouched seed {s}")
    planted, effects = {}, {}
    for st in strengths:
        key = f"{st:g}"
        model_dir = out / f"planted-{key}" / "model"
        fresh, tp = not (model_dir.exists() and any(model_dir.iterdir())), time.time()
        p = spec.plant(lm, cfg, model_dir, st)
        if fresh and model_dir.is_dir():  # built now, not reused: its build time
            write_json(model_dir / _TIMING, {"seconds": round(time.time() - tp, 2)})
        try:
            effects[key] = p.effect
            rows = []
            for s in seeds:
                rc = _with_seed(cfg, s)
                if spec.reference is not None:
                    rc = spec.reference(rc, out / "untouched" / f"seed{s}")
                res = _one(proto, p.lm, rc, out / f"planted-{key}" / f"seed{s}")
                rows.append(_det_row(spec.detect(res), s))
                tick(f"planted x{key} seed {s}")
            planted[key] = rows
        finally:
            if p.close is not None:
                p.close()
    full = f"{max(strengths):g}"
    r = {"protocol": name, "model": getattr(lm, "name", "?"), "seeds": list(seeds),
         "strengths": list(strengths), "full_strength": max(strengths),
         "null": untouched[0]["null"] if untouched else 0.0,
         "untouched": untouched, "planted": planted, "effects": effects,
         "planted_detected": all(d["detected"] for d in planted[full]),
         "untouched_detected": any(d["detected"] for d in untouched),
         "detect_rate": {k: sum(d["detected"] for d in v) / len(v) for k, v in planted.items()},
         "minutes": (time.time() - t0) / 60}
    dirs = ([out / "untouched" / f"seed{s}" for s in seeds]
            + [out / f"planted-{k}" / f"seed{s}" for k in planted for s in seeds]
            + [m for k in planted if (m := out / f"planted-{k}" / "model").is_dir()])  # hooks: none
    secs = {str(d.relative_to(out)): _seconds(d) for d in dirs}
    # wall minutes of every run and plant as recorded when each was made (a resumed control's
    # "minutes" count only this call); untimed: made before timings were kept, or a plant whose
    # work_dir is filled by another (a shared adapter)
    r["compute_minutes"] = round(sum(v for v in secs.values() if v is not None) / 60, 2)
    r["untimed"] = sorted(k for k, v in secs.items() if v is None)
    r["passed"] = r["planted_detected"] and not r["untouched_detected"]
    if len(strengths) > 1:
        r["mde_strength"] = mde_from_curve(strengths, [r["detect_rate"][f"{s:g}"] for s in strengths])
    write_json(out / "control.json", r)
    write_text(out / "control.md", _markdown(r))
    _plot(r, out / "control.png")
    return ControlResult(out, r)
