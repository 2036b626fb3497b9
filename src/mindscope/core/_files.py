"""Reading files from elsewhere safely: one error type for bad input, JSON with a size cap and a
depth check (JSON bombs), relative paths that must stay inside their folder, and safetensors
headers checked before a tensor is allocated. Nothing here ever unpickles. Writing: whole folders
built in a temp folder and moved into place (``atomic_dir``).

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "x.json")
>>> _ = open(p, "w").write('{"a": [1, 2]}')
>>> read_json(p, expect=dict)["a"]
[1, 2]
>>> _ = open(p, "w").write("[" * 500 + "]" * 500)
>>> try: read_json(p)
... except BadInputError as e: print(e.path == p, e.problem[:36])
True JSON nested 101+ levels deep (the li
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Any, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]
MAX_JSON_BYTES = 64 << 20
"""Default size cap of a JSON file (64 MiB): the manifest of a billion-token store is ~20 MiB."""
MAX_JSON_DEPTH = 100
"""Default nesting cap: every mindscope JSON file is less than 10 levels deep."""


class BadInputError(ValueError):
    """A file mindscope reads is missing parts, corrupt, of the wrong kind, or hostile.

    The message names the file, the problem and the fix; ``path``, ``problem`` and ``fix`` are
    also attributes. A ``ValueError`` so callers catching that keep working."""

    def __init__(self, path: Optional[PathLike], problem: Optional[str] = None, fix: str = ""):
        if problem is None:  # BadInputError("a whole message")
            path, problem = None, str(path)
        self.path, self.problem, self.fix = (None if path is None else str(path)), problem, fix
        msg = f"{path}: {problem}" if path is not None else problem
        super().__init__(msg + (f". {fix}" if fix else ""))

    def __reduce__(self):  # picklable across processes (multiprocessing, pytest-xdist)
        return (type(self), (self.path, self.problem, self.fix))


def json_depth(obj: Any, limit: int = 1 << 30) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), walked without recursion; stops
    counting past ``limit``."""
    deepest, stack = 0, [(obj, 1)] if isinstance(obj, (dict, list)) else []
    while stack:
        o, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            break
        for v in (o.values() if isinstance(o, dict) else o):
            if isinstance(v, (dict, list)):
                stack.append((v, d + 1))
    return deepest


