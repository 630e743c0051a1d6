"""A run's log deleted or replaced under its writer: detected, recreated, restated.

This module owns :class:`RecreatingLog`, the part of the file writer that
checks the path still names its open log and recreates it if not, and
:class:`WriterMemory`, what the writer remembers to restate: the run's meta, its status path, its
last errors, its latest progress and metrics and the seqs of its latest
lines. When the log is deleted or replaced under the writer, the new log
restates the run with the original seqs, in seq order: its meta, its status
lines (the lifecycle path, so a fresh fold reaches the same status), its last
errors and its latest progress and metrics, plus a ``dropped`` line (with the
seq of a lost line) counting the other lines written into the lost file.

Private to the file transport; must not import other pulse_transports modules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import Final

from pulse_core._log import get_logger
from pulse_core.codec import encode
from pulse_core.events import (
    Dropped,
    ErrorReported,
    Event,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_transports._checkpoint import CheckpointWriter
from pulse_transports._logfile import ends_with_newline, retake_lock
from pulse_transports._logfile import fsync_dir as _fsync_dir
from pulse_transports.homemode import make_dirs, open_file

log = get_logger("pulse.file")

#: Seconds between two checks that the log is still at its path (also checked
#: before every meta/status/error/dropped line).
CHECK_INTERVAL: Final = 1.0
#: Seqs of recent lines remembered, to give a ``dropped`` note a seq of its own.
RECENT: Final = 16


class WriterMemory:
    """The events a recreated log restates (see the module doc)."""

    def __init__(self) -> None:
        self.meta: RunMeta | None = None
        self.statuses: list[StatusChanged] = []
        self.errors: list[ErrorReported] = []
        self.progress: Progress | None = None
        self.metrics: Metrics | None = None
        self.recent: list[int] = []  # seqs of the latest lines written

    def remember(self, event: Event) -> None:
        """Keep what a recreated log must restate of *event*."""
        recent = self.recent
        recent.append(event.seq)
        if len(recent) > RECENT:
            del recent[0]
        if isinstance(event, Progress):
            self.progress = event
        elif isinstance(event, Metrics):
            self.metrics = event
        elif isinstance(event, StatusChanged):
            self.statuses.append(event)
            if len(self.statuses) > 64:
                del self.statuses[1]  # keep the first: the path from idle
        elif isinstance(event, ErrorReported):
            self.errors.append(event)
            if len(self.errors) > 8:
                del self.errors[0]
        elif isinstance(event, RunMeta):
            self.meta = event

    def restated(self, training_id: str, lost_lines: int, now: float) -> tuple[list[Event], int]:
        """The events to write into a new log, in seq order, and the lines maybe lost."""
        restated: list[Event] = [*self.statuses, *self.errors]
        restated += [e for e in (self.meta, self.progress, self.metrics) if e is not None]
        dropped = max(0, lost_lines - len(restated))
        taken = {e.seq for e in restated}
        free = [seq for seq in self.recent if seq not in taken]
        if dropped and free:
            restated.append(
                Dropped(
                    training_id=training_id,
                    seq=max(free),
                    timestamp=now,
                    count=dropped,
                    reason=(
                        "the log was deleted or replaced while the run was writing; "
                        "lines other than the restated meta and latest state may be lost"
                    ),
                )
            )
        restated.sort(key=lambda e: e.seq)
        return restated, dropped


class RecreatingLog:
    """The file writer's checks of its path and the recreation of a lost log.

    A mixin of :class:`~pulse_transports.file.FileSink`, which owns the
    attributes declared here.
    """

    path: Path | None
    training_id: str
    fsync: bool
    recreations: int
    _fd: int
    _lock_fd: int
    _lock_path: Path
    _size: int
    _torn: bool
    _lines: int
    _next_check: float
    _dir_warned: bool
    _unsynced: Event | None
    _memory: WriterMemory
    _checkpoints: CheckpointWriter

    def _append(self, line: bytes) -> None:
        raise NotImplementedError

    def _others_wrote(self) -> bool:
        """True if the open log is not the size this writer made it (others appended)."""
        try:
            return os.fstat(self._fd).st_size != self._size
        except OSError:
            return True

    # -- a log deleted or replaced under the writer -------------------------------

    def _check_path(self, durable: bool) -> None:
        """Make sure the path still names the open log; recreate it if not.

        Runs before every durable line and every CHECK_INTERVAL seconds (two
        stat calls, a few microseconds).

        Raises:
            IsADirectoryError: a directory sits at the log's path (the
                emitter keeps the event and retries).
        """
        now = time.monotonic()
        if not durable and now < self._next_check:
            return
        self._next_check = now + CHECK_INTERVAL
        assert self.path is not None
        try:
            st: os.stat_result | None = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            self._next_check = 0.0  # check again on the next line
            if not self._dir_warned:
                self._dir_warned = True
                log.warning(
                    "pulse log path is now a directory; lines are held back until it is free",
                    path=str(self.path),
                    training_id=self.training_id,
                )
            raise IsADirectoryError(errno.EISDIR, f"the log path {self.path} is a directory")
        if st is not None:
            mine = os.fstat(self._fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                return
        self._recreate(replaced=st is not None)

    def _recreate(self, *, replaced: bool) -> None:
        """Open a new log at the path and restate the run in it (see the module doc)."""
        assert self.path is not None
        lost_lines = self._lines
        make_dirs(self.path.parent)
        self._retake_lock()
        fd = open_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        old, self._fd = self._fd, fd
        with contextlib.suppress(OSError):
            os.close(old)
        self._size = os.fstat(fd).st_size
        self._torn = self._size > 0 and not ends_with_newline(self.path)
        self._lines = 0
        self._unsynced = None  # its line was in the lost file: written again below
        self._dir_warned = False
        restated, dropped = self._memory.restated(self.training_id, lost_lines, time.time())
        body = b"".join(encode(e) for e in restated)
        if body:
            self._append(b"\n" + body if self._torn else body)
            self._lines += len(restated)
        if self.fsync:
            os.fsync(fd)
            _fsync_dir(self.path.parent)
        self._checkpoints.restart(restated)  # the new file's fold, its dropped note counted
        self.recreations += 1
        if self.recreations == 1:
            log.warning(
                "pulse log was deleted or replaced while the run was writing; "
                "recreated it with the run's meta and latest state restated",
                path=str(self.path),
                training_id=self.training_id,
                replaced=replaced,
                lines_maybe_lost=dropped,
            )

    def _retake_lock(self) -> None:
        """Hold the lock at the lock file's path again if it was deleted or replaced."""
        fd = retake_lock(self._lock_path, self._lock_fd)
        if fd is None:
            log.warning(
                "pulse log lock was replaced and another writer holds it",
                lock=str(self._lock_path),
                training_id=self.training_id,
            )
        elif fd != self._lock_fd:
            old, self._lock_fd = self._lock_fd, fd
            os.close(old)
