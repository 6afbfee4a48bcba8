"""A run directory's state, its lock and its ``metrics.jsonl``.

``status.json`` holds the state a run last wrote: ``running``, ``completed``, ``failed``,
``diverged`` or ``interrupted``. A run found ``running`` whose lock nobody holds was killed
(``kill -9``, a crashed node): it reads as ``interrupted`` and is resumed by the next invocation.

The lock is ``run.lock``, held with ``flock`` for as long as the run's process lives: the kernel
drops it when the process dies, however it dies, so a lock left by a dead process is recognised
as stale and taken over. The file records the holder's pid and host for ``ablate status``.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any, Optional

from tools.errors import writing

FINAL_STATES = ("completed", "diverged")  # a sweep never reruns these by itself
LOCK_NAME = "run.lock"
EXIT_LOCKED = 3  # `ablate train` exit status when another process holds the run


class RunLocked(RuntimeError):
    """The run is being executed by another live process."""


class RunDirUnwritable(RuntimeError):
    """The run directory (or its lock file) cannot be created or written."""


def write_status(run_dir: Path, state: str, **extra: Any) -> None:
    """``status.json``, written to a temporary file and renamed onto it; a write that fails (a full
    disk: ``OSError(ENOSPC)`` naming ``status.json``) leaves the previous status and no temporary file."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path, tmp = run_dir / "status.json", run_dir / f"status.json.tmp-{os.getpid()}"
    try:
        with writing(path):
            tmp.write_text(json.dumps({"state": state, "time": time.time(), **extra}, indent=1))
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def overwrite_status(run_dir: Path, state: str, **extra: Any) -> None:
    """``status.json`` rewritten in place, for when the disk is full: the file's blocks are already
    allocated, so a status no longer than the previous one needs no new space where a new file
    does. Not atomic (a reader may catch it half-written: it reads ``interrupted``); raises the
    ``OSError`` when it fails too, or when there is no ``status.json`` to rewrite."""
    path = Path(run_dir) / "status.json"
    data = json.dumps({"state": state, "time": time.time(), **extra}).encode()
    with writing(path):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, data)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status; ``pending`` when it never started, ``interrupted`` when it says
    ``running`` but no live process holds its lock."""
    path = Path(run_dir) / "status.json"
    try:
        status = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # never started, or cannot exist there
        return {"state": "pending"}
    except json.JSONDecodeError:
        return {"state": "interrupted", "error": f"{path}: unreadable"}
    if status.get("state") == "running":
        holder = lock_holder(run_dir)
        if holder is None:
            status["state"] = "interrupted"
        else:
            status["holder"] = holder
    return status


class RunLock:
    """Exclusive, non-blocking lock on a run directory; ``with RunLock(d): ...``."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._file = None
        self.stale: Optional[dict] = None  # the previous holder's record, when it had died

    def acquire(self) -> "RunLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+")
        except OSError as err:  # a read-only directory or file system, a missing permission
            where = err.filename or self.path
            raise RunDirUnwritable(f"{where}: cannot write the run directory ({err.strerror})") from err
        for attempt in range(10):  # a status reader holds the lock for microseconds: try again briefly
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 9:
                    time.sleep(0.05)
        else:
            holder = _read_holder(f)
            f.close()
            who = f"pid {holder.get('pid')} on {holder.get('host')}" if holder else "another process"
            raise RunLocked(f"{self.path.parent} is being run by {who} (lock {self.path})")
        self.stale = _read_holder(f)
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(f) -> Optional[dict]:
    f.seek(0)
    text = f.read().strip()
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def lock_holder(run_dir: Path) -> Optional[dict]:
    """The live holder of the run's lock ({pid, host, since}), or None when nobody holds it."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return None
    with open(path, "r") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(f) or {}
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return None


def metric_lines(path: Path) -> list[tuple[str, Optional[dict]]]:
    """Each line of a ``metrics.jsonl`` with its JSON record (None for a line cut short by a kill
    or holding bytes that are not UTF-8: skipped, the latter with a warning)."""
    out, undecodable = [], 0
    for raw in Path(path).read_bytes().splitlines():
        try:
            line = raw.decode("utf-8")
            out.append((line, json.loads(line)))
        except UnicodeDecodeError:
            undecodable += 1
        except json.JSONDecodeError:
            out.append((line, None))
    if undecodable:
        warnings.warn(f"{path}: {undecodable} line(s) that are not UTF-8 were skipped")
    return out


def metric_records(run_dir: Path):
    """The JSON records of a run's ``metrics.jsonl`` (torn or undecodable lines are skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return
    for _line, record in metric_lines(path):
        if isinstance(record, dict):
            yield record


def last_logged(run_dir: Path, key: str) -> Optional[float]:
    """The last value of ``key`` in ``metrics.jsonl`` (for runs that have not finished)."""
    value = None
    for record in metric_records(run_dir):
        value = record.get(key, value)
    return value
