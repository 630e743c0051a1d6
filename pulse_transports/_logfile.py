"""The on-disk layout of run logs, their locks and small file helpers.

This module owns the paths under ``<home>``::

    logs/training/<training_id>.jsonl   the run's events, one JSON line each
    logs/training/<training_id>.lock    held (flock) by the one live writer

Lock: the writer holds an exclusive ``flock`` on ``<id>.lock`` for the life of
the run; a second writer for the same id is refused with
:class:`~pulse_core.errors.RunLocked`. A reader that can take the lock knows
the writer is gone -- an OS fact that survives pid reuse.

Private to the file transport (:mod:`pulse_transports.file` re-exports the
public names); must not import other pulse_transports modules.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Final

import orjson

from pulse_core.errors import DecodeError, RunExists, RunLocked
from pulse_core.events import TERMINAL_STATUSES
from pulse_core.state import RunState
from pulse_transports.homemode import open_file

#: Seconds a new writer waits for a run's lock before RunLocked (see _flock_waiting).
LOCK_WAIT: Final = 1.0


#: The run logs' folder under the home.
LOG_SUBDIR: Final = ("logs", "training")


def log_dir(home: Path) -> Path:
    """Where the run logs live: ``<home>/logs/training``."""
    return Path(home).joinpath(*LOG_SUBDIR)


def log_path(home: Path, training_id: str) -> Path:
    """The log file of one run."""
    return log_dir(home) / f"{training_id}.jsonl"


def lock_path(home: Path, training_id: str) -> Path:
    """The lock file a run's writer holds."""
    return log_dir(home) / f"{training_id}.lock"


def run_file(home: Path | str, training_id: str, suffix: str) -> str:
    """A run's file (*suffix* ``.jsonl`` or ``.lock``) as a plain string.

    For code that handles every run of a home again and again (the hub):
    pathlib interns each component of every path it parses (CPython 3.11),
    so per-run file names through it grow a table that never shrinks.
    """
    return os.path.join(home, *LOG_SUBDIR, training_id + suffix)


def writer_alive(home: Path, training_id: str) -> bool | None:
    """Tell whether a writer holds the run's lock.

    Returns:
        True if a live process holds it, False if it is free or absent
        (the writer is gone), None if it could not be checked.
    """
    path = run_file(home, training_id, ".lock")
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return None
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _flock_waiting(fd: int, wait: float) -> None:
    """Take an exclusive lock, retrying for up to *wait* seconds.

    A supervisor (``pulse run``, a Flow step) holds a run's lock for a few
    milliseconds while it appends its own lines; a child opening the same run
    then waits instead of being refused. A second real writer still is.

    Raises:
        BlockingIOError: if the lock is still held after *wait* seconds.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def refuse_ended(state: RunState, training_id: str, path: Path) -> None:
    """Raise RunExists if *state* (the fold of the log at *path*) is a run that already ended."""
    if state.status not in TERMINAL_STATUSES:
        return
    when = ""
    if state.finished_at is not None:
        when = time.strftime(" at %Y-%m-%d %H:%M:%S", time.localtime(state.finished_at))
    how = f"{state.status}: {state.message}" if state.message else state.status
    raise RunExists(
        f"training_id {training_id!r} is a run that already ended ({how}){when}; "
        f"events of a new run under this id would be shown by no reader. Use a new "
        f"training_id, or delete its log {path} to reuse the id.",
        training_id=training_id,
        status=state.status,
        path=str(path),
    )


def take_lock(lock: Path, training_id: str, log_file: Path, wait: float = LOCK_WAIT) -> int:
    """Open and flock *lock* exclusively; the fd, or RunLocked if it is held."""
    for _ in range(20):
        fd = open_file(lock, os.O_RDWR | os.O_CREAT)
        try:
            _flock_waiting(fd, wait)
        except BlockingIOError:
            holder = _read_holder(lock)
            os.close(fd)
            raise RunLocked(
                f"training_id {training_id!r} is already being written by another "
                f"writer{holder}; two writers for one run are refused. Its log is "
                f"{log_file}; use another training_id or wait for that run to end."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # The previous holder unlinks the file as it lets go: if it did so
        # between our open and our flock we hold a lock nobody else sees.
        try:
            now_there = os.stat(lock)
            mine = os.fstat(fd)
            same = (now_there.st_dev, now_there.st_ino) == (mine.st_dev, mine.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    raise OSError(errno.EAGAIN, f"could not take the lock {lock}: it keeps being replaced")


def last_seq(path: Path, window: int = 1 << 16) -> int | None:
    """The highest seq among the decodable lines at the end of a log."""
    from pulse_core.codec import decode  # here: readers of the index (pulse ls) never decode

    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        while True:
            start = max(0, size - window)
            handle.seek(start)
            lines = handle.read(size - start).splitlines()
            if start > 0:
                lines = lines[1:]  # the first may be cut
            seqs = []
            for line in lines:
                try:
                    seqs.append(decode(line).seq)
                except DecodeError:
                    continue
            if seqs or start == 0:
                return max(seqs) if seqs else None
            window *= 4


def ends_with_newline(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def _read_holder(lock: Path) -> str:
    try:
        info = orjson.loads(lock.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return ""
    if isinstance(info, dict):
        return f" (pid {info.get('pid')} on {info.get('host')})"
    return ""


def write_file(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write *data* to *path* (created or truncated), fsync it; remove it on an error."""
    try:
        fd = open_file(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        discard(path)
        raise


def replace(tmp: Path, path: Path) -> None:
    """Rename *tmp* over *path*; if that fails, remove *tmp* and raise."""
    try:
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def discard(path: Path) -> None:
    """Remove a temp file if it is there (a failure to is no error)."""
    with contextlib.suppress(OSError):
        path.unlink()


def write_json_atomic(path: Path, value: Any, fsync: bool = True) -> None:
    """Write *value* as JSON to *path* atomically: temp file, fsync, rename.

    A reader sees the old file or the new one, never a part of either.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    write_file(tmp, orjson.dumps(value), fsync)
    replace(tmp, path)


def write_lock_info(fd: int) -> None:
    """Say who holds the lock in the lock file (pid, host, since)."""
    os.ftruncate(fd, 0)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
    os.write(fd, orjson.dumps(info))


def read_lock_info(home: Path | str, training_id: str) -> Any:
    """What :func:`write_lock_info` wrote in a run's lock file (decoded JSON).

    Raises:
        OSError: the lock file cannot be read.
        orjson.JSONDecodeError: it holds no JSON (being written, or foreign).
    """
    with open(run_file(home, training_id, ".lock"), "rb") as lock:
        return orjson.loads(lock.read())


def retake_lock(lock: Path, lock_fd: int) -> int | None:
    """Hold the lock at *lock*'s path again if it was deleted or replaced.

    Returns:
        The fd now holding the lock (the caller closes *lock_fd* if it
        differs), or None if another writer holds the file now at the path.
    """
    try:
        there = os.stat(lock)
        mine = os.fstat(lock_fd)
        if (there.st_dev, there.st_ino) == (mine.st_dev, mine.st_ino):
            return lock_fd
    except FileNotFoundError:
        pass
    fd = open_file(lock, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    write_lock_info(fd)
    return fd
