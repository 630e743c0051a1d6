"""Rate limiting and failure policy: how often, how much, how long to wait.

This module owns the numbers and small pure helpers that decide when a
coalesced value is forwarded, how a failing sink is retried, how much a
failing sink may buffer, how often failures and bad input are logged and how
long a writer thread yields the GIL. It keeps no clock: callers pass ``now``.
Must never import I/O modules.

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
from collections.abc import Callable, Hashable, Iterator
from typing import Final, Generic, TypeVar

import attrs

from pulse_core.events import Event, Heartbeat, Metrics, Progress
from pulse_core.liveness import HEARTBEAT_INTERVAL as _BEAT

T = TypeVar("T")

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
#: Notes (a restated status) and non-fatal errors a run may send in a burst;
#: past it, one per interval of its slowest sink, the rest held and counted.
FLOOD_BURST: Final = 50
#: Seconds ``close()`` waits for the writer thread to write what is left.
CLOSE_TIMEOUT: Final = 5.0
#: Log a sink failure on the 1st, then every Nth occurrence.
LOG_EVERY: Final = 100
#: Tries a sink gets to take one event when it fails with something other
#: than an OSError (e.g. TypeError: it may never take that event); then the
#: event is dropped (and counted) so the events behind it are not stuck.
POISON_ATTEMPTS: Final = 3
#: Default seconds between heartbeats of a quiet run: the interval readers
#: assume (:data:`pulse_core.liveness.HEARTBEAT_INTERVAL`).
HEARTBEAT_INTERVAL: Final = _BEAT


@attrs.frozen
class Backoff:
    """Exponential backoff: *first* seconds, doubled per failure up to *cap*.

    With *jitter* ``j`` (0 to 1) a delay is scaled by ``1 - j * u`` for a
    caller-supplied ``u`` in [0, 1) (e.g. ``random.random()``), so processes
    that failed together do not retry together; the module stays free of
    randomness and clocks.
    """

    first: float = RETRY_FIRST
    cap: float = RETRY_MAX
    jitter: float = 0.0

    def delay(self, failures: int, u: float = 0.0) -> float:
        """Seconds to wait before retry number *failures* (1-based)."""
        if failures <= 0:
            return 0.0
        base = min(self.cap, self.first * (2 ** min(failures - 1, 32)))
        return float(base * (1.0 - self.jitter * min(max(u, 0.0), 1.0)))


@attrs.define
class Retry:
    """A failure streak with its backoff: when the next attempt may start.

    The next attempt is an absolute time (``not_before``), so a waiter woken
    early -- by new data, say -- does not retry early: whatever happens
    meanwhile, attempts are never closer than the backoff allows.
    """

    backoff: Backoff = attrs.field(factory=Backoff)
    failures: int = 0
    not_before: float = float("-inf")

    def failed(self, now: float, u: float = 0.0) -> float:
        """Count a failure at *now*; return the seconds until the next attempt."""
        self.failures += 1
        wait = self.backoff.delay(self.failures, u)
        self.not_before = now + wait
        return wait

    def succeeded(self) -> int:
        """End the streak; return how many failures it had."""
        failures, self.failures, self.not_before = self.failures, 0, float("-inf")
        return failures

    def wait(self, now: float) -> float:
        """Seconds left before an attempt is allowed (0 when it is)."""
        return max(0.0, self.not_before - now)


#: The failing-sink backoff of the emitter's routes (50 ms doubling to 5 s).
SINK_BACKOFF: Final = Backoff(RETRY_FIRST, RETRY_MAX)
#: The reconnection backoff of network senders: 50 ms doubling to 2 s, each
#: delay jittered at most 20 % shorter (about 10 attempts in a 10 s outage).
CONNECT_BACKOFF: Final = Backoff(RETRY_FIRST, 2.0, jitter=0.2)


def retry_delay(failures: int) -> float:
    """Seconds to wait before retry number *failures* (1-based), capped."""
    return SINK_BACKOFF.delay(failures)


def sampled(count: int, every: int = LOG_EVERY, first: int = 1) -> bool:
    """True for the occurrences worth a log line: the first *first*, then every *every*-th.

    The one rule behind "log the 1st and every Nth" of drop and failure
    counters (``count`` is 1-based, already incremented).
    """
    return 0 < count <= first or (every > 0 and count % every == 0)


#: Bad input a reader skips or refuses (a malformed log line, a refused
#: producer line, an invalid v1 snapshot) is logged one by one this many times
#: per reader, then every BAD_LOG_EVERY-th; all of it is counted.
BAD_LOG_FIRST: Final = 10
BAD_LOG_EVERY: Final = 1000


#: Seconds a writer thread sleeps to hand the GIL to a waiting training thread
#: (the emitter's writer between slices of work, the file sink between the
#: steps of a compaction). A thread waiting for the GIL gets it only when the
#: holder blocks or after the 5 ms switch interval; a syscall as short as a
#: page-cache write gives it back before the waiter wakes up, a sleep lets it in.
GIL_YIELD: Final = 0.0001


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
    """A leading+trailing edge rate limiter for one stream.

    Each bus subscriber keeps one per run and stream
    (:class:`pulse_transports.inprocess.Mailbox`). ``offer(now)`` says
    whether a value may go out now; if not, the caller keeps the value and
    asks ``due(now)`` later.
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
    *always_fits* appends past the bound (the run's end must get in). The
    rules are :class:`BoundedBuffer`'s, on a caller's deque.
    """
    gone = _coalesce(buffer, event, sample_kind)
    head_changed = gone is not None and gone[0] == 0
    buffer.append(event)
    dropped: tuple[Event, ...] = ()
    if not always_fits and len(buffer) > limit:
        dropped = trim_events(buffer, len(buffer) - limit)
        head_changed = True
    return Held(gone is not None, dropped, head_changed)


def trim_events(buffer: deque[Event], excess: int) -> tuple[Event, ...]:
    """Remove *excess* events, the oldest samples first, then the oldest others."""
    dropped = []
    for _ in range(max(0, excess)):
        victim = _victim(buffer, sample_kind, None)
        dropped.append(buffer[victim])
        del buffer[victim]
    return tuple(dropped)


def _coalesce(
    items: deque[T], item: T, key: Callable[[T], Hashable | None]
) -> tuple[int, T] | None:
    """Remove the item *item* supersedes (same key since the last kept one)."""
    mine = key(item)
    if mine is None:
        return None
    for index in range(len(items) - 1, -1, -1):
        held = items[index]
        held_key = key(held)
        if held_key == mine:
            del items[index]
            return index, held
        if held_key is None:
            return None
    return None


def _victim(
    items: deque[T], key: Callable[[T], Hashable | None], protect: Callable[[T], bool] | None
) -> int:
    """Index to drop: the oldest keyed item, else the oldest unprotected, else the oldest."""
    victim = next((i for i, e in enumerate(items) if key(e) is not None), None)
    if victim is None and protect is not None:
        victim = next((i for i, e in enumerate(items) if not protect(e)), None)
    return victim or 0


def sample_kind(event: Event) -> Hashable | None:
    """The coalescing key of an event: its class name for samples, None for the rest."""
    return event.__class__.__name__ if isinstance(event, SAMPLE_TYPES) else None


@attrs.define(eq=False, repr=False)
class BoundedBuffer(Generic[T]):
    """A FIFO bounded by a count and (optionally) bytes, coalescing by a key.

    ``key(item)`` names the stream an item supersedes (None: kept, never
    coalesced). A new keyed item replaces the same key still waiting since
    the last kept item, so the order of kept items is never changed and the
    latest value wins. Past either bound, the oldest keyed item goes first,
    then the oldest kept one that ``protect`` does not cover, then the
    oldest. ``size(item)`` counts toward *max_bytes*. Not thread-safe: the
    owner locks.
    """

    limit: int
    key: Callable[[T], Hashable | None] = attrs.field(kw_only=True)
    max_bytes: int | None = attrs.field(default=None, kw_only=True)
    size: Callable[[T], int] | None = attrs.field(default=None, kw_only=True)
    protect: Callable[[T], bool] | None = attrs.field(default=None, kw_only=True)
    items: deque[T] = attrs.field(factory=deque, kw_only=True)
    nbytes: int = attrs.field(default=0, kw_only=True)

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def __getitem__(self, index: int) -> T:
        return self.items[index]

    def _weight(self, item: T) -> int:
        return self.size(item) if self.size is not None else 0

    def put(self, item: T, *, always_fits: bool = False) -> tuple[int, tuple[T, ...]]:
        """Append *item*; return (coalesced count, items dropped to stay in bounds).

        *always_fits* appends past the bounds (a run's end must get in).
        """
        gone = _coalesce(self.items, item, self.key)
        if gone is not None:
            self.nbytes -= self._weight(gone[1])
        coalesced = int(gone is not None)
        self.items.append(item)
        self.nbytes += self._weight(item)
        return coalesced, (() if always_fits else self.trim())

    def over(self) -> bool:
        """True while either bound is exceeded."""
        return len(self.items) > self.limit or (
            self.max_bytes is not None and self.nbytes > self.max_bytes
        )

    def trim(self) -> tuple[T, ...]:
        """Drop items until within both bounds; return them."""
        dropped = []
        while self.items and self.over():
            dropped.append(self._drop_one())
        return tuple(dropped)

    def _drop_one(self) -> T:
        items = self.items
        index = _victim(items, self.key, self.protect)
        gone = items[index]
        del items[index]
        self.nbytes -= self._weight(gone)
        return gone

    def popleft(self) -> T:
        """Take the oldest item."""
        item = self.items.popleft()
        self.nbytes -= self._weight(item)
        return item

    def take(self, most: int) -> list[T]:
        """Take up to *most* of the oldest items."""
        return [self.popleft() for _ in range(min(most, len(self.items)))]

    def requeue(self, batch: list[T]) -> tuple[T, ...]:
        """Put an unsent *batch* back at the front; return what the bounds drop."""
        for item in reversed(batch):
            self.items.appendleft(item)
            self.nbytes += self._weight(item)
        return self.trim()
