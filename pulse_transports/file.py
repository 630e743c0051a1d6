"""The durable file transport: one JSONL log per run (the v1 snapshot: :mod:`~.v1`).

This module owns the writer of ``<home>/logs/training/<training_id>.jsonl``.

Durability: ``meta``, ``status``, ``error`` and ``dropped`` lines are written
and fsync'ed before the call returns; ``progress``, ``metrics`` and
``heartbeat`` lines are written with one ``write(2)`` each (visible to readers
at once, not fsync'ed: a machine crash may lose the last second of them).

Layout, locks and the refusal of ended runs: :mod:`._logfile`.

Bounded size: when a line would take the log past ``max_bytes`` (default
8 MiB), the log is compacted to about half of it: every meta, status, error
and dropped line is kept, progress and metrics are downsampled in fixed
buckets keeping the last progress and the first, last, lowest-loss and
highest-loss metrics of each bucket, and only the last heartbeat stays. The
new file is written beside the old one, fsync'ed and renamed over it, so a
crash leaves either file whole (a leftover ``<id>.jsonl.tmp`` is removed by
the next writer). A compaction that fails leaves the old log whole, the line
is appended anyway, and compaction is tried again after a little growth.

Ended runs: opening the id of a run whose log ends in a terminal status
(done, error, cancelled) is refused with :class:`~pulse_core.errors.RunExists`
-- events appended after the end would be shown by no reader. The message
names the id, how it ended and the two ways out (a new id, or deleting the
log). A run whose log has no terminal status and whose writer is gone (a
*lost* run) may be continued. A supervisor appending its verdict after its
child (``pulse run``) passes ``reopen_ended=True``; it appends nothing to a
run that already ended.

Deleted or replaced log: before every meta/status/error/dropped line, and at
least every :data:`CHECK_INTERVAL` seconds otherwise, the writer compares the
path's ``(st_dev, st_ino)`` with its open file's. If the log (or its whole
folder) was deleted or replaced, the folder and log are recreated, the run is
restated (:mod:`._recreate`), the lock file is taken again (readers would
otherwise call the run lost), and one warning is logged. If a directory now
sits at the log's path, the write fails with ``EISDIR`` (warned once): the
emitter keeps the events and retries.

Torn lines: a write that fails part-way leaves a fragment; the next line
then starts with a newline, so the fragment is one bad line readers skip.

Readers (followers) must expect the log to be replaced by compaction: reopen
when the path's inode changes or the file shrinks.

Must not import pulse_transports modules other than its own helpers; the
core never imports this module.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Final

import pulse_core
from pulse_core._log import get_logger
from pulse_core.codec import encode
from pulse_core.events import (
    Dropped,
    ErrorReported,
    Event,
    RunMeta,
    StatusChanged,
)
from pulse_core.policy import GIL_YIELD, LOG_INTERVAL
from pulse_core.state import RunState
from pulse_transports import _compact as _compact_module
from pulse_transports._checkpoint import EVERY_BYTES, CheckpointWriter, fold_log
from pulse_transports._compact import tmp_path, write_compacted
from pulse_transports._logfile import (
    LOCK_WAIT,
    ends_with_newline,
    last_seq,
    lock_path,
    log_dir,
    log_path,
    read_lock_info,
    refuse_ended,
    replace,
    run_file,
    take_lock,
    write_json_atomic,
    write_lock_info,
    writer_alive,
)
from pulse_transports._logfile import fsync_dir as _fsync_dir
from pulse_transports._recreate import RecreatingLog, WriterMemory
from pulse_transports.homemode import make_dirs, open_file

__all__ = [
    "DEFAULT_MAX_BYTES",
    "LOCK_WAIT",
    "FileSink",
    "last_seq",
    "lock_path",
    "log_dir",
    "log_path",
    "read_lock_info",
    "run_file",
    "write_json_atomic",
    "writer_alive",
]

log = get_logger("pulse.file")

DEFAULT_MAX_BYTES: Final = 8 * 1024 * 1024
MIN_MAX_BYTES: Final = 4096
_DURABLE: Final[frozenset[type[Any]]] = frozenset({RunMeta, StatusChanged, ErrorReported, Dropped})
#: Default least seconds between two progress/metrics lines: a quarter of
#: the log's base rate, so a reader following the log without a hub
#: (``pulse watch``) shows a new value within about 300 ms. Compaction keeps
#: the log under ``max_bytes`` whatever the rate.
FOLLOW_INTERVAL: Final = LOG_INTERVAL / 4
#: Logs at least this big are compacted in a child process (see _compact).
OUT_OF_PROCESS_BYTES: Final = 128 * 1024
#: Seconds a compaction child may take before it is killed (the compaction then fails).
COMPACT_TIMEOUT: Final = 300.0
_NEVER: Final = 1 << 62
#: A checkpoint line is left out when longer than max_bytes / this (tiny caps).
CHECKPOINT_SHARE: Final = 16


class FileSink(RecreatingLog):
    """The run's durable JSONL log (the ``file`` transport).

    Args:
        home: the PULSE home folder.
        max_bytes: the per-run size cap (compaction keeps the log under it).
        interval: the least seconds between progress/metrics lines.
        fsync: fsync status/error/meta lines (turn off only for benchmarks).
        lock_wait: seconds to wait for the run's lock before RunLocked (a supervisor
            holds it for milliseconds while it appends its own lines).
        reopen_ended: open the log of a run that already ended instead of
            refusing with RunExists (a supervisor reading and appending its
            verdict after its child; it must not append events to an ended run).

    Attributes:
        path: the log file, once open.
        compactions: how many times the log was compacted.
        compaction_failures: compactions that failed (the log was left whole
            and the line appended; compaction is tried again a little later).
        recreations: how many times the log was found deleted or replaced and
            recreated with the run's state restated.
    """

    name = "file"
    boundaries = True
    OPTIONS: ClassVar[dict[str, type]] = {
        "max_bytes": int,
        "interval": float,
        "fsync": bool,
        "lock_wait": float,
    }
    #: Logs at least this big are compacted in a fresh interpreter (tests lower it).
    out_of_process_bytes: int = OUT_OF_PROCESS_BYTES

    def __init__(
        self,
        *,
        home: Path | str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        interval: float = FOLLOW_INTERVAL,
        fsync: bool = True,
        lock_wait: float = LOCK_WAIT,
        reopen_ended: bool = False,
    ) -> None:
        if max_bytes < MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {MIN_MAX_BYTES}, got {max_bytes}")
        if not interval >= 0:
            raise ValueError(f"interval must be a number of seconds >= 0, got {interval!r}")
        self.home = Path(home)
        self.max_bytes = max_bytes
        self.interval = interval
        self.fsync = fsync
        self.lock_wait = lock_wait
        self.reopen_ended = reopen_ended
        self.path: Path | None = None
        self.compactions = 0
        self.compaction_failures = 0
        self._failed_in_row = 0  # compactions failed since the last one that worked
        self.recreations = 0
        self.training_id = ""
        self._lines = 0  # lines in the current file (for the dropped count)
        self._next_check = 0.0  # monotonic time of the next path check
        self._dir_warned = False
        self._memory = WriterMemory()  # what a recreated log restates
        self._checkpoints = CheckpointWriter(RunState())  # the run's fold (set by open)
        self._fd = -1
        self._lock_fd = -1
        self._lock_path = Path()
        self._size = 0
        self._torn = False
        self._compact_at = max_bytes
        self._unsynced: Event | None = None  # written, but its fsync failed

    def open(self, training_id: str) -> int | None:
        """Take the run's lock and open its log for appending.

        Returns:
            The highest seq already in the log (a continued run), or None.

        Raises:
            RunLocked: if another live writer holds this training_id.
            RunExists: if the log holds a run that already ended (unless
                ``reopen_ended``).
            OSError: if the folder or files cannot be created (the emitter
                retries later).
        """
        if self._lock_fd >= 0:
            raise RuntimeError(f"this FileSink is already open on {self.path}")
        folder = log_dir(self.home)
        make_dirs(folder)
        lock = lock_path(self.home, training_id)
        lock_fd = take_lock(lock, training_id, log_path(self.home, training_id), self.lock_wait)
        try:
            write_lock_info(lock_fd)
            path = log_path(self.home, training_id)
            with contextlib.suppress(FileNotFoundError):
                tmp_path(path).unlink()  # left by a crash during compaction
            self.path = path
            self.training_id = training_id
            self._open_log()
            held, state, tail = None, RunState(training_id=training_id), 0
            if self._size:
                state, self._lines, tail = fold_log(path, training_id)
                if not self.reopen_ended:
                    refuse_ended(state, training_id, path)
                held = last_seq(path)
                if held is not None:
                    self._memory.recent.append(held)
            self._checkpoints = CheckpointWriter(state, self.max_bytes // CHECKPOINT_SHARE)
        except BaseException:
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(lock_fd)
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            raise
        self._lock_fd = lock_fd
        self._lock_path = lock
        if self.out_of_process_bytes <= self.max_bytes:
            _compact_module.prepare_spawn()  # here, not in the training loop
        if tail >= EVERY_BYTES:
            self._write_checkpoint()  # a log of an older writer: the next open is quick
        return held

    def _open_log(self) -> None:
        assert self.path is not None
        self._fd = open_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self._size = os.fstat(self._fd).st_size
        self._torn = self._size > 0 and not ends_with_newline(self.path)

    def write(self, event: Event) -> None:
        """Append one event line; fsync it if it is a meta/status/error/dropped line.

        A failed write never leaves a torn line in front of a later one: the
        next line starts on a fresh line, so the fragment is one bad line that
        readers skip. A line whose fsync failed is not written twice: when the
        emitter retries that event, only the fsync is retried.
        """
        if self._fd < 0:
            if self._lock_fd < 0 or self.path is None:
                raise OSError(errno.EBADF, f"the log of {self.path} is not open")
            self._open_log()  # reopening after compaction failed: try again now
        durable = type(event) in _DURABLE
        self._check_path(durable)
        if event is self._unsynced:
            os.fsync(self._fd)
            self._unsynced = None
            return
        line = encode(event)
        if self._size + len(line) > self._compact_at:
            self._try_compact()
        if self._torn:
            line = b"\n" + line
        self._append(line)
        self._lines += 1
        self._memory.remember(event)
        if self._checkpoints.note(event, len(line)):
            self._write_checkpoint()
        if self.fsync and durable:
            try:
                os.fsync(self._fd)
            except OSError:
                self._unsynced = event
                raise

    def _append(self, line: bytes) -> None:
        done = 0
        try:
            while done < len(line):
                written = os.write(self._fd, line[done:] if done else line)
                if written <= 0:
                    raise OSError(errno.EIO, f"write to {self.path} returned {written}")
                done += written
        except OSError:
            if done:
                # Part of the line went out: unless that part ended a line,
                # the next line must start with a newline.
                self._size += done
                self._torn = line[done - 1] != 0x0A
            raise
        self._size += done
        self._torn = False

    def _write_checkpoint(self) -> None:
        """Append a checkpoint of the run's state (see :mod:`._checkpoint`); never raises.

        A checkpoint that cannot be written is left out: readers fold more.
        """
        if self._fd < 0 or (self._checkpoints.ending and self._others_wrote()):
            return  # (lines of others in the log: readers fold and count them)
        line = self._checkpoints.line(time.time(), self._lines)
        if line is None:
            return
        try:
            self._append(b"\n" + line if self._torn else line)
        except OSError:
            return
        self._lines += 1

    def flush(self, durable: bool) -> None:
        """Lines are written at once; *durable* also fsyncs the log."""
        if durable and self._fd >= 0 and self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the log and release the lock (deleting the lock file); idempotent."""
        if self._fd >= 0:
            try:
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as exc:
                log.warning("pulse log fsync failed at close", path=str(self.path), error=str(exc))
            finally:
                os.close(self._fd)
                self._fd = -1
        if self._lock_fd >= 0:
            # Unlink while still holding the lock: a writer that opened the
            # old file then finds it is no longer the lock (see _take_lock).
            with contextlib.suppress(OSError):
                self._lock_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- compaction --------------------------------------------------------------

    def _try_compact(self) -> None:
        try:
            self._compact()
        except OSError as exc:
            if self._fd < 0:
                raise  # compacted, but not reopened: this write fails, its retry reopens
            # The old log is whole; append to it and try again after some
            # growth, rather than fail (and lose) the line being written. The
            # growth doubles with each failure in a row (1/16 of the cap up to
            # the whole cap): a folder that stays read-only must not cost the
            # training process a compaction attempt every few lines.
            self.compaction_failures += 1
            growth = max(self.max_bytes // 16, 1) << min(self._failed_in_row, 4)
            self._failed_in_row += 1
            self._compact_at = self._size + growth
            log.warning(
                "pulse log compaction failed; the log stays whole and over its cap for now",
                path=str(self.path),
                error=f"{type(exc).__name__}: {exc}",
                failures=self.compaction_failures,
            )

    def _compact(self) -> None:
        assert self.path is not None
        started = time.perf_counter()
        target = self.max_bytes // 2
        result = None
        if self._size >= self.out_of_process_bytes:
            result = self._compact_in_child(target)
        where = "in-process" if result is None else "child"
        if result is None:
            kept, before, _ = write_compacted(self.path, target)
            replace(tmp_path(self.path), self.path)
        else:
            kept, before = result
            _yield_gil()  # the child's report was read: the GIL was ours since it exited
        _fsync_dir(self.path.parent)
        self.compactions += 1
        self._failed_in_row = 0
        self._compact_at = self.max_bytes
        # The path now names the new file: append there from now on.
        old, self._fd = self._fd, -1
        os.close(old)
        self._open_log()
        _yield_gil()  # before the checkpoint (its encoding is a few tenths of a ms)
        self._lines = kept
        if self._size > self.max_bytes * 3 // 4:
            # Status/error/meta lines alone fill the log (they are never
            # dropped): do not compact again on every line.
            self._compact_at = self._size + self.max_bytes // 4
            log.warning(
                "pulse log cannot keep its cap: the lines that are always kept fill it",
                path=str(self.path),
                size=self._size,
                max_bytes=self.max_bytes,
            )
        self._write_checkpoint()  # the true state, not the fold of the downsampled file
        log.debug(
            "pulse log compacted",
            path=str(self.path),
            before=before,
            after=self._size,
            where=where,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )

    def _compact_in_child(self, target: int) -> tuple[int, int] | None:
        """Compact in a fresh interpreter; (kept, before), or None to compact in-process.

        The writer thread waits for the child without the GIL, so the training
        thread does not feel the decoding. None (with a warning) when the child
        cannot be started or fails; the log is then whole (the child renames
        last) or already compacted (compacting it again is harmless).
        """
        assert self.path is not None
        try:
            command, env = _child_command(self.path, target), _child_env()
            _yield_gil()  # building the environment took a slice; starting the child is next
            code, output = _compact_module.run_child(command, env, self._lock_fd, COMPACT_TIMEOUT)
        except TimeoutError:
            # Killed; the log is whole unless it renamed just before (then the
            # next compaction finds it small). Back off like a failure.
            raise OSError(
                errno.ETIMEDOUT, f"compaction child took over {COMPACT_TIMEOUT} s"
            ) from None
        except (OSError, ValueError) as exc:
            self.out_of_process_bytes = _NEVER  # no interpreter: do not try again
            log.warning(
                "pulse log compaction cannot start its child process; compacting in-process",
                path=str(self.path),
                executable=sys.executable,
                error=f"{type(exc).__name__}: {exc}",
            )
            return None
        if code in (0, None):  # None: the application reaped it; its report tells
            report = _compact_module.read_report(output)
            if report is not None:
                return report
        log.warning(
            "pulse log compaction child failed; compacting in-process",
            path=str(self.path),
            returncode=code,
            stderr=output.decode("utf-8", "replace")[-2000:],
        )
        return None


def _yield_gil() -> None:
    """Let a thread waiting for the GIL run now (see :data:`pulse_core.policy.GIL_YIELD`).

    The compaction's steps between blocking calls are each well under a
    millisecond of CPU with these in between.
    """
    time.sleep(GIL_YIELD)


def _child_command(path: Path, target: int) -> list[str]:
    if not sys.executable:
        raise FileNotFoundError("sys.executable is empty: no interpreter to run")
    return [
        sys.executable,
        "-m",
        _compact_module.__name__,
        str(path),
        str(target),
        str(os.getpid()),
    ]


def _child_env() -> dict[str, str]:
    """The environment, with the folders this process imports pulse from first on the path."""
    roots = [str(Path(_compact_module.__file__).resolve().parents[1])]
    roots.append(str(Path(pulse_core.__file__).resolve().parents[1]))
    old = os.environ.get("PYTHONPATH", "")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            dict.fromkeys([*roots, *filter(None, old.split(os.pathsep))])
        ),
    }
