"""An advisory lock on a run folder, so two processes never write into the same one.

``run_lock(folder)`` takes ``fcntl.flock`` on ``<folder>/.lock`` and writes the holder's pid,
host and start time into it. A second process gets ``RunLockedError`` naming that pid at once
(no waiting). The kernel drops the lock when its holder dies, even by SIGKILL, so a stale
``.lock`` file left by a dead process is simply taken over. Within one process the lock is
re-entrant (a sweep holding its folder may run a trainer on the same folder).

>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with run_lock(d, "demo") as lk:
...     with run_lock(d):            # same process: fine
...         pass
...     lk.held
True
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Optional, Union

log = logging.getLogger(__name__)
LOCK_NAME = ".lock"

try:  # POSIX only; elsewhere the lock is a no-op with a warning
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


class RunLockedError(RuntimeError):
    """The folder is being written by another process (its pid is in the message)."""

    def __init__(self, folder, holder: dict):
        self.folder, self.holder = str(folder), holder
        who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
               + (f" ({holder['what']})" if holder.get("what") else "")
               + (f", started {holder['started']}" if holder.get("started") else ""))
        super().__init__(f"{folder} is in use by another mindscope process: {who}. Wait for it to "
                         f"finish or stop it, or write to another folder (lock file "
                         f"{Path(folder) / LOCK_NAME})")

    def __reduce__(self):
        return (type(self), (self.folder, self.holder))


# folder (resolved) -> [fd, count]; re-entrancy within this process
_HELD: dict = {}
_MUTEX = threading.Lock()


def _read_holder(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            d = json.loads(fh.read(4096).decode("utf-8", "replace") or "{}")
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError, TypeError):
        return False
    return True


class RunLock:
    """The lock object; ``acquire()``/``release()`` or use it as a context manager. Released
    when garbage-collected too (and by the kernel when the process ends)."""

    def __init__(self, folder: Union[str, os.PathLike], what: str = ""):
        self.folder = Path(folder)
        self.what = what
        self.held = False
        self._key: Optional[str] = None
        self._fin = None

    def acquire(self) -> "RunLock":
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        key = str(self.folder.resolve())
        with _MUTEX:
            if key in _HELD:
                _HELD[key][1] += 1
            else:
                _HELD[key] = [self._take(), 1]
        self._key, self.held = key, True
        self._fin = weakref.finalize(self, _release, key)
        return self

    def _take(self) -> Optional[int]:
        path = self.folder / LOCK_NAME
        if fcntl is None:  # pragma: no cover
            log.warning("no fcntl on this platform: %s is not locked against other processes",
                        self.folder)
            return None
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLockedError(self.folder, _read_holder(path)) from None
            log.warning("cannot lock %s (%s); continuing without a lock", path, e)
            return None
        old = _read_holder(path)
        if old.get("pid") and old.get("pid") != os.getpid():
            state = "no longer running" if not _alive(old["pid"]) else "lock released"
            log.info("taking over %s from pid %s (%s)", path, old.get("pid"), state)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return fd

    def release(self) -> None:
        if self.held and self._fin is not None:
            self._fin()  # runs _release once
        self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> bool:
        self.release()
        return False


def _release(key: str) -> None:
    with _MUTEX:
        ent = _HELD.get(key)
        if ent is None:
            return
        ent[1] -= 1
        if ent[1] > 0:
            return
        del _HELD[key]
        fd = ent[0]
    if fd is not None:
        try:
            os.ftruncate(fd, 0)  # the file stays (unlinking would race with a new taker)
        except OSError:
            pass
        os.close(fd)  # closing drops the flock


def run_lock(folder: Union[str, os.PathLike], what: str = "") -> RunLock:
    """Lock ``folder`` for writing (context manager): ``with run_lock(out, "harvest"): ...``.
    Raises RunLockedError naming the holding pid if another process has it."""
    return RunLock(folder, what)


def locking(param: str, what: str = ""):
    """Decorator: hold ``run_lock`` on the folder passed as argument ``param`` (unless None)
    for the duration of each call.

    >>> @locking("out")
    ... def job(x, out=None): return x
    >>> job(1)
    1
    """
    import functools
    import inspect

    def deco(fn):
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            folder = sig.bind_partial(*args, **kw).arguments.get(param)
            if folder is None:
                return fn(*args, **kw)
            with run_lock(folder, what or fn.__name__):
                return fn(*args, **kw)
        return wrapper
    return deco


__all__ = ["run_lock", "RunLock", "RunLockedError", "LOCK_NAME", "locking"]
