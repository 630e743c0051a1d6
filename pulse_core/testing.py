"""Fakes for tests of PULSE and of code that uses it: clocks and sinks.

Public API, like structlog's ``testing``: a fake clock, a sink that records
what it gets, and a sink whose failures a test switches on and off. Must not
import pulse_transports.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

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

    Args:
        home: ignored (accepted so configuration can build it by name).
        interval: the sink's rate limit in seconds (0: every call).
        boundaries: whether it wants every epoch's last values.

    Attributes:
        events: every event written, in order.
        lines: the encoded lines, in order.
        opened: how many times ``open`` was called.
    """

    name = "memory"
    OPTIONS: ClassVar[dict[str, type]] = {"interval": float, "boundaries": bool}

    def __init__(
        self, *, home: Any = None, interval: float = 0.0, boundaries: bool = False
    ) -> None:
        self.interval = interval
        self.boundaries = boundaries
        self.events: list[Event] = []
        self.lines: list[bytes] = []
        self.training_id: str | None = None
        self.closed = False
        self.flushes = 0
        self.opened = 0

    def open(self, training_id: str) -> int | None:
        """Bind to a run; holds no earlier events."""
        self.training_id = training_id
        self.opened += 1
        return None

    def write(self, event: Event) -> None:
        """Encode and keep *event* (raises like a real sink on an unencodable one)."""
        line = encode(event)
        self.events.append(event)
        self.lines.append(line)

    def flush(self, durable: bool) -> None:
        """Count the flush."""
        self.flushes += 1

    def close(self) -> None:
        """Remember that the run closed the sink."""
        self.closed = True

    def of_type(self, cls: type[Any]) -> list[Any]:
        """The recorded events of one class."""
        return [e for e in self.events if isinstance(e, cls)]

    @property
    def seqs(self) -> list[int]:
        """The seq of every recorded event, in order."""
        return [e.seq for e in self.events]


class FailingSink(RecordingSink):
    """A recording sink that raises while ``failing`` is set (fault injection).

    Args:
        interval, boundaries: as for :class:`RecordingSink`.
        error: the exception factory used while failing (default ``OSError``
            with ENOSPC, "No space left on device").
        fail_open: make ``open`` raise the same error while failing.

    Attributes:
        failing: raise on every write (and open, with *fail_open*) while set.
        attempts: every write attempt, failed or not.
        failures: the writes that raised.
    """

    name = "failing"

    def __init__(
        self,
        *,
        interval: float = 0.0,
        boundaries: bool = False,
        error: Callable[[], BaseException] | None = None,
        fail_open: bool = False,
    ) -> None:
        super().__init__(interval=interval, boundaries=boundaries)
        self.failing = False
        self.fail_open = fail_open
        self.attempts = 0
        self.failures = 0
        self._fail_next = 0
        self._error = error or (lambda: OSError(28, "No space left on device"))

    def fail_next(self, count: int) -> None:
        """Make the next *count* writes raise, then work again."""
        self._fail_next = count

    def open(self, training_id: str) -> int | None:
        """Bind to a run; raises while failing if *fail_open* was given."""
        if self.fail_open and self.failing:
            raise self._error()
        return super().open(training_id)

    def write(self, event: Event) -> None:
        """Raise while failing (or for the next counted writes); else record."""
        self.attempts += 1
        if self.failing or self._fail_next > 0:
            self._fail_next = max(0, self._fail_next - 1)
            self.failures += 1
            raise self._error()
        super().write(event)
