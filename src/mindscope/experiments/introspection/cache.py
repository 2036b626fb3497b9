"""Resume for introspection runs: every finished stage (one ``generate`` call's texts, one
readout, the trained bias) is saved as JSON under ``<run>/stages/<settings-hash>/``; a re-run of
the same settings on the same model loads finished stages instead of recomputing them, so a
killed run loses at most the stage it was in. Changed settings hash to a different folder, so
stale stages are never reused.

>>> c = Stages(None)            # no run folder: a pass-through
>>> c("x", lambda: [1, 2])
[1, 2]
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Optional

from ...runs import to_jsonable, write_json

log = logging.getLogger(__name__)
# settings that change no saved stage: progress bars, and the grader (grades are recomputed from
# the saved texts, so a rule-graded run can be re-graded by a judge without generating again)
_VOLATILE = ("progress", "grader", "judge_model")


def settings_key(cfg, lm) -> str:
    """A short hash of every result-changing setting plus the model's name and dtype."""
    d = {k: v for k, v in to_jsonable(cfg).items() if k not in _VOLATILE}
    blob = json.dumps({"cfg": d, "model": lm.name, "dtype": str(lm.dtype)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class Stages:
    """``stages(name, fn)``: the saved value of stage ``name`` if it finished before, else
    ``fn()`` (a JSON-able value), saved atomically before it is returned."""

    def __init__(self, root: Optional[Path]):
        self.root = Path(root) if root is not None else None
        self.loaded = 0
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, fn: Callable):
        if self.root is None:
            return fn()
        p = self.root / f"{name}.json"
        if p.exists():
            try:
                v = json.loads(p.read_text())
                self.loaded += 1
                log.info("resumed stage %s from %s", name, p)
                return v
            except json.JSONDecodeError:  # cannot happen with atomic writes; recompute anyway
                log.warning("stage file %s is unreadable; recomputing it", p)
        v = to_jsonable(fn())
        write_json(p, v)
        return v
