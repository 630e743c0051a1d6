"""The ports adapters implement: what a sink is.

This module owns the :class:`Sink` protocol between the emitter and the
transports. Adapters (in ``pulse_transports`` or third-party packages)
implement it and are found through the ``pulse.transports`` entry-point
group. Must never import I/O modules.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pulse_core.events import Event


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
