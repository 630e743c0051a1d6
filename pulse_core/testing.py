"""Fakes for tests of PULSE and of code that uses it: clocks and sinks.

Public API, like structlog's ``testing``: a fake clock, a sink that records
what it gets, and a sink whose failures a test switches on and off. Must not
import pulse_transports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pulse_core.codec import encode
from pulse_core.events import Event


class FakeClock:
    """A clock a test moves by hand; use ``clock.monotonic`` and ``clock.time``."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def monotonic(self) -> float:
        """The current fake time (also what ``time`` returns)."""
        return self.now

    def time(self) -> float:
        """The current fake wall time, Unix seconds."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.now += seconds


class RecordingSink:
    """A sink that keeps every event (and encodes it, as a real sink would).

    Attributes:
        events: every event written, in order.
    """

    name = "memory"
    OPTIONS: dict[str, type] = {"interval": float, "boundaries": bool}

    def __init__(self, *, home: Any = None, interval: float = 0.0, boundaries: bool = False) -> None:
        self.interval = interval
        self.boundaries = boundaries
        self.events: list[Event] = []
        self.training_id: str | None = None
        self.closed = False
        self.flushes = 0

    def open(self, training_id: str) -> int | None:
        self.training_id = training_id
        return None

    def write(self, event: Event) -> None:
        encode(event)  # fail like a real sink would on an unencodable event
        self.events.append(event)

    def flush(self, durable: bool) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed = True

    def of_type(self, cls: type[Any]) -> list[Any]:
        """The recorded events of one class."""
        return [e for e in self.events if isinstance(e, cls)]


class FailingSink(RecordingSink):
    """A recording sink that raises while ``failing`` is set (fault injection).

    Args:
        error: the exception factory used while failing (default ``OSError``
            with ENOSPC, "No space left on device").
    """

    name = "failing"

    def __init__(
        self,
        *,
        interval: float = 0.0,
        boundaries: bool = False,
        error: Callable[[], BaseException] | None = None,
    ) -> None:
        super().__init__(interval=interval, boundaries=boundaries)
        self.failing = False
        self.attempts = 0
        self._error = error or (lambda: OSError(28, "No space left on device"))

    def write(self, event: Event) -> None:
        self.attempts += 1
        if self.failing:
            raise self._error()
        super().write(event)