def read_json(path: PathLike, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH,
              expect: Optional[type] = None, what: str = "JSON file", fix: str = "") -> Any:
    """Parse the JSON file ``path`` with guards: at most ``max_bytes`` bytes, ``max_depth``
    levels of nesting, valid UTF-8, and (``expect=dict``/``list``) the right top-level type.
    Missing file: FileNotFoundError; anything else wrong: BadInputError naming the file."""
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise BadInputError(p, f"is not a regular file (a {what} was expected here)", fix)
        raise FileNotFoundError(f"{p}: no such {what}" + (f". {fix}" if fix else ""))
    size = p.stat().st_size
    if size > max_bytes:
        raise BadInputError(p, f"{what} is {size:,} bytes, over the {max_bytes:,}-byte limit "
                               "(not a file mindscope wrote, or damaged)", fix)
    with open(p, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew while we looked (a device or a pipe)
        raise BadInputError(p, f"{what} is over the {max_bytes:,}-byte limit", fix)
    return loads_checked(data, p, max_depth=max_depth, expect=expect, what=what, fix=fix)


def loads_checked(data: Union[bytes, str], where: Any, *, max_depth: int = MAX_JSON_DEPTH,
                  expect: Optional[type] = None, what: str = "JSON", fix: str = "") -> Any:
    """``json.loads`` of text from ``where`` (a file, or ``file:line``) with the depth and type
    checks of ``read_json``; every failure is a BadInputError naming ``where``."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if not data.strip():
        raise BadInputError(where, f"{what} is empty", fix or "restore the file or write it again")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadInputError(where, f"{what} is not UTF-8 text (byte {e.start}); binary or "
                                   "damaged", fix) from None
    try:
        obj = json.loads(text)
    except RecursionError:
        raise BadInputError(where, f"{what} is nested too deeply to parse", fix) from None
    except ValueError as e:  # JSONDecodeError, or an over-long integer literal
        msg = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(
            e, json.JSONDecodeError) else str(e)[:200]
        raise BadInputError(where, f"not valid JSON ({msg}); the {what} is truncated or "
                                   "damaged", fix) from None
    depth = json_depth(obj, max_depth)
    if depth > max_depth:
        raise BadInputError(where, f"JSON nested {depth}+ levels deep (the limit is {max_depth}; "
                                   f"a {what} is shallow): not a file mindscope wrote", fix)
    if expect is not None and not isinstance(obj, expect):
        want = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise BadInputError(where, f"{what} should hold {want}, not {type(obj).__name__}", fix)
    return obj


def inside(root: PathLike, rel: Any, where: Any, what: str = "path") -> Path:
    """``root / rel`` for a relative path recorded in a file (``where``), refusing absolute
    paths, ``..`` and symlinks that lead out of ``root`` (BadInputError)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise BadInputError(where, f"{what} {rel!r} is not a file name")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or "\\" in rel:
        raise BadInputError(where, f"{what} {rel!r} leaves the folder {root} (absolute or '..'); "
                                   "refused: files may only name files inside their own folder")
    root_r = Path(root).resolve()
    p = Path(root) / rel
    r = p.resolve()
    if r != root_r and root_r not in r.parents:
        raise BadInputError(where, f"{what} {rel!r} is a symlink to {r}, outside {root}; refused "
                                   "(copy the file into the folder instead of linking it)")
    return p


def need(d: dict, key: str, kind, where: Any, what: str = "") -> Any:
    """``d[key]`` checked to be of ``kind`` (a type or tuple; ints are not bools, a float must
    be finite); BadInputError naming ``where`` otherwise."""
    label = f"{what}{'.' if what else ''}{key}"
    if not isinstance(d, dict) or key not in d:
        raise BadInputError(where, f"field {label!r} is missing",
                            "the file is incomplete or not of this kind")
    v = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(v, kinds) and not (isinstance(v, bool) and bool not in kinds)
    if ok and isinstance(v, float) and not math.isfinite(v):
        ok = False
    if not ok:
        names = "/".join(k.__name__ for k in kinds)
        raise BadInputError(where, f"field {label!r} should be {names}, got {_short(v)}")
    return v


def need_int(d: dict, key: str, where: Any, lo: int = 0, hi: int = 2 ** 40, what: str = "") -> int:
    """An integer field in [lo, hi] (integral floats like 64.0 accepted)."""
    v = need(d, key, (int, float), where, what)
    if isinstance(v, float):
        if not v.is_integer():
            raise BadInputError(where, f"field {what + '.' if what else ''}{key!r} should be an "
                                       f"integer, got {v}")
        v = int(v)
    if not lo <= v <= hi:
        raise BadInputError(where, f"field {what + '.' if what else ''}{key!r} = {v} is out of "
                                   f"range [{lo}, {hi}]")
    return v


def _short(v) -> str:
    s = repr(v)
    return f"{type(v).__name__} {s[:60]}{'...' if len(s) > 60 else ''}"


def safetensors_header(path: PathLike, what: str = "safetensors file", fix: str = "") -> tuple:
    """(tensors {name: (dtype str, shape list)}, metadata dict) of a safetensors file, read from
    its JSON header without loading a tensor; BadInputError for anything malformed (truncated,
    a header bigger than the file, offsets past its end, not safetensors at all)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such {what}" + (f". {fix}" if fix else ""))
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise BadInputError(p, f"{what} is {size} bytes, too short to be safetensors "
                                   "(empty or truncated)", fix)
        n = int.from_bytes(head, "little")
        if n > min(size - 8, 100 << 20):
            raise BadInputError(p, f"{what} header claims {n:,} bytes but the file has {size:,}: "
                                   "truncated or not a safetensors file", fix)
        raw = fh.read(n)
    h = loads_checked(raw, p, max_depth=8, expect=dict, what=f"{what} header", fix=fix)
    meta = h.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise BadInputError(p, f"{what} metadata is not a string map", fix)
    out, end = {}, 0
    for name, t in h.items():
        if not (isinstance(t, dict) and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list) and isinstance(t.get("data_offsets"), list)
                and len(t["data_offsets"]) == 2
                and all(isinstance(x, int) and x >= 0 for x in t["shape"] + t["data_offsets"])):
            raise BadInputError(p, f"{what}: tensor entry {name!r} is malformed", fix)
        end = max(end, t["data_offsets"][1])
        out[name] = (t["dtype"], list(t["shape"]))
    if 8 + n + end > size:
        raise BadInputError(p, f"{what} is truncated: its tensors need {8 + n + end:,} bytes, the "
                               f"file has {size:,}", fix)
    return out, meta


def safetensors_json_meta(path: PathLike, key: str, what: str, fix: str = "",
                          max_depth: int = 16) -> tuple[dict, dict]:
    """(tensor header, parsed ``metadata[key]``) of a safetensors file that keeps its own state
    as JSON in one metadata entry (trainer checkpoints, feature states); the header is checked
    as in ``safetensors_header``, a missing key or bad JSON is a BadInputError naming the file."""
    header, meta = safetensors_header(path, what, fix)
    if key not in meta:
        raise BadInputError(path, f"has no {key!r} metadata: not a {what}", fix)
    return header, loads_checked(meta[key], path, max_depth=max_depth, expect=dict,
                                 what=f"{what} metadata", fix=fix)


def load_safetensors(path: PathLike, what: str = "safetensors file", fix: str = "",
                     device: str = "cpu") -> dict:
    """``safetensors.torch.load_file`` with a checked header first and every library error
    turned into a BadInputError naming the file (never pickle)."""
    from safetensors.torch import load_file

    safetensors_header(path, what, fix)
    try:
        return load_file(str(path), device=device)
    except Exception as e:  # noqa: BLE001 - safetensors' error types differ across versions
        raise BadInputError(path, f"{what} cannot be read ({str(e)[:200]}); corrupt or "
                                  "truncated", fix) from None


def count_nonfinite(t) -> int:
    """NaN/Inf entries of tensor/array ``t`` (0 for integer types), counted 2^20 at a time: no
    mask as large as ``t`` (a whole-tensor ``isfinite`` makes one as large as the weights)."""
    import torch

    x = torch.as_tensor(t)
    if not (x.is_floating_point() or x.is_complex()):
        return 0
    return sum(int((~torch.isfinite(part)).sum()) for part in x.detach().reshape(-1).split(2 ** 20))


def check_finite(t, where: Any, name: str, fix: str = "") -> None:
    """BadInputError if tensor/array ``t`` holds NaN or Inf (counted, ``count_nonfinite``)."""
    import torch

    x = torch.as_tensor(t)
    bad = count_nonfinite(x)
    if bad:
        raise BadInputError(where, f"{name} holds {bad} NaN/Inf value(s) of {x.numel()}",
                            fix or "the file is damaged or was written by a diverged run")


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` all at once: a temp file in the same folder (fsynced, mode
    0644) is renamed over it, so a reader sees the old file or the new one, never a torn one;
    on any error the temp file is removed and ``path`` is left as it was."""
    return _atomic(path, lambda tmp: _write_synced(tmp, data))


def atomic_write_text(path: PathLike, text: str) -> Path:
    """``atomic_write_bytes`` of UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """Indented, key-sorted JSON written with ``atomic_write_bytes``."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_tensors(path: PathLike, tensors: dict, metadata: Optional[dict] = None) -> Path:
    """``safetensors.torch.save_file`` (tensors moved to CPU, made contiguous) written the way
    ``atomic_write_bytes`` writes."""
    from safetensors.torch import save_file

    return _atomic(path, lambda tmp: save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata))


