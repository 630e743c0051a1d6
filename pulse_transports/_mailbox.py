"""One subscriber's mailbox for the in-process bus: scope, rate limit, coalescing, bounds.

Private to :mod:`pulse_transports.inprocess`, which re-exports its public
names (:class:`StateSnapshot`, :data:`Item`, the default limits); the
delivery rules it implements are described there.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeAlias

import attrs

from pulse_core._log import get_logger
from pulse_core.events import (
    Event,
    Heartbeat,
    Metrics,
    Progress,
    UnknownEvent,
)
from pulse_core.policy import Throttle
from pulse_core.state import RunState
from pulse_transports.wire import Live, Resync

log = get_logger("pulse.inprocess")

#: Items a subscriber may have waiting before its progress is coalesced.
BUFFER: Final = 1000
#: Items a subscriber may have waiting before it is told to resync and dropped.
LIMIT: Final = 10_000
#: Recent events kept per run for resuming subscribers.
RECENT: Final = 256
#: Runs kept in memory (ended ones are forgotten first).
MAX_RUNS: Final = 256
#: Seconds an ended run stays in memory (and in new subscribers' snapshots).
KEEP_ENDED: Final = 3600.0


@attrs.frozen
class StateSnapshot:
    """The state of one run when the subscription started."""

    training_id: str
    state: RunState


Item: TypeAlias = Event | StateSnapshot | Live | Resync

_KIND_OF: Final[Mapping[type[Any], str]] = {
    Progress: "progress",
    Metrics: "metrics",
    Heartbeat: "heartbeat",
}


def coalesce_kind(event: Event) -> str | None:
    """The rate-limited stream *event* belongs to, or None if it is never held.

    Progress, metrics and heartbeats are their own streams; each unknown
    event type is one too (a future kind must not flood a subscriber).
    """
    kind = _KIND_OF.get(event.__class__)
    if kind is None and isinstance(event, UnknownEvent):
        return "unknown:" + event.type
    return kind


class _Line:
    """One run's events waiting for one subscriber, in seq order.

    A held value that a newer one of its kind supersedes stays in the deque
    as a dead entry (dropping it from the middle would cost O(n)); it is
    skipped when it reaches the head, and dead entries are swept out when
    they are many.
    """

    __slots__ = ("dead", "events", "latest")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.latest: dict[str, Event] = {}  # kind -> the live held value
        self.dead = 0

    def sweep(self) -> None:
        latest = self.latest
        self.events = deque(
            e for e in self.events if (k := coalesce_kind(e)) is None or latest.get(k) is e
        )
        self.dead = 0


class Mailbox:
    """One subscriber's queue: scope, rate limit, coalescing and bounds.

    Events due now go to ``ready`` (what the consumer takes). Per run, a
    value of a rate-limited stream that is not due waits in the run's line,
    and so does every later event of that run: a status waits behind the
    value held before it until that value is due (at most one interval), or
    goes at once when a newer value of that kind supersedes the held one.
    So each run's events come in seq order, one value per stream per
    interval at most, and the last value always arrives.

    Not thread-safe: the bus calls it under its lock.

    Args:
        interval: the least seconds between two values of one stream of a run.
        buffer: waiting items above which rate-limited values stay held.
        limit: waiting items above which the subscriber is dropped.
        training_id: the one run this subscriber wants (None: all).
    """

    __slots__ = (
        "buffer",
        "coalesced",
        "floor",
        "interval",
        "limit",
        "lines",
        "overflowed",
        "ready",
        "sent_at",
        "training_id",
        "waiting",
    )

    def __init__(
        self, interval: float, buffer: int, limit: int, training_id: str | None = None
    ) -> None:
        self.interval = interval
        self.buffer = buffer
        self.limit = limit
        self.training_id = training_id
        self.ready: deque[Item] = deque()
        self.lines: dict[str, _Line] = {}
        self.waiting = 0  # live events in lines
        #: (run, stream) -> its rate limiter (when its last value went out).
        self.sent_at: dict[tuple[str, str], Throttle] = {}
        #: per run: the highest seq already delivered or covered (no duplicates).
        self.floor: dict[str, int] = {}
        self.overflowed = False
        self.coalesced = 0

    def wants(self, training_id: str) -> bool:
        """True if *training_id* is in this subscriber's scope."""
        return self.training_id is None or self.training_id == training_id

    def push(self, item: Item) -> None:
        """Queue a catch-up item (snapshot, missed event, marker) as is."""
        self.ready.append(item)
        if isinstance(item, Event):
            self.floor[item.training_id] = max(self.floor.get(item.training_id, 0), item.seq)

    def restate(self, snapshot: StateSnapshot) -> None:
        """Queue a run's state in place of whatever of that run is held back.

        The held values are folded into the snapshot already: sending them
        after it would make a subscriber read old news (a progress value)
        after the snapshot that says the run is lost.
        """
        tid = snapshot.training_id
        line = self.lines.pop(tid, None)
        if line is not None:
            self.waiting -= len(line.events) - line.dead
        self.ready.append(snapshot)
        self.floor[tid] = max(self.floor.get(tid, 0), snapshot.state.last_seq)

    def offer(self, event: Event, now: float) -> bool:
        """Take a live event; True if the consumer should look at the queue."""
        if self.overflowed:
            return False
        tid = event.training_id
        if event.seq <= self.floor.get(tid, 0):
            return False
        kind = coalesce_kind(event)
        line = self.lines.get(tid)
        if line is None:
            if kind is None or (len(self.ready) < self.buffer and self._due(tid, kind, now)):
                self.ready.append(event)
                if kind is None and len(self.ready) + self.waiting > self.limit:
                    self._overflow()
                return True
            line = self.lines[tid] = _Line()
            woken = True  # a new deadline for the consumer
        else:
            woken = False
        if kind is not None:
            if kind in line.latest:
                line.dead += 1
                self.waiting -= 1
                self.coalesced += 1
            line.latest[kind] = event
        line.events.append(event)
        self.waiting += 1
        woken = self._advance(tid, line, now) or woken
        if len(self.ready) + self.waiting > self.limit:
            self._overflow()
            return True
        return woken

    def _due(self, training_id: str, kind: str, now: float) -> bool:
        """True (and noted as sent) if a value of this stream may go out now."""
        key = (training_id, kind)
        throttle = self.sent_at.get(key)
        if throttle is None:
            throttle = self.sent_at[key] = Throttle(self.interval)
        return throttle.offer(now)

    def _advance(self, training_id: str, line: _Line, now: float) -> bool:
        """Move what may go out now from the head of a run's line to ready."""
        events, latest, ready = line.events, line.latest, self.ready
        moved = False
        while events:
            head = events[0]
            kind = coalesce_kind(head)
            if kind is not None:
                if latest.get(kind) is not head:  # superseded by a newer value
                    events.popleft()
                    line.dead -= 1
                    continue
                if len(ready) >= self.buffer or not self._due(training_id, kind, now):
                    break
                del latest[kind]
            events.popleft()
            self.waiting -= 1
            ready.append(head)
            moved = True
        if not events:
            del self.lines[training_id]
        elif line.dead > 32 and 2 * line.dead > len(events):
            line.sweep()
        return moved

    def _overflow(self) -> None:
        waiting = len(self.ready) + self.waiting
        self.overflowed = True
        self.ready.clear()
        self.lines.clear()
        self.waiting = 0
        self.ready.append(
            Resync(reason=f"subscriber fell behind: {waiting} items waiting", buffered=waiting)
        )

    def take(self, now: float, limit: int = 1 << 30) -> list[Item]:
        """Remove and return up to *limit* items due now, oldest first."""
        ready = self.ready
        if self.lines and len(ready) < self.buffer:
            for tid in list(self.lines):
                self._advance(tid, self.lines[tid], now)
        if not ready:
            return []
        if len(ready) <= limit:
            items = list(ready)
            ready.clear()
            return items
        return [ready.popleft() for _ in range(limit)]

    def next_due(self) -> float | None:
        """When the earliest held value becomes due, or None."""
        due: float | None = None
        for tid, line in self.lines.items():
            kind = coalesce_kind(line.events[0])
            if kind is None:
                continue  # held back only by a full buffer: the consumer is busy
            throttle = self.sent_at.get((tid, kind))
            when = (throttle.last if throttle is not None else float("-inf")) + self.interval
            if due is None or when < due:
                due = when
        return due

    def forget(self, training_id: str) -> None:
        """Drop a run's held events and rate state (the bus forgot the run)."""
        line = self.lines.pop(training_id, None)
        if line is not None:
            self.waiting -= len(line.events) - line.dead
        self.floor.pop(training_id, None)  # the bus's own seq check takes over
        for key in [k for k in self.sent_at if k[0] == training_id]:
            del self.sent_at[key]


def replay(
    mailbox: Mailbox,
    training_id: str,
    after: int,
    upto: int | None,
    past: Iterable[Event] | None,
    recent: Iterable[Event],
) -> None:
    """Queue a run's events with after < seq <= upto, each seq once, in order."""
    missed: dict[int, Event] = {}
    for source in (past or (), recent):
        for event in source:
            seq = event.seq
            if seq > after and (upto is None or seq <= upto) and event.training_id == training_id:
                missed[seq] = event
    for seq in sorted(missed):
        mailbox.push(missed[seq])
