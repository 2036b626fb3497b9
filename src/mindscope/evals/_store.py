"""The run folder: per-item JSONL (append-only, one record a line) + atomic JSON files.

Each record is written with ONE ``os.write`` on an ``O_APPEND`` descriptor, so concurrent
writers never interleave and a killed run leaves at most one truncated last line; ``load``
detects it, cuts it off and the item is redone. The last complete record per id wins.

>>> import tempfile; d = tempfile.mkdtemp()
>>> s = RunStore(d); s.append({"id": "a", "status": "graded"})
>>> RunStore(d).load()["a"]["status"]
'graded'
"""
from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from ..core import atomic_write_text, loads_checked
from ..core import RunLock

log = logging.getLogger(__name__)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write JSON (indented, UTF-8, non-JSON values as str) with ``core.atomic_write_text``."""
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str))


class RunStore:
    """``folder/items.jsonl`` of per-item records keyed by ``id``."""

    def __init__(self, folder: str | Path, name: str = "items.jsonl"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.lock = RunLock(self.folder, "benchmark run").acquire()
        """Held while this object lives: another process writing here gets RunLockedError."""
        self.path = self.folder / name
        self._lock = threading.Lock()
        self.truncated_lines = 0
        """Broken lines found by ``load`` (cut off / skipped); their items are redone."""

    def load(self) -> dict[str, dict]:
        """{id: last complete record}. A truncated LAST line is removed from the file."""
        if not self.path.exists():
            return {}
        data = self.path.read_bytes()
        out: dict[str, dict] = {}
        good_end = 0
        pos = 0
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            end = pos + len(line) + (0 if last else 1)
            if line.strip():
                try:
                    rec = loads_checked(line, f"{self.path}:{i + 1}", max_depth=64)
                    if not isinstance(rec, dict) or "id" not in rec:
                        raise ValueError("record without id")
                    if last:  # a complete JSON object without its newline: keep it, add the newline
                        raise ValueError("no trailing newline")
                    out[str(rec["id"])] = rec
                    good_end = end
                except ValueError as e:
                    self.truncated_lines += 1
                    if last or all(not x.strip() for x in lines[i + 1:]):
                        log.warning("%s: incomplete last line (%s); cutting it off, the item will be "
                                    "redone", self.path, e)
                        with open(self.path, "r+b") as f:
                            f.truncate(good_end)
                        break
                    log.warning("%s: line %d is not a valid record (%s); skipping it", self.path,
                                i + 1, e)
                    good_end = end
            else:
                good_end = end
            pos = end
        return out

    def append(self, record: dict) -> None:
        """Append one record as one line, atomically (single write on an O_APPEND fd)."""
        line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                n = os.write(fd, line)
                if n != len(line):
                    raise OSError(f"{self.path}: short write ({n} of {len(line)} bytes); disk full?")
            finally:
                os.close(fd)

    def write_json(self, name: str, obj: Any) -> Path:
        return write_json_atomic(self.folder / name, obj)

    def close(self) -> None:
        """Release the folder lock (also done when the object is garbage-collected)."""
        self.lock.release()
