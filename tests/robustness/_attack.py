"""Helpers of the robustness suite: what a clean error is, and hostile file contents."""
import shutil
import traceback
from pathlib import Path

import pytest

from mindscope.core import BadInputError

SRC = str(Path(__file__).resolve().parents[2] / "src" / "mindscope")


def clean_error(fn, *names, allow=()):
    """Call ``fn``; it must raise BadInputError (or FileNotFoundError / ``allow``) from mindscope
    code, with a message naming one of ``names`` (file names). Returns the exception."""
    with pytest.raises(Exception) as ei:
        fn()
    e = ei.value
    ok = (BadInputError, FileNotFoundError) + tuple(allow)
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    assert isinstance(e, ok), f"unclean error {type(e).__name__}: {e}\n{tb}"
    msg = str(e)
    assert not names or any(str(n) in msg for n in names), f"error does not name {names}: {msg}"
    last = traceback.extract_tb(e.__traceback__)[-1].filename
    assert "mindscope" in last, f"raised from outside mindscope ({last}):\n{tb}"
    return e


def deep_json(depth: int) -> str:
    return "[" * depth + "]" * depth


def sparse_file(path: Path, size: int) -> None:
    """A file of ``size`` bytes that takes no disk (a 'huge' input)."""
    with open(path, "wb") as fh:
        fh.truncate(size)


def hostile_texts():
    """(label, bytes) of hostile JSON-file contents."""
    return [("empty", b""), ("whitespace", b"  \n"), ("truncated", b'{"format": "mindsc'),
            ("not json", b"\x80\x81 binary \x00\xff"), ("list", b"[1, 2, 3]"),
            ("string", b'"hello"'), ("null", b"null"), ("deep", deep_json(5000).encode()),
            ("deep-ok-parse", deep_json(300).encode()), ("big int", b'{"a": ' + b"9" * 5000 + b"}"),
            ("nan", b'{"a": NaN}'), ("utf16", '{"a": 1}'.encode("utf-16"))]


def copytree(src, dst) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return Path(dst)
