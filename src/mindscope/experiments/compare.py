"""Put two models' headline tables side by side (base vs instruct, issue 24).

``python -m mindscope.experiments.compare DIR_A DIR_B [...]`` reads each folder's
``headline.json`` (what ``python -m mindscope.experiments.seeds PROTOCOL -m MODEL -o DIR``
writes) and prints one markdown table: a row per headline measure, a column per model (with its
chat format), each cell the across-seed mean (or the one seed's value) with that run's interval.
Rows are paired by position (every model gets the same extractor, so the same rows in the same
order); where the measure's wording differs between models (a layer index) both are shown.

>>> a = {"model": "a", "seeds": [0], "rows": [{"measure": "r", "per_seed": [
...     {"seed": 0, "value": 0.5, "lo": 0.25, "hi": 0.75, "n": 8}], "n": 8}]}
>>> print(compare_md([a, {**a, "model": "b"}]).splitlines()[2])
| r | 0.5 [0.25, 0.75] (n=8) | 0.5 [0.25, 0.75] (n=8) |
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["compare_md", "read_headline"]


def _f(x) -> str:
    if x is None:
        return "–"
    x = float(x)
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"


def _cell(row: Optional[dict]) -> str:
    if row is None:
        return "–"
    per = row.get("per_seed") or []
    if len(per) == 1:
        p = per[0]
        ci = f" [{_f(p['lo'])}, {_f(p['hi'])}]" if p.get("lo") is not None else ""
        n = f" (n={p['n']})" if p.get("n") is not None else ""
        return f"{_f(p.get('value'))}{ci}{n}".replace("|", "\\|")
    vals = [p.get("value") for p in per if p.get("value") is not None]
    mean = sum(vals) / len(vals) if vals else None
    each = "; ".join(f"s{p['seed']}: {_f(p.get('value'))}" for p in per)
    return f"mean {_f(mean)} ({each})".replace("|", "\\|")


def read_headline(folder) -> dict:
    """``folder/headline.json`` with the run's ``chat_format`` (from a seed's run_config.json)."""
    folder = Path(folder)
    f = folder / "headline.json"
    if not f.exists():
        raise SystemExit(f"error: {f} does not exist; run python -m mindscope.experiments.seeds "
                         f"PROTOCOL -m MODEL -o {folder} first")
    head = json.loads(f.read_text(encoding="utf-8"))
    for rc in sorted(folder.glob("seed*/run_config.json")):
        head.setdefault("chat_format", json.loads(rc.read_text(encoding="utf-8")).get("chat_format"))
    return head


def compare_md(heads: Sequence[dict]) -> str:
    """One markdown table of the headline rows of ``heads`` (paired by position)."""
    cols = [f"{h.get('model') or '?'} ({h.get('chat_format') or 'chat format not recorded'}; "
            f"seeds {h.get('seeds')})" for h in heads]
    lines = ["| measure | " + " | ".join(c.replace("|", "\\|") for c in cols) + " |",
             "|---|" + "---|" * len(heads)]
    for i in range(max(len(h.get("rows", [])) for h in heads)):
        rows = [h["rows"][i] if i < len(h.get("rows", [])) else None for h in heads]
        names = list(dict.fromkeys(r["measure"] for r in rows if r is not None))
        measure = " / ".join(names).replace("|", "\\|")
        lines.append(f"| {measure} | " + " | ".join(_cell(r) for r in rows) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mindscope.experiments.compare",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", help="seeds output folders (each with headline.json)")
    a = ap.parse_args(argv)
    print(compare_md([read_headline(f) for f in a.folders]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