def atomic_write(path: PathLike, write: Callable[[str], Any]) -> Path:
    """The generic form: ``write(tmp)`` fills a temp file in ``path``'s folder (any writer that
    takes a file name: ``pq.write_table``, ``fig.savefig(tmp, format="png")``, a GGUF writer),
    which is then renamed over ``path`` (mode 0644); on any error the temp file is removed and
    ``path`` is left as it was."""
    return _atomic(path, write)


def _write_synced(tmp: str, data: bytes) -> None:
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _atomic(path: PathLike, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


@contextlib.contextmanager
def atomic_dir(out: PathLike) -> Iterator[Path]:
    """Build the folder ``out`` all at once: the block writes into the empty temp folder it is
    given (a sibling of ``out``); when it ends without error the temp folder takes ``out``'s
    place (an existing ``out`` is replaced whole). On any error, KeyboardInterrupt included, the
    temp folder is deleted and ``out`` is left as it was, so readers never see a half-built one.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "run"
    >>> with atomic_dir(out) as tmp:
    ...     _ = (tmp / "done.txt").write_text("ok")
    >>> sorted(p.name for p in out.iterdir())
    ['done.txt']
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        old = None
        if out.exists() or out.is_symlink():  # os.replace cannot overwrite a non-empty folder
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            if old is not None:  # put the previous folder back
                os.replace(old / out.name, out)
                old.rmdir()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = ["BadInputError", "read_json", "atomic_dir", "atomic_write", "loads_checked", "inside", "need",
           "need_int", "safetensors_header", "safetensors_json_meta", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_json", "atomic_save_tensors", "load_safetensors", "check_finite", "json_depth",
           "MAX_JSON_BYTES", "MAX_JSON_DEPTH"]


# ---- the settings guard of resumable run folders ------------------------------------------
def settings_diff(old: Any, new: Any, prefix: str = "") -> list:
    """Dotted keys whose values differ between two settings dicts (nested dicts walked)."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return [prefix or "settings"] if old != new else []
    out: list = []
    for k in sorted(set(old) | set(new), key=str):
        key = f"{prefix}.{k}" if prefix else str(k)
        a, b = old.get(k, "<absent>"), new.get(k, "<absent>")
        out += settings_diff(a, b, key) if isinstance(a, dict) and isinstance(b, dict) else \
            ([key] if a != b else [])
    return out


def guard_settings(record: PathLike, settings: dict, key: str = "config", what: str = "a run",
                   fix: str = "use another --out") -> None:
    """Refuse to resume into a folder made with other settings: ``record`` is the folder's JSON
    record holding ``{key: settings}``; when it exists and its settings differ, raise
    BadInputError naming the differing keys (the demo and ``eval`` share this guard)."""
    rec = Path(record)
    if not rec.exists():
        return
    try:
        old = json.loads(rec.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadInputError(f"{rec} is not valid JSON ({e}); delete it or {fix}") from None
    have = old.get(key) if isinstance(old, dict) else None
    new = json.loads(json.dumps(settings, default=str))  # compare as JSON, as it was stored
    if have != new:
        diff = settings_diff(have if isinstance(have, dict) else {}, new)
        raise BadInputError(f"{rec.parent} holds {what} with other settings (differ: {diff}); "
                            f"{fix}")
