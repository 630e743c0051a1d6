"""The ports adapters implement: what a sink is, what a source is.

This module owns the :class:`Sink` protocol between the emitter and the
transports (writing), and the :class:`RunSource` protocol with its
:class:`RunRecord` (reading: the file logs, NATS, any plugin). Sinks are found
through the ``pulse.transports`` entry-point group, sources through
``pulse.sources`` (:func:`pulse_transports.registry.load_source`); the
contract every source passes is :class:`pulse_transports.testing.RunSourceContract`.
Must never import I/O modules.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs

from pulse_core.events import Event
from pulse_core.liveness import ENDED, Liveness
from pulse_core.state import RunState


@runtime_checkable
class Sink(Protocol):
    """Where a run's events go: a log file, a socket, a bus.

    The emitter calls these from the training thread or its own background
    thread, never concurrently for one sink. Any exception a sink raises is
    caught by the emitter (buffered, retried, counted, logged): a sink may
    raise freely and must not try to hide failures.

    Attributes:
        name: a short name for logs (``"file"``, ``"socket"``, ...).
        interval: the least time in seconds between two forwarded
            progress/metrics events (the rate limit; 0 forwards every call).
        boundaries: when True the sink also gets the last progress and
            metrics of every epoch as the epoch changes.
    """

    name: str
    interval: float
    boundaries: bool

    def open(self, training_id: str) -> int | None:
        """Bind to one run; may raise :class:`~pulse_core.errors.RunLocked`.

        Returns:
            The highest seq this sink already holds for the run (a log being
            continued), so the emitter goes on after it; None if unknown.
        """

    def write(self, event: Event) -> None:
        """Deliver one event (a whole line; order as given)."""

    def flush(self, durable: bool) -> None:
        """Push buffered data out; with *durable*, to stable storage."""

    def close(self) -> None:
        """Release everything; no call follows."""


@attrs.frozen(kw_only=True)
class RunRecord:
    """What a source knows about one run, as of one read (sources may subclass it).

    Attributes:
        training_id: the run's id.
        state: its folded state.
        liveness: alive, stale, lost or ended (each source checks what it
            can: the file source the writer's lock, NATS only silence).
        summary: the ``pulse ls`` row
            (:func:`pulse_core.projections.to_summary` plus ``log``, where
            it was read, and ``bad_lines``).
        where: where the run was read: a log path, a subject filter.
        cursor: the last seq the state covers (``events(after=cursor)``
            continues from there).
        bad_lines: lines or messages of the run that did not decode.
    """

    training_id: str
    state: RunState
    liveness: Liveness
    summary: Mapping[str, Any]
    where: str
    cursor: int
    bad_lines: int = 0

    @property
    def terminal(self) -> bool:
        """True once the run is done, error or cancelled."""
        return self.liveness == ENDED


@runtime_checkable
class RunSource(Protocol):
    """Where runs are read back: every run's last state, one run's events, live.

    Methods block; a source may be used from one thread at a time, except
    :meth:`close`, which may be called from another thread to end a
    :meth:`follow`. Errors are :class:`~pulse_core.errors.PulseError`
    subclasses (:class:`~pulse_core.errors.RunNotFound` for an unknown id).

    Attributes:
        name: the source's name (``"file"``, ``"nats"``, ...).
    """

    name: str

    def runs(self, *, now: float | None = None, limit: int | None = None) -> list[RunRecord]:
        """Every run's last known state, newest first (at most *limit*)."""

    def load(self, training_id: str, *, now: float | None = None) -> RunRecord:
        """One run's state, exact up to the last event the source holds.

        Raises:
            RunNotFound: the source holds nothing of *training_id*.
        """

    def events(self, training_id: str, after: int = 0) -> list[Event]:
        """The run's events the source holds with seq > *after*, in order.

        Raises:
            RunNotFound: the source holds nothing of *training_id*.
        """

    def follow(
        self, training_id: str, after: int = 0, *, idle: float | None = None
    ) -> Iterator[Event]:
        """Yield the run's events with seq > *after*: those held, then new ones.

        Ends after the event that makes the run terminal, after *idle*
        seconds without a new event (None: never), or when :meth:`close`
        is called.
        """

    def close(self) -> None:
        """Release connections and end any :meth:`follow`; no call follows."""
