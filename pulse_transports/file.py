"""The durable file transport: one JSONL log per run, and the v1 snapshot.

This module owns the on-disk layout under ``<home>``::

    logs/training/<training_id>.jsonl   the run's events, one JSON line each
    logs/training/<training_id>.lock    held (flock) by the one live writer
    training_status.json                the PULSE v1 snapshot (configurable)

Durability: ``meta``, ``status``, ``error`` and ``dropped`` lines are written
and fsync'ed before the call returns; ``progress``, ``metrics`` and
``heartbeat`` lines are written with one ``write(2)`` each (visible to readers
at once, not fsync'ed: a machine crash may lose the last second of them).

Lock: the writer holds an exclusive ``flock`` on ``<id>.lock`` for the life of
the run; a second writer for the same id is refused with
:class:`~pulse_core.errors.RunLocked`. A reader that can take the lock knows
the writer is gone -- an OS fact that survives pid reuse.

Bounded size: when a line would take the log past ``max_bytes`` (default
8 MiB), the log is compacted to about half of it: every meta, status, error
and dropped line is kept, progress and metrics are downsampled in fixed
buckets keeping the last progress and the first, last, lowest-loss and
highest-loss metrics of each bucket, and only the last heartbeat stays. The
new file is written beside the old one, fsync'ed and renamed over it, so a
crash leaves either file whole.
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
import structlog

from pulse_core.codec import decode, encode
from pulse_core.errors import DecodeError, RunLocked
from pulse_core.events import Event, Heartbeat, Metrics, Progress
from pulse_core.policy import LIVE_INTERVAL, LOG_INTERVAL
from pulse_core.projections import to_v1
from pulse_core.reducer import Folder

log = structlog.get_logger("pulse.file")

DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024
_DURABLE: Final = frozenset({"RunMeta", "StatusChanged", "ErrorReported", "Dropped"})
_SAMPLES: Final = (Progress, Metrics)


def log_dir(home: Path) -> Path:
    """Where the run logs live: ``<home>/logs/training``."""
    return Path(home) / "logs" / "training"


def log_path(home: Path, training_id: str) -> Path:
    """The log file of one run."""
    return log_dir(home) / f"{training_id}.jsonl"


def lock_path(home: Path, training_id: str) -> Path:
    """The lock file a run's writer holds."""
    return log_dir(home) / f"{training_id}.lock"


