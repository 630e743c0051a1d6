"""The file source: runs read back from the logs of a PULSE home.

This module owns :class:`FileSource`, the :class:`~pulse_core.ports.RunSource`
over ``<home>/logs/training/*.jsonl``: :meth:`~FileSource.runs` and
:meth:`~FileSource.load` are :func:`~pulse_transports.history.recover` and
:func:`~pulse_transports.history.load_run` (through the index, with the
writer's lock checked), :meth:`~FileSource.events` is
:func:`~pulse_transports.follow.read_events` and :meth:`~FileSource.follow`
follows the log with a :class:`~pulse_transports.notify.Notifier`.
Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from pulse_core.errors import RunNotFound
from pulse_core.events import Event, validate_training_id
from pulse_core.liveness import LOST_AFTER, STALE_AFTER
from pulse_core.ports import RunRecord
from pulse_transports import history
from pulse_transports.file import log_path
from pulse_transports.follow import follow, read_events

if TYPE_CHECKING:
    from pulse_transports.config import Config


def record_of(found: history.RunRecord) -> RunRecord:
    """The port's record of what recovery found (the log path as ``where``)."""
    return RunRecord(
        training_id=found.training_id,
        state=found.state,
        liveness=found.liveness,
        summary=found.summary,
        where=str(found.path),
        cursor=found.state.last_seq,
        bad_lines=found.bad_lines,
    )


@attrs.define(eq=False)
class FileSource:
    """Reads runs from the logs of one PULSE home.

    Args:
        home: the PULSE home folder.
        stale_after, lost_after: the liveness thresholds (seconds).
        use_index: False to fold every log and leave ``index.sqlite`` alone.
        tick: the longest wait between two checks while following.
    """

    name = "file"

    home: Path = attrs.field(converter=Path)
    stale_after: float = attrs.field(default=STALE_AFTER, kw_only=True)
    lost_after: float = attrs.field(default=LOST_AFTER, kw_only=True)
    use_index: bool = attrs.field(default=True, kw_only=True)
    tick: float = attrs.field(default=0.5, kw_only=True)
    _closed: threading.Event = attrs.field(factory=threading.Event, init=False)

    @classmethod
    def from_config(cls, config: Config, **given: Any) -> FileSource:
        """A source on the configuration's home and liveness thresholds (*given* ignored)."""
        return cls(config.home, **config.thresholds)

    def runs(self, *, now: float | None = None, limit: int | None = None) -> list[RunRecord]:
        """Every run's last known state, newest first.

        Raises:
            HomeNotFound: the home does not exist.
        """
        found = history.recover(
            self.home,
            now=now,
            stale_after=self.stale_after,
            lost_after=self.lost_after,
            limit=limit,
            use_index=self.use_index,
        )
        return [record_of(r) for r in found]

    def load(self, training_id: str, *, now: float | None = None) -> RunRecord:
        """One run, read to the end of its log.

        Raises:
            RunNotFound: no log for *training_id*.
            HomeNotFound: the home does not exist.
        """
        return record_of(
            history.load_run(
                self.home,
                training_id,
                now=now,
                stale_after=self.stale_after,
                lost_after=self.lost_after,
                use_index=self.use_index,
            )
        )

    def events(self, training_id: str, after: int = 0) -> list[Event]:
        """The run's logged events with seq > *after*, in order.

        Raises:
            RunNotFound: no log for *training_id*.
        """
        validate_training_id(training_id)
        path = log_path(self.home, training_id)
        found = read_events(path, training_id, after)
        if found is None:
            raise RunNotFound(f"no run {training_id!r} under {self.home} (no {path})")
        return found

    def follow(
        self, training_id: str, after: int = 0, *, idle: float | None = None
    ) -> Iterator[Event]:
        """Yield the run's events with seq > *after* as the log grows.

        Ends after the terminal event, after *idle* quiet seconds, or on
        :meth:`close`. A log that does not exist yet is waited for.
        """
        validate_training_id(training_id)
        path = log_path(self.home, training_id)
        quiet_since = time.monotonic()
        for follower, events in follow(
            path, stop=self._closed, tick=self.tick, training_id=training_id
        ):
            fresh = [e for e in events if e.seq > after]
            if fresh:
                quiet_since = time.monotonic()
            yield from fresh
            if follower.state.is_terminal:
                return
            if idle is not None and time.monotonic() - quiet_since >= idle:
                return

    def close(self) -> None:
        """End any :meth:`follow` (at its next tick)."""
        self._closed.set()
