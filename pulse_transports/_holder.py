"""The supervisor's own writer on a run: the lock, its lines and the v1 snapshot.

This module owns :class:`RunHolder`, through which a supervisor holds a run
while its child does not (see :mod:`pulse_transports.supervise`). Private to
that module, which re-exports its names; must not import it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import attrs

from pulse_core._log import get_logger
from pulse_core.errors import RunLocked
from pulse_core.events import Event, Heartbeat
from pulse_core.projections import to_v1
from pulse_core.state import RunState
from pulse_transports.config import Config
from pulse_transports.file import FileSink, log_path, write_json_atomic
from pulse_transports.follow import read_log
from pulse_transports.homemode import make_dirs
from pulse_transports.v1.snapshot import V1_FILE

log = get_logger("pulse.supervise")


def read_state(home: Path, training_id: str) -> RunState:
    """Fold a run's log as it is now (bad lines skipped); empty if there is none."""
    return read_log(log_path(home, training_id), training_id=training_id).state


@attrs.define(eq=False, repr=False)
class RunHolder:
    """The supervisor's own writer on a run's log: the lock, its lines and the v1 snapshot.

    Args:
        home: the PULSE home.
        training_id: the run.
        v1_path: the v1 snapshot to keep, or None.
        lock_wait: seconds :meth:`hold` waits for the lock.
    """

    home: Path
    training_id: str
    v1_path: Path | None
    lock_wait: float = 30.0
    _sink: FileSink | None = attrs.field(default=None, init=False)
    _seq: int = attrs.field(default=0, init=False)

    @property
    def holding(self) -> bool:
        """True while the supervisor holds the run's lock."""
        return self._sink is not None

    def hold(self, wait: float | None = None, *, reopen_ended: bool = True) -> None:
        """Take the run's lock (waiting up to *wait* s); RunLocked if it stays held.

        With ``reopen_ended=False`` (the run's start) the id of a run that
        already ended is refused with RunExists; later holds read an ended
        run's log so the supervisor can see how it ended.
        """
        if self._sink is not None:
            return
        sink = FileSink(home=self.home, lock_wait=0.0, reopen_ended=reopen_ended)
        deadline = time.monotonic() + (self.lock_wait if wait is None else wait)
        while True:
            try:
                last = sink.open(self.training_id) or 0
                break
            except RunLocked:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        self._sink, self._seq = sink, last

    def release(self) -> None:
        """Let the lock go (a child takes it over)."""
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()

    def append(
        self, build: Callable[[int, float], list[Event]], *, reopen_ended: bool = True
    ) -> RunState:
        """Append ``build(next_seq, now)``'s events (holding the lock); the state after them.

        Also rewrites the v1 snapshot. Holds the lock first if needed (and
        keeps it); *reopen_ended* as for :meth:`hold`.
        """
        self.hold(reopen_ended=reopen_ended)
        assert self._sink is not None
        for event in build(self._seq + 1, time.time()):
            self._sink.write(event)
            self._seq = max(self._seq, event.seq)
        state = read_state(self.home, self.training_id)
        self.write_v1(state)
        return state

    def heartbeat(self) -> None:
        """Append a heartbeat (only while holding)."""
        if self._sink is not None:
            tid = self.training_id
            self.append(lambda seq, now: [Heartbeat(training_id=tid, seq=seq, timestamp=now)])

    def write_v1(self, state: RunState) -> None:
        """Write the v1 snapshot of *state* (never raises: a v1 failure must not stop the run)."""
        if self.v1_path is None:
            return
        try:
            make_dirs(self.v1_path.parent)
            write_json_atomic(self.v1_path, to_v1(state))
        except OSError as exc:
            log.warning("pulse: v1 snapshot write failed", path=str(self.v1_path), error=str(exc))


def v1_snapshot_path(config: Config) -> Path | None:
    """Where the configured ``v1`` transport writes, or None when it is not configured."""
    if "v1" not in config.transports:
        return None
    given = config.transport_options.get("v1", {}).get("path")
    return config.home / str(given) if given else config.home / V1_FILE
