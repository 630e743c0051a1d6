"""Rate limiting and failure policy: how often, how much, how long to wait.

This module owns the numbers and small pure helpers that decide when a
coalesced value is forwarded, how a failing sink is retried and how much a
failing sink may buffer. It keeps no clock: callers pass ``now``. Must never
import I/O modules.

Throttle semantics (per sink, per run): leading and trailing edge. A new
value is forwarded at once if the sink's interval has passed since its last
forward; otherwise it waits, coalesced with later values (last wins), and is
forwarded when the interval has passed -- by the next call or by the run's
background thread, whichever comes first. So the latest value always reaches
every sink within about one interval, and a sink never gets more than one
progress and one metrics event per interval.
"""

from __future__ import annotations

from typing import Final

import attrs

#: Default interval of live sinks (UI, socket, v1 snapshot): 10 updates/s.
LIVE_INTERVAL: Final = 0.1
#: Default interval of the durable log: 1 update/s (plus epoch boundaries).
LOG_INTERVAL: Final = 1.0
#: First retry delay of a failing sink, doubled per failure up to the max.
RETRY_FIRST: Final = 0.05
RETRY_MAX: Final = 5.0
#: Events a failing sink may hold before it starts dropping (oldest
#: progress/metrics/heartbeat first, then the oldest of the others). Held
#: progress/metrics are coalesced, so the buffer grows only with status,
#: error and meta events while a sink fails.
BUFFER_EVENTS: Final = 10_000
#: Log a sink failure on the 1st, then every Nth occurrence.
LOG_EVERY: Final = 100
#: Tries a sink gets to take one event when it fails with something other
#: than an OSError (e.g. TypeError: it may never take that event); then the
#: event is dropped (and counted) so the events behind it are not stuck.
POISON_ATTEMPTS: Final = 3
#: Default seconds between heartbeats of a quiet run (the same value as
#: :data:`pulse_core.liveness.HEARTBEAT_INTERVAL`, which readers assume).
HEARTBEAT_INTERVAL: Final = 5.0


def retry_delay(failures: int) -> float:
    """Seconds to wait before retry number *failures* (1-based), capped."""
    if failures <= 0:
        return 0.0
    return float(min(RETRY_MAX, RETRY_FIRST * (2 ** min(failures - 1, 16))))


def background_tick(intervals: list[float], heartbeat: float) -> float:
    """How often a run's background thread wakes to deliver trailing values.

    Half the smallest sink interval, so a coalesced value waits at most about
    one interval; never more often than 50 times a second, never less often
    than the heartbeat.
    """
    positive = [i for i in intervals if i > 0]
    smallest = min(positive) if positive else 0.1
    return max(0.02, min(smallest / 2, heartbeat))


@attrs.define
class Throttle:
    """A leading+trailing edge rate limiter for one stream (used by readers).

    ``offer(now)`` says whether a value may go out now; if not, the caller
    keeps the value and asks ``due(now)`` later.
    """

    interval: float
    last: float = float("-inf")
    pending: bool = False

    def offer(self, now: float) -> bool:
        """Record a new value; True if it may be forwarded now."""
        if now - self.last >= self.interval:
            self.last = now
            self.pending = False
            return True
        self.pending = True
        return False

    def due(self, now: float) -> bool:
        """True if a held value should be forwarded now (trailing edge)."""
        if self.pending and now - self.last >= self.interval:
            self.last = now
            self.pending = False
            return True
        return False

    def next_due(self) -> float | None:
        """When a held value becomes due, or None if nothing is held."""
        return self.last + self.interval if self.pending else None
