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

from collections import deque
from typing import Final

import attrs

from pulse_core.events import Event, Heartbeat, Metrics, Progress

#: Events a newer one of the same kind supersedes (the latest value is enough).
SAMPLE_TYPES: Final = (Progress, Metrics, Heartbeat)

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
#: Events handed to a run's writer thread and not yet written, per sink:
#: below the limits they simply queue; at the event limit or the byte budget
#: a waiting progress/metrics/heartbeat is coalesced (latest wins) or the
#: oldest samples, then the oldest others, are dropped and counted (a run's
#: end always gets in). Only a writer stuck in I/O fills it.
OUTBOX_EVENTS: Final = 10_000
OUTBOX_BYTES: Final = 16 * 1024 * 1024
#: Seconds ``close()`` waits for the writer thread to write what is left.
CLOSE_TIMEOUT: Final = 5.0
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


@attrs.frozen
class Held:
    """What :func:`hold_event` did besides appending.

    Attributes:
        coalesced: a waiting sample of the same kind was replaced.
        dropped: events removed (or the new one refused) to stay in the bound.
        head_changed: the first waiting event was removed.
    """

    coalesced: bool
    dropped: tuple[Event, ...]
    head_changed: bool


def hold_event(
    buffer: deque[Event], event: Event, limit: int, *, always_fits: bool = False
) -> Held:
    """Queue *event* in a bounded buffer of a sink that cannot send right now.

    A progress, metrics or heartbeat event replaces the same kind still
    waiting since the last status/error/meta event (so the order of those is
    kept and the latest value wins). When the buffer is full, the oldest
    waiting sample is dropped; if only statuses and errors wait, a new sample
    is refused instead, and a new status pushes out the oldest event.
    *always_fits* appends past the bound (the run's end must get in).
    """
    coalesced = head_changed = False
    if isinstance(event, SAMPLE_TYPES):
        for index in range(len(buffer) - 1, -1, -1):
            held = buffer[index]
            if held.__class__ is event.__class__:
                del buffer[index]
                coalesced = True
                head_changed = index == 0
                break
            if not isinstance(held, SAMPLE_TYPES):
                break
    dropped: tuple[Event, ...] = ()
    if len(buffer) >= limit and not always_fits:
        if isinstance(event, SAMPLE_TYPES) and not any(isinstance(e, SAMPLE_TYPES) for e in buffer):
            return Held(coalesced, (event,), head_changed)
        dropped = trim_events(buffer, len(buffer) + 1 - limit)
        head_changed = head_changed or bool(dropped)
    buffer.append(event)
    return Held(coalesced, dropped, head_changed)


def trim_events(buffer: deque[Event], excess: int) -> tuple[Event, ...]:
    """Remove *excess* events, the oldest samples first, then the oldest others."""
    dropped = []
    for _ in range(max(0, excess)):
        victim = next((i for i, e in enumerate(buffer) if isinstance(e, SAMPLE_TYPES)), 0)
        dropped.append(buffer[victim])
        del buffer[victim]
    return tuple(dropped)
