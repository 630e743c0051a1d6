"""Rank 0's look-out for other ranks' error files and silent deaths.

Private to :mod:`pulse_transports.integrations.distributed`, which re-exports
:class:`RankErrorWatcher` and :data:`POLL`: a daemon thread reads the rank
error folder (:mod:`~pulse_transports.integrations._rank_errors`) and the
registrations of ranks that are gone
(:mod:`~pulse_transports.integrations._registration`) and reports them into
rank 0's run.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Final

from pulse_core._log import get_logger
from pulse_core.emitter import TrainingRun
from pulse_core.events import TERMINAL_STATUSES
from pulse_transports.integrations._rank_errors import (
    RankError,
    read_rank_errors,
)
from pulse_transports.integrations._registration import (
    crash_code,
    peer_ending,
    rank_dir,
)

log = get_logger("pulse.distributed")

#: Seconds between two looks at the rank error folder.
POLL: Final = 0.2


class RankErrorWatcher:
    """Rank 0's look-out for other ranks' error files; reports them into the run.

    A daemon thread looks at the folder every *poll* seconds (one ``stat``
    while nothing changed) until the run ends. :meth:`check` looks now.
    """

    def __init__(self, run: TrainingRun, home: Path, *, poll: float = POLL) -> None:
        self.run = run
        self.home = home
        self.poll = poll
        self.reported: list[RankError] = []
        self._folder = rank_dir(home, run.training_id)
        self._seen: set[str] = set()
        self._alive: list[Path] = []  # rank registrations, listed when the folder changes
        self._mtime: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the background look-out."""
        self._thread = threading.Thread(
            target=self._loop, name=f"pulse-ranks-{self.run.training_id}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the look-out (it also stops by itself once the run ends)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def check(self, wait: float = 0.0) -> bool:
        """Report new rank errors now; with *wait*, keep looking that long for one.

        Returns:
            True if a rank error has been reported into the run (now or before).
        """
        deadline = time.monotonic() + wait
        while True:
            if self._scan():
                return True
            if self.reported:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.05, max(deadline - time.monotonic(), 0.0)))

    def _loop(self) -> None:
        while not self._stop.wait(self.poll):
            if self.run.closed or self.run.current_status in TERMINAL_STATUSES:
                return
            try:
                self._scan()
            except Exception:
                log.exception("pulse: looking for rank errors failed")

    def _scan(self) -> bool:
        with self._lock:
            try:
                mtime = os.stat(self._folder).st_mtime_ns
            except OSError:
                return False
            if mtime != self._mtime:
                self._mtime = mtime
                if self._report_errors():
                    return True
                self._alive = sorted(self._folder.glob("rank-*.alive"))
            return self._report_deaths()

    def _report_deaths(self) -> bool:
        """Report a registered rank whose process is gone without an error file."""
        for path in self._alive:
            key = path.name.removesuffix(".alive")
            if key in self._seen:
                continue
            ending = peer_ending(path)
            if ending is None:
                continue
            # Gone: an error file it wrote before dying is there by now.
            if self._report_errors():
                return True
            self._seen.add(key)
            if ending.stopped:
                continue  # the launcher stopped it: whatever stopped it ends the run
            if self.run.current_status in TERMINAL_STATUSES or self.run.closed:
                return False
            code, retryable, message = crash_code(ending)
            details: dict[str, Any] = {
                "rank": ending.rank,
                "host": ending.host,
                "pid": ending.pid,
                "signal": ending.signal,
            }
            if ending.exit_code is not None:
                details["exit_code"] = ending.exit_code
            if ending.inferred:
                details["signal_inferred"] = True
            if ending.trace:
                details["trace"] = ending.trace
            log.error(
                "pulse: a rank died without reporting; the run ends with it",
                training_id=self.run.training_id,
                rank=ending.rank,
                pid=ending.pid,
                signal=ending.signal,
            )
            self.reported.append(
                RankError(
                    rank=ending.rank,
                    error_code=code,
                    message=message,
                    is_retryable=retryable,
                    details=details,
                    host=ending.host,
                    pid=ending.pid,
                    timestamp=time.time(),
                )
            )
            self.run.error(code, message, is_retryable=retryable, details=details)
            return True
        return False

    def _report_errors(self) -> bool:
        """Report rank error files not seen yet."""
        new = [
            e
            for e in read_rank_errors(self.home, self.run.training_id)
            if f"rank-{e.rank}" not in self._seen
        ]
        if not new or self.run.current_status in TERMINAL_STATUSES or self.run.closed:
            return False
        for index, error in enumerate(new):
            self._seen.add(f"rank-{error.rank}")
            self.reported.append(error)
            self.run.error(
                error.error_code,
                f"rank {error.rank} failed: {error.message}"[:1000],
                is_retryable=error.is_retryable,
                details={
                    **dict(error.details),
                    "rank": error.rank,
                    "host": error.host,
                    "pid": error.pid,
                },
                fatal=index == len(new) - 1,
            )
        return True


# -- opening a run for this rank ---------------------------------------------------------
