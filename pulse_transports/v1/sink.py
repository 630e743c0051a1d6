"""The ``v1`` transport: a run's PULSE v1 snapshot, rewritten atomically.

This module owns :class:`V1SnapshotSink`, the sink that keeps a home's v1
snapshot file (:data:`~pulse_transports.v1.snapshot.V1_FILE`) showing the
most recently active run as :func:`pulse_core.projections.to_v1` says.
Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pulse_core._log import get_logger
from pulse_core.events import Event
from pulse_core.policy import LIVE_INTERVAL, sampled
from pulse_core.projections import to_v1
from pulse_core.reducer import Folder
from pulse_transports.file import write_json_atomic
from pulse_transports.homemode import make_dirs
from pulse_transports.v1.snapshot import V1_FILE

log = get_logger("pulse.file")


class V1SnapshotSink:
    """The PULSE v1 snapshot, :data:`~pulse_transports.v1.snapshot.V1_FILE` (the ``v1`` transport).

    Holds exactly the six v1 keys of this run's state, rewritten atomically
    (temp file, fsync, rename) at most every ``interval`` seconds, so a v1
    poller never sees a partial file. By default a background thread writes
    it, so the training loop never waits for the disk; with
    ``background=False`` the caller's thread writes it (tests, benchmarks):
    on an event arriving at least half an interval after the last file write
    (the emitter forwards once per interval), else on a later event, on
    ``flush`` or on ``close``.

    One v1 slot, many runs: every run's sink writes the same file, so it
    shows the run that wrote last -- the most recently active one. A run
    that ends writes its final state once; a run still going overwrites it
    within one interval.

    Args:
        home: the PULSE home folder.
        path: the snapshot file (relative paths are relative to *home*);
            default ``<home>/training_status.json``.
        interval: the least seconds between two file writes.
        fsync: fsync the temp file before the rename (off only for benchmarks).
        background: write from a background thread.
        clock: the monotonic clock used with ``background=False``.

    Attributes:
        writes: snapshot files written.
        failures: snapshot writes that failed (retried with the newest state).
    """

    name = "v1"
    boundaries = False
    OPTIONS: ClassVar[dict[str, type]] = {"path": str, "interval": float, "fsync": bool}

    def __init__(
        self,
        *,
        home: Path | str,
        path: str | Path | None = None,
        interval: float = LIVE_INTERVAL,
        fsync: bool = True,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"interval must be a number of seconds >= 0, got {interval!r}")
        self.path = Path(home) / path if path else Path(home) / V1_FILE
        self.interval = interval
        self.fsync = fsync
        self.background = background
        self.writes = 0
        self.failures = 0
        self._clock = clock
        self._folder = Folder()
        self._dirty = False
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # one file write at a time, newest last
        self._closing = False
        self._thread: threading.Thread | None = None
        self._last_write = float("-inf")

    def open(self, training_id: str) -> int | None:
        """Create the folder and start the writer thread (holds no seq: None)."""
        make_dirs(self.path.parent)
        if self.background and self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"pulse-v1-{training_id}", daemon=True
            )
            self._thread.start()
        return None

    def write(self, event: Event) -> None:
        """Fold the event; the snapshot file follows within one interval."""
        with self._cond:
            self._folder.apply(event)
            self._dirty = True
            self._cond.notify()
        # The emitter already forwards to this sink once per interval; here
        # the progress and metrics of one forward become one write. (Half
        # the interval: a full one, measured on a clock read a moment later,
        # would skip every other forward.)
        if not self.background and self._clock() - self._last_write >= self.interval / 2:
            self._write_now()

    def flush(self, durable: bool) -> None:
        """Write the pending snapshot now, on the caller's thread."""
        self._write_now()

    def close(self) -> None:
        """Stop the writer thread and write the last snapshot; idempotent."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        self._write_now()

    def _write_now(self) -> None:
        with self._write_lock:
            with self._cond:
                if not self._dirty:
                    return
                snapshot = to_v1(self._folder.state)
                self._dirty = False
            try:
                self._write_file(snapshot)
            except BaseException:
                with self._cond:
                    self._dirty = True  # written later, with the newest state
                raise
            self.writes += 1
            self._last_write = self._clock()

    def _write_file(self, snapshot: dict[str, Any]) -> None:
        """Write one snapshot to the file (benchmarks override it to count only)."""
        write_json_atomic(self.path, snapshot, fsync=self.fsync)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._dirty or self._closing)
                if self._closing:
                    return  # close() writes the last snapshot itself
            try:
                self._write_now()
            except Exception as exc:  # noqa: BLE001 - a v1 write failure must not stop reporting
                self.failures += 1
                if sampled(self.failures):
                    log.warning(
                        "pulse v1 snapshot write failed; retrying",
                        path=str(self.path),
                        error=f"{type(exc).__name__}: {exc}",
                        failures=self.failures,
                    )
                pause = max(self.interval, 1.0)
            else:
                pause = self.interval
            with self._cond:
                if self._cond.wait_for(lambda: self._closing, timeout=pause):
                    return
