"""The same model with and without interventions, evaluated side by side.

The variants' interventions come from ``--steer`` / ``--cap`` / ``--ablate`` specs, parsed by
the one vector-spec grammar in core (``mindscope.core.spec_interventions``:
``FILE[#KEY][@SITE][:A[:B]]``).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..core import atomic_write_text
from ._items import Item, ItemSet
from ..judges import Judge, make_judge
from ._responders import LMResponder
from ._runner import EvalConfig, EvalResult, run_eval
from ._store import write_json_atomic

log = logging.getLogger(__name__)


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