def writer_alive(home: Path, training_id: str) -> bool | None:
    """Tell whether a writer holds the run's lock.

    Returns:
        True if a live process holds it, False if it is free or absent
        (the writer is gone), None if it could not be checked.
    """
    path = lock_path(home, training_id)
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


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileSink:
    """The run's durable JSONL log (the ``file`` transport).

    Args:
        home: the PULSE home folder.
        max_bytes: the per-run size cap (compaction keeps the log under it).
        interval: the least seconds between progress/metrics lines.
        fsync: fsync status/error/meta lines (turn off only for benchmarks).
    """

    name = "file"
    boundaries = True
    OPTIONS: Final = {"max_bytes": int, "interval": float, "fsync": bool}

    def __init__(
        self,
        *,
        home: Path | str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        interval: float = LOG_INTERVAL,
        fsync: bool = True,
    ) -> None:
        if max_bytes < 4096:
            raise ValueError("max_bytes must be at least 4096")
        self.home = Path(home)
        self.max_bytes = max_bytes
        self.interval = interval
        self.fsync = fsync
        self.path: Path | None = None
        self.compactions = 0
        self._fd = -1
        self._lock_fd = -1
        self._lock_path = Path()
        self._size = 0
        self._torn = False

    def open(self, training_id: str) -> int | None:
        """Take the run's lock and open its log for appending.

        Returns:
            The highest seq already in the log (a continued run), or None.

        Raises:
            RunLocked: if another live writer holds this training_id.
        """
        folder = log_dir(self.home)
        folder.mkdir(parents=True, exist_ok=True)
        lock = lock_path(self.home, training_id)
        lock_fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(lock)
            os.close(lock_fd)
            raise RunLocked(
                f"training_id {training_id!r} is already being written by another process"
                f"{holder}; its log is {log_path(self.home, training_id)}"
            ) from None
        os.ftruncate(lock_fd, 0)
        os.write(
            lock_fd,
            orjson.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}),
        )
        self._lock_fd = lock_fd
        self._lock_path = lock
        self.path = log_path(self.home, training_id)
        with contextlib.suppress(FileNotFoundError):
            self.path.with_name(self.path.name + ".tmp").unlink()  # a crashed compaction
        self._open_log()
        return last_seq(self.path) if self._size else None

    def _open_log(self) -> None:
        assert self.path is not None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        self._torn = self._size > 0 and not _ends_with_newline(self.path)

    def write(self, event: Event) -> None:
        """Append one event line; fsync it if it is a status/error/meta line."""
        line = encode(event)
        if self._size + len(line) > self.max_bytes:
            self._compact()
        if self._torn:
            # A previous write was cut short: end the fragment so it is one
            # bad line readers skip, and this line stays whole.
            line = b"\n" + line
        try:
            written = os.write(self._fd, line)
        except OSError:
            self._torn = True  # maybe part of the line went out
            raise
        self._size += written
        if written < len(line):
            self._torn = True
            raise OSError(errno.EIO, f"short write to {self.path} ({written} of {len(line)})")
        self._torn = False
        if self.fsync and type(event).__name__ in _DURABLE:
            os.fsync(self._fd)

    def flush(self, durable: bool) -> None:
        """Lines are written at once; *durable* also fsyncs the log."""
        if durable and self._fd >= 0 and self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the log and release the lock (deleting the lock file)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                self._lock_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- compaction --------------------------------------------------------------

    def _compact(self) -> None:
        assert self.path is not None
        started = time.perf_counter()
        data = self.path.read_bytes()
        kept = compact_lines(data.splitlines(), target=self.max_bytes // 2)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            body = b"".join(line + b"\n" for line in kept)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        os.close(self._fd)
        self._open_log()
        self.compactions += 1
        log.debug(
            "pulse log compacted",
            path=str(self.path),
            before=len(data),
            after=self._size,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )


def compact_lines(lines: list[bytes], target: int) -> list[bytes]:
    """Choose the lines a compacted log keeps, in their original order.

    Every line that is not progress, metrics or heartbeat is kept (bad lines
    are dropped); progress and metrics are downsampled in fixed buckets to fit
    *target* bytes; only the last heartbeat is kept. Deterministic.
    """
    essential: list[int] = []
    samples: list[tuple[int, Event]] = []
    last_heartbeat = -1
    for index, line in enumerate(lines):
        try:
            event = decode(line)
        except DecodeError:
            continue
        if isinstance(event, _SAMPLES):
            samples.append((index, event))
        elif isinstance(event, Heartbeat):
            last_heartbeat = index
        else:
            essential.append(index)
    if last_heartbeat >= 0:
        essential.append(last_heartbeat)
    essential_bytes = sum(len(lines[i]) + 1 for i in essential)
    budget = max(target - essential_bytes, target // 4)
    keep = set(essential)
    if samples:
        average = sum(len(lines[i]) + 1 for i, _ in samples) / len(samples)
        room = max(int(budget / average), 4)
        if room >= len(samples):
            keep.update(i for i, _ in samples)
        else:
            # Buckets are equal ranges of seq (not of line count), so a run
            # compacted many times keeps an even resolution over its whole
            # length. Each bucket keeps up to 5 lines: the last progress and
            # the first, last, lowest- and highest-loss metrics.
            buckets = max(room // 5, 1)
            first_seq, last_seq = samples[0][1].seq, samples[-1][1].seq
            span = max(last_seq - first_seq + 1, 1)
            grouped: dict[int, list[tuple[int, Event]]] = {}
            for item in samples:
                grouped.setdefault((item[1].seq - first_seq) * buckets // span, []).append(item)
            for bucket in grouped.values():
                keep.update(_bucket_keep(bucket))
    return [lines[i] for i in sorted(keep)]


def _bucket_keep(bucket: list[tuple[int, Event]]) -> set[int]:
    progress = [i for i, e in bucket if isinstance(e, Progress)]
    metrics = [(i, e) for i, e in bucket if isinstance(e, Metrics)]
    chosen: set[int] = set()
    if progress:
        chosen.add(progress[-1])
    if metrics:
        chosen.add(metrics[0][0])
        chosen.add(metrics[-1][0])
        with_loss = [(e.loss, i) for i, e in metrics if isinstance(e, Metrics) and e.loss is not None]
        if with_loss:
            chosen.add(min(with_loss)[1])
            chosen.add(max(with_loss)[1])
    return chosen


def last_seq(path: Path, window: int = 1 << 16) -> int | None:
    """The highest seq among the decodable lines at the end of a log."""
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


def _ends_with_newline(path: Path) -> bool:
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


class V1SnapshotSink:
    """The PULSE v1 snapshot, ``training_status.json`` (the ``v1`` transport).

    Holds exactly the six v1 keys of this run's state, rewritten atomically
    (temp file, fsync, rename) by a background thread at most every
    ``interval`` seconds, so the training loop never waits for the disk and a
    v1 poller never sees a partial file. Several runs share one v1 slot: the
    last writer wins, so the file shows the most recently active run.
    """

    name = "v1"
    boundaries = False
    OPTIONS: Final = {"path": str, "interval": float}

    def __init__(
        self, *, home: Path | str, path: str | None = None, interval: float = LIVE_INTERVAL
    ) -> None:
        self.path = Path(path) if path else Path(home) / "training_status.json"
        self.interval = interval
        self.writes = 0
        self.failures = 0
        self._folder = Folder()
        self._pending: dict[str, Any] | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def open(self, training_id: str) -> int | None:
        """Start the writer thread (it holds no seq: returns None)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(
            target=self._run, name=f"pulse-v1-{training_id}", daemon=True
        )
        self._thread.start()
        return None

    def write(self, event: Event) -> None:
        """Fold the event and hand the new snapshot to the writer thread."""
        self._folder.apply(event)
        snapshot = to_v1(self._folder.state)
        with self._cond:
            self._pending = snapshot
            self._cond.notify()

    def flush(self, durable: bool) -> None:
        """Write the pending snapshot now, on the caller's thread."""
        with self._cond:
            snapshot, self._pending = self._pending, None
        if snapshot is not None:
            self._write_file(snapshot)

    def close(self) -> None:
        """Write the last snapshot and stop the writer thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self.flush(True)

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closing:
                    self._cond.wait()
                if self._pending is None and self._closing:
                    return
                snapshot, self._pending = self._pending, None
            try:
                self._write_file(snapshot)
            except Exception as exc:  # noqa: BLE001 - a v1 write failure must not stop reporting
                self.failures += 1
                if self.failures == 1 or self.failures % 100 == 0:
                    log.warning("pulse v1 snapshot write failed", path=str(self.path), error=str(exc))
                with self._cond:  # retry with the newest snapshot after a pause
                    if self._pending is None:
                        self._pending = snapshot
                    self._cond.wait(timeout=1.0)
                continue
            if self.interval > 0:
                time.sleep(self.interval)

    def _write_file(self, snapshot: dict[str, Any]) -> None:
        write_json_atomic(self.path, snapshot)
        self.writes += 1


def write_json_atomic(path: Path, value: Any) -> None:
    """Write *value* as JSON to *path* atomically: temp file, fsync, rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    data = orjson.dumps(value)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
