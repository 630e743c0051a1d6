"""One subscriber's mailbox for the in-process bus: scope, rate limit, coalescing, bounds.

Private to :mod:`pulse_transports.inprocess`, which re-exports its public
names (:class:`StateSnapshot`, :data:`Item`, the default limits); the
delivery rules it implements are described there. Every bound is in items
and in bytes (:func:`item_size`, an estimate of an item's encoded size).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeAlias

import attrs
import orjson

from pulse_core._log import get_logger
from pulse_core.codec import encode, to_dict
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
#: Bytes a subscriber may have waiting before its progress is coalesced.
BUFFER_BYTES: Final = 4 << 20
#: Bytes a subscriber may have waiting before it is told to resync and dropped.
LIMIT_BYTES: Final = 16 << 20
#: Items taken from a mailbox at once (one write to a subscriber's socket, one
#: SSE message), and their bytes beyond the first (what may wait in a socket's buffer).
BATCH: Final = 256
BATCH_BYTES: Final = 1 << 20
#: Recent events kept per run for resuming subscribers.
RECENT: Final = 256
#: Bytes of recent events kept per run, and for all runs together.
RECENT_BYTES: Final = 512 << 10
RECENT_TOTAL: Final = 8 << 20
#: What a snapshot is counted as (a run's state: bounded lists and a few fields).
SNAPSHOT_BYTES: Final = 4096
#: Runs kept in memory (ended ones are forgotten first).
MAX_RUNS: Final = 256
#: Seconds an ended run stays in memory (and in new subscribers' snapshots).
KEEP_ENDED: Final = 3600.0
#: Most seconds a status, error, meta or dropped event waits behind a held
#: value, whatever the subscriber's rate: then the held values go out early.
URGENT_WAIT: Final = 0.1


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


def item_size(item: Item) -> int:
    """About how many bytes *item* takes held in memory (what the byte budgets count).

    Progress and heartbeats are small and fixed; metrics grow with their
    names (three mappings); other events (status, error, meta, unknown
    types: they carry free text and details) are measured as JSON, without
    the line bound, plus the object's own overhead.
    """
    cls = item.__class__
    if cls is Progress or cls is Heartbeat:
        return 400
    if cls is Metrics:
        assert isinstance(item, Metrics)
        return 700 + 120 * (len(item.extra) + len(item.min) + len(item.max))
    if isinstance(item, StateSnapshot):
        return SNAPSHOT_BYTES
    if isinstance(item, Live):
        return 64 + 40 * len(item.runs)
    if isinstance(item, Resync):
        return 128
    try:
        return 400 + len(orjson.dumps(to_dict(item)))
    except TypeError:  # a value orjson cannot write: the encoder will repair it
        return 400 + len(encode(item))


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

    __slots__ = ("dead", "events", "latest", "urgent")

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self.latest: dict[str, Event] = {}  # kind -> the live held value
        self.dead = 0
        #: when each waiting status, error, meta or dropped event came, in order
        self.urgent: deque[float] = deque()

    def sweep(self) -> None:
        latest = self.latest
        self.events = deque(
            e for e in self.events if (k := coalesce_kind(e)) is None or latest.get(k) is e
        )
        self.dead = 0


@attrs.define(eq=False, repr=False)
class Mailbox:
    """One subscriber's queue: scope, rate limit, coalescing and bounds.

    Events due now go to ``ready`` (what the consumer takes). Per run, a
    value of a rate-limited stream that is not due waits in the run's line,
    and so does every later event of that run: a status waits behind the
    value held before it until that value is due, or goes at once when a
    newer value of that kind supersedes the held one. Whatever the rate, a
    status, error, meta or dropped event waits at most :data:`URGENT_WAIT`:
    then the values held before it go out with it, early.
    So each run's events come in seq order, one value per stream per
    interval at most, and the last value always arrives.

    Not thread-safe: the bus calls it under its lock.

    Args:
        interval: the least seconds between two values of one stream of a run.
        buffer: waiting items above which rate-limited values stay held.
        limit: waiting items above which the subscriber is dropped.
        training_id: the one run this subscriber wants (None: all).
        buffer_bytes, limit_bytes: the same two bounds in bytes (:func:`item_size`).
    """

    interval: float
    buffer: int
    limit: int
    training_id: str | None = None
    buffer_bytes: int = attrs.field(default=BUFFER_BYTES, kw_only=True)
    limit_bytes: int = attrs.field(default=LIMIT_BYTES, kw_only=True)
    #: of the items in ready and the live events in lines
    nbytes: int = attrs.field(default=0, init=False)
    ready: deque[Item] = attrs.field(factory=deque, init=False)
    lines: dict[str, _Line] = attrs.field(factory=dict, init=False)
    #: live events in lines
    waiting: int = attrs.field(default=0, init=False)
    #: (run, stream) -> its rate limiter (when its last value went out).
    sent_at: dict[tuple[str, str], Throttle] = attrs.field(factory=dict, init=False)
    #: per run: the highest seq already delivered or covered (no duplicates).
    floor: dict[str, int] = attrs.field(factory=dict, init=False)
    overflowed: bool = attrs.field(default=False, init=False)
    coalesced: int = attrs.field(default=0, init=False)

    def wants(self, training_id: str) -> bool:
        """True if *training_id* is in this subscriber's scope."""
        return self.training_id is None or self.training_id == training_id

    def push(self, item: Item) -> None:
        """Queue a catch-up item (snapshot, missed event, marker) as is."""
        self.ready.append(item)
        self.nbytes += item_size(item)
        if isinstance(item, Event):
            self.floor[item.training_id] = max(self.floor.get(item.training_id, 0), item.seq)

    def restate(self, snapshot: StateSnapshot) -> None:
        """Queue a run's state in place of whatever of that run is held back.

        The held values are folded into the snapshot already: sending them
        after it would make a subscriber read old news (a progress value)
        after the snapshot that says the run is lost.
        """
        tid = snapshot.training_id
        self._drop_line(tid)
        self.ready.append(snapshot)
        self.nbytes += item_size(snapshot)
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
        size = item_size(event)
        if line is None:
            if kind is None or (not self._full() and self._due(tid, kind, now)):
                self.ready.append(event)
                self.nbytes += size
                if kind is None and self._over():
                    self._overflow()
                return True
            line = self.lines[tid] = _Line()
            woken = True  # a new deadline for the consumer
        else:
            woken = False
        if kind is not None:
            old = line.latest.get(kind)
            if old is not None:
                line.dead += 1
                self.waiting -= 1
                self.nbytes -= item_size(old)
                self.coalesced += 1
            line.latest[kind] = event
        else:
            woken = woken or not line.urgent  # an earlier deadline for the consumer
            line.urgent.append(now)
        line.events.append(event)
        self.waiting += 1
        self.nbytes += size
        woken = self._advance(tid, line, now) or woken
        if self._over():
            self._overflow()
            return True
        return woken

    def _full(self) -> bool:
        """True if rate-limited values must stay held (the consumer is behind)."""
        return len(self.ready) >= self.buffer or self.nbytes >= self.buffer_bytes

    def _over(self) -> bool:
        """True if the subscriber is past its bound and must be dropped."""
        return len(self.ready) + self.waiting > self.limit or self.nbytes > self.limit_bytes

    def _due(self, training_id: str, kind: str, now: float, force: bool = False) -> bool:
        """True (and noted as sent) if a value of this stream may (or, forced, must) go now."""
        key = (training_id, kind)
        throttle = self.sent_at.get(key)
        if throttle is None:
            throttle = self.sent_at[key] = Throttle(self.interval)
        if throttle.offer(now):
            return True
        if force:
            throttle.last, throttle.pending = now, False  # the next value waits an interval
        return force

    def _advance(self, training_id: str, line: _Line, now: float) -> bool:
        """Move what may go out now from the head of a run's line to ready.

        A held value is due when its interval has passed, or when a status,
        error, meta or dropped event has waited behind it for URGENT_WAIT.
        """
        events, latest, ready, urgent = line.events, line.latest, self.ready, line.urgent
        force = bool(urgent) and now - urgent[0] >= URGENT_WAIT
        moved = False
        while events:
            head = events[0]
            kind = coalesce_kind(head)
            if kind is not None:
                if latest.get(kind) is not head:  # superseded by a newer value
                    events.popleft()
                    line.dead -= 1
                    continue
                if self._full() or not self._due(training_id, kind, now, force):
                    break
                del latest[kind]
            else:
                urgent.popleft()
                force = bool(urgent) and now - urgent[0] >= URGENT_WAIT
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
        nbytes = self.nbytes
        self.ready.clear()
        self.lines.clear()
        self.waiting = 0
        resync = Resync(
            reason=f"subscriber fell behind: {waiting} items ({nbytes} bytes) waiting",
            buffered=waiting,
        )
        self.ready.append(resync)
        self.nbytes = item_size(resync)

    def take(self, now: float, limit: int = 1 << 30, max_bytes: int = 1 << 62) -> list[Item]:
        """Remove and return items due now, oldest first (*limit*; *max_bytes* past one)."""
        ready = self.ready
        if self.lines and not self._full():
            for tid in list(self.lines):
                self._advance(tid, self.lines[tid], now)
        items: list[Item] = []
        taken = 0
        while ready and len(items) < limit:
            size = item_size(ready[0])
            if items and taken + size > max_bytes:
                break
            items.append(ready.popleft())
            taken += size
        self.nbytes -= taken
        return items

    def next_due(self) -> float | None:
        """When the earliest held value becomes due, or None."""
        due: float | None = None
        for tid, line in self.lines.items():
            kind = coalesce_kind(line.events[0])
            if kind is None:
                continue  # held back only by a full buffer: the consumer is busy
            throttle = self.sent_at.get((tid, kind))
            when = (throttle.last if throttle is not None else float("-inf")) + self.interval
            if line.urgent:
                when = min(when, line.urgent[0] + URGENT_WAIT)
            if due is None or when < due:
                due = when
        return due

    def _drop_line(self, training_id: str) -> None:
        """Drop what of a run is held back."""
        line = self.lines.pop(training_id, None)
        if line is not None:
            latest = line.latest
            live = [e for e in line.events if (k := coalesce_kind(e)) is None or latest.get(k) is e]
            self.waiting -= len(live)
            self.nbytes -= sum(item_size(e) for e in live)

    def forget(self, training_id: str) -> None:
        """Drop a run's held events and rate state (the bus forgot the run)."""
        self._drop_line(training_id)
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


_LIBC: Final = ctypes.util.find_library("c")


def trim_heap() -> bool:
    """Give freed heap memory back to the system (glibc's ``malloc_trim``), if possible.

    Large event texts are malloc'ed; once freed (runs expired, a subscriber
    gone) glibc keeps the pages unless asked. False without such a call.
    """
    if _LIBC is None:
        return False
    try:
        trim = ctypes.CDLL(_LIBC).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


#: glibc's ``mallopt`` parameter for the most malloc arenas a process makes.
_M_ARENA_MAX: Final = -8


def one_malloc_arena() -> bool:
    """Make threads started from now on share glibc's main malloc arena; False if not glibc.

    Each thread otherwise gets an arena of its own, and ``malloc_trim``
    never shrinks such an arena's top: what a worker thread once held stays.
    """
    try:
        return bool(ctypes.CDLL(_LIBC).mallopt(_M_ARENA_MAX, 1)) if _LIBC else False
    except (OSError, AttributeError):
        return False
