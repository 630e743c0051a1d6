"""The in-process bus: live run state and rate-limited fan-out, without bytes.

This module owns :class:`Bus` -- the live state of every run it hears of (a
:class:`~pulse_core.reducer.Folder` and a ring of recent events per run) and
its subscribers, each with its own :class:`Mailbox` (rate limit, coalescing,
bounds) -- and the ``inprocess`` sink that publishes a run's events to it.
The socket hub (:mod:`pulse_transports.hub`) is this bus plus a network
front, so both transports limit, coalesce and resume the same way; here no
event is ever serialised: subscribers get the very event objects the
emitter built.

Delivery rules (the same as the hub's, specs/hub-protocol.md):

* A subscriber first gets a :class:`StateSnapshot` of every run in its
  scope (or, for runs it resumes, the events after its last seq), then
  events.
* Per subscriber and run, progress, metrics, heartbeats and events of
  unknown types are each rate limited (leading and trailing edge, latest
  value wins, as :class:`~pulse_core.policy.Throttle`): at most one of each
  kind per ``interval``, and the last value always arrives.
* A run's events reach a subscriber in seq order: a status, error, meta or
  dropped event waits behind the value held before it until that value is
  due (at most one interval), or goes at once when a newer value of that
  kind supersedes the held one.
* Status, error, meta and dropped events are never dropped for a connected
  subscriber. A subscriber that falls behind has its progress coalesced
  once ``buffer`` items wait; past ``limit`` it gets a :class:`Resync` and
  is detached.
* Each event of a run is delivered at most once (no duplicates): an event
  whose seq is not above the last the bus applied is not forwarded.

Threads: :meth:`Bus.publish` may be called from any thread. Callback
subscribers are called on the publishing thread (or on the bus's timer
thread for trailing values), one call at a time per subscription: keep
callbacks quick. Async subscriptions belong to the event loop that created
them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, TypeAlias

import attrs

from pulse_core._log import get_logger
from pulse_core.events import (
    TERMINAL_STATUSES,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    StatusChanged,
    UnknownEvent,
)
from pulse_core.policy import LIVE_INTERVAL, Throttle, sampled
from pulse_core.reducer import Folder
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


class _Run:
    __slots__ = ("ended_at", "folder", "known_from", "recent", "touched")

    def __init__(self, recent: int, now: float) -> None:
        self.folder = Folder()
        self.recent: deque[Event] = deque(maxlen=recent)
        self.known_from = 1  # the bus has every event of the run from this seq on
        self.ended_at: float | None = None
        self.touched = now

    def reaches(self, after: int) -> bool:
        """True if the recent events hold everything after seq *after*."""
        if self.folder.last_seq <= after:
            return True
        recent = self.recent
        start = recent[0].seq if len(recent) == recent.maxlen else self.known_from
        return start <= after + 1


class _Subscription:
    """What the bus needs of a subscription."""

    def __init__(self, bus: Bus, mailbox: Mailbox) -> None:
        self.bus = bus
        self.mailbox = mailbox
        self.closed = False

    def wake(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop receiving; idempotent."""
        if not self.closed:
            self.closed = True
            self.bus._detach(self)
            self.wake()


class CallbackSubscription(_Subscription):
    """A subscription whose items are passed to a function as they are due."""

    def __init__(self, bus: Bus, mailbox: Mailbox, callback: Callable[[Item], object]) -> None:
        super().__init__(bus, mailbox)
        self.callback = callback
        self.failures = 0
        self._deliver_lock = threading.RLock()

    def wake(self) -> None:
        self.deliver()

    def deliver(self) -> None:
        """Call the callback with every item due now (never raises)."""
        if self.closed:
            return
        with self._deliver_lock:
            with self.bus._lock:
                items = self.mailbox.take(self.bus._clock())
                due = self.mailbox.next_due()
            if due is not None:
                self.bus._timer_wake()
            for item in items:
                try:
                    self.callback(item)
                except Exception:  # a subscriber must never break the publisher
                    self.failures += 1
                    if sampled(self.failures, 1000):
                        log.exception("pulse bus callback failed", failures=self.failures)

    def __enter__(self) -> CallbackSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSubscription(_Subscription):
    """A subscription read with ``async for`` (or :meth:`batch`) in one event loop."""

    def __init__(self, bus: Bus, mailbox: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(bus, mailbox)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._signalled = False
        self._items: deque[Item] = deque()

    def wake(self) -> None:
        if self._signalled:
            return
        self._signalled = True
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            self.closed = True
            self.bus._detach(self)

    async def batch(self, limit: int = 256) -> list[Item]:
        """Wait for the next items due (at most *limit*); [] once closed."""
        bus = self.bus
        while True:
            self._wake.clear()
            self._signalled = False
            with bus._lock:
                items = self.mailbox.take(bus._clock(), limit)
                due = self.mailbox.next_due()
            if items:
                if isinstance(items[-1], Resync):
                    self.close()
                return items
            if self.closed:
                return []
            handle = None
            if due is not None:
                handle = self._loop.call_later(max(0.0, due - bus._clock()), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if handle is not None:
                    handle.cancel()

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        if not self._items:
            self._items.extend(await self.batch())
            if not self._items:
                raise StopAsyncIteration
        return self._items.popleft()

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Bus:
    """Live run state and rate-limited fan-out to subscribers, in one process.

    Args:
        interval: default seconds between two values of one stream of a run
            per subscriber (0.1: 10 updates/s).
        buffer: per-subscriber waiting items above which progress coalesces.
        limit: per-subscriber waiting items above which it is dropped.
        recent: events kept per run for resuming subscribers.
        max_runs: runs kept in memory.
        keep_ended: seconds an ended run is kept.
        clock: the monotonic clock (tests pass a fake one).
        timer: run the thread that delivers trailing values to callback
            subscribers (tests may call :meth:`tick` instead).
    """

    def __init__(
        self,
        *,
        interval: float = LIVE_INTERVAL,
        buffer: int = BUFFER,
        limit: int = LIMIT,
        recent: int = RECENT,
        max_runs: int = MAX_RUNS,
        keep_ended: float = KEEP_ENDED,
        clock: Callable[[], float] = time.monotonic,
        timer: bool = True,
    ) -> None:
        if buffer < 1 or limit < buffer:
            raise ValueError("need 1 <= buffer <= limit")
        self.interval = interval
        self.buffer = buffer
        self.limit = limit
        self.recent = recent
        self.max_runs = max_runs
        self.keep_ended = keep_ended
        self._clock = clock
        self._lock = threading.RLock()
        self._runs: dict[str, _Run] = {}
        self._subs: list[_Subscription] = []
        self._use_timer = timer
        self._timer: threading.Thread | None = None
        self._timer_cond = threading.Condition(threading.Lock())
        self._timer_dirty = False
        self._closed = False
        self.published = 0
        self.duplicates = 0
        self.overflows = 0

    # -- producing -------------------------------------------------------------

    def publish(self, event: Event) -> bool:
        """Apply *event* to its run and offer it to every subscriber in scope.

        Returns:
            False if the event was not new (its seq is not above the last
            one applied for its run) and so was not forwarded.
        """
        tid = event.training_id
        woken: list[_Subscription] = []
        with self._lock:
            now = self._clock()
            run = self._runs.get(tid)
            if run is None:
                run = self._add_run(tid, now)
                run.known_from = event.seq
            elif event.seq <= run.folder.last_seq:
                self.duplicates += 1
                return False
            run.folder.apply(event)
            run.recent.append(event)
            run.touched = now
            if (
                isinstance(event, StatusChanged)
                and event.status in TERMINAL_STATUSES
                and run.ended_at is None
            ):
                run.ended_at = now
            self.published += 1
            for sub in self._subs:
                mailbox = sub.mailbox
                if mailbox.wants(tid) and mailbox.offer(event, now):
                    woken.append(sub)
                    if mailbox.overflowed:
                        self.overflows += 1
                        log.warning(
                            "pulse subscriber too slow; told to resync and dropped",
                            training_id=tid,
                            limit=mailbox.limit,
                        )
        for sub in woken:
            sub.wake()
            if sub.mailbox.overflowed:
                self._detach(sub)
        return True

    def seed(self, training_id: str, events: Iterable[Event]) -> int | None:
        """Load a run's past (its log) if the bus does not hold the run yet.

        Returns:
            The run's last seq on the bus afterwards, None if it holds nothing.
        """
        with self._lock:
            if training_id not in self._runs:
                past = [e for e in events if e.training_id == training_id]
                if past:
                    run = self._add_run(training_id, self._clock())
                    for event in past:
                        run.folder.apply(event)
                        run.recent.append(event)
                    if run.folder.state.is_terminal:
                        run.ended_at = run.touched
            return self.last_seq(training_id)

    def _add_run(self, training_id: str, now: float) -> _Run:
        self._forget_old(now)
        run = self._runs[training_id] = _Run(self.recent, now)
        return run

    def _forget_old(self, now: float) -> None:
        """Keep at most max_runs - 1 runs: ended ones (oldest) go first."""
        runs = self._runs
        expired = [
            tid
            for tid, run in runs.items()
            if run.ended_at is not None and now - run.ended_at > self.keep_ended
        ]
        excess = len(runs) - len(expired) - (self.max_runs - 1)
        if excess > 0:
            rest = sorted(
                (tid for tid in runs if tid not in expired),
                key=lambda t: (runs[t].ended_at is None, runs[t].touched),
            )
            expired.extend(rest[:excess])
        for tid in expired:
            del runs[tid]
            for sub in self._subs:
                sub.mailbox.forget(tid)

    # -- reading ---------------------------------------------------------------

    def restate(self, training_id: str) -> int:
        """Send the run's current state as a snapshot to every subscriber in scope.

        For news about a run that is not an event (the hub found its writer
        gone): subscribers learn it without waiting for an event that will
        never come. Returns how many subscribers were told.
        """
        woken: list[_Subscription] = []
        with self._lock:
            run = self._runs.get(training_id)
            if run is None:
                return 0
            for sub in self._subs:
                mailbox = sub.mailbox
                if mailbox.wants(training_id) and not mailbox.overflowed:
                    mailbox.push(StateSnapshot(training_id, run.folder.state))
                    woken.append(sub)
        for sub in woken:
            sub.wake()
        return len(woken)

    def last_seq(self, training_id: str) -> int | None:
        """The highest seq applied for a run, or None if the bus does not hold it."""
        with self._lock:
            run = self._runs.get(training_id)
            return run.folder.last_seq if run is not None else None

    def covers(self, training_id: str, after: int) -> bool:
        """True if the recent events held reach back to seq *after* + 1.

        A resuming subscriber needs older events (the run's log) only when
        this is False.
        """
        with self._lock:
            run = self._runs.get(training_id)
            return run is not None and run.reaches(after)

    def states(self) -> dict[str, RunState]:
        """The current state of every run held."""
        with self._lock:
            return {tid: run.folder.state for tid, run in self._runs.items()}

    def subscribers(self) -> int:
        """How many subscriptions are attached."""
        with self._lock:
            return len(self._subs)

    # -- subscribing -----------------------------------------------------------

    def subscribe(
        self,
        callback: Callable[[Item], object],
        *,
        training_id: str | None = None,
        interval: float | None = None,
        resume: Mapping[str, int] | None = None,
    ) -> CallbackSubscription:
        """Call *callback* with snapshots, then events (rate limited).

        Args:
            callback: called with each item; exceptions are logged, not raised.
            training_id: only this run (default: every run).
            interval: this subscriber's rate limit (default: the bus's).
            resume: last seq seen per run: those runs get the events after it
                (from the recent events kept) instead of a snapshot.
        """
        mailbox = self._mailbox(training_id, interval)
        sub = CallbackSubscription(self, mailbox, callback)
        self._attach(sub, resume or {}, {}, marker=False)
        if self._use_timer:
            self._start_timer()
        sub.deliver()
        return sub

    def stream(
        self,
        *,
        training_id: str | None = None,
        interval: float | None = None,
        resume: Mapping[str, int] | None = None,
        history: Mapping[str, Iterable[Event]] | None = None,
        marker: bool = False,
    ) -> AsyncSubscription:
        """Subscribe from a coroutine: iterate the result with ``async for``.

        Args:
            training_id: only this run (default: every run).
            interval: this subscriber's rate limit (default: the bus's).
            resume: last seq seen per run (see :meth:`subscribe`).
            history: older events of resumed runs (the hub passes their logs),
                merged with the recent events by seq.
            marker: end the catch-up with a :class:`~pulse_transports.wire.Live` item.
        """
        loop = asyncio.get_running_loop()
        sub = AsyncSubscription(self, self._mailbox(training_id, interval), loop)
        self._attach(sub, resume or {}, history or {}, marker=marker)
        return sub

    def _mailbox(self, training_id: str | None, interval: float | None) -> Mailbox:
        return Mailbox(
            self.interval if interval is None else interval, self.buffer, self.limit, training_id
        )

    def _attach(
        self,
        sub: _Subscription,
        resume: Mapping[str, int],
        history: Mapping[str, Iterable[Event]],
        *,
        marker: bool,
    ) -> None:
        mailbox = sub.mailbox
        with self._lock:
            shown: list[str] = []
            for tid, run in self._runs.items():
                if not mailbox.wants(tid):
                    continue
                shown.append(tid)
                last = run.folder.last_seq
                if tid not in resume:
                    mailbox.push(StateSnapshot(tid, run.folder.state))
                    mailbox.floor[tid] = last
                    continue
                after = resume[tid]
                past = history.get(tid)
                self._replay(mailbox, tid, after, last, past, run.recent)
                if past is None and not run.reaches(after):
                    # Events between the subscriber's seq and the oldest one kept
                    # are gone: the snapshot makes its state whole again.
                    mailbox.push(StateSnapshot(tid, run.folder.state))
                mailbox.floor[tid] = max(after, last)
            for tid, after in resume.items():
                if tid not in self._runs and mailbox.wants(tid) and tid in history:
                    self._replay(mailbox, tid, after, None, history[tid], ())
            if marker:
                mailbox.push(Live(runs=tuple(shown), time=time.time()))
            self._subs.append(sub)

    @staticmethod
    def _replay(
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
                if (
                    seq > after
                    and (upto is None or seq <= upto)
                    and event.training_id == training_id
                ):
                    missed[seq] = event
        for seq in sorted(missed):
            mailbox.push(missed[seq])

    def _detach(self, sub: _Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    # -- trailing values for callback subscribers ---------------------------------

    def tick(self) -> None:
        """Deliver due trailing values to callback subscribers (the timer's job)."""
        with self._lock:
            subs = [s for s in self._subs if isinstance(s, CallbackSubscription)]
        for sub in subs:
            sub.deliver()

    def _next_due(self) -> float | None:
        with self._lock:
            dues = [
                due
                for sub in self._subs
                if isinstance(sub, CallbackSubscription)
                and (due := sub.mailbox.next_due()) is not None
            ]
        return min(dues) if dues else None

    def _start_timer(self) -> None:
        with self._timer_cond:
            if self._timer is None and not self._closed:
                self._timer = threading.Thread(
                    target=self._run_timer, name="pulse-bus", daemon=True
                )
                self._timer.start()

    def _timer_wake(self) -> None:
        with self._timer_cond:
            self._timer_dirty = True
            self._timer_cond.notify()

    def _run_timer(self) -> None:
        cond = self._timer_cond
        while True:
            with cond:
                self._timer_dirty = False
            due = self._next_due()
            with cond:
                if self._closed:
                    return
                # A value held after _next_due() looked sets the dirty flag:
                # look again instead of sleeping past its deadline.
                if not self._timer_dirty:
                    wait = None if due is None else max(0.0, due - self._clock())
                    if wait is None or wait > 0:
                        cond.wait(wait)
            try:
                self.tick()
            except Exception:  # the timer thread must never die
                log.exception("pulse bus timer failed")

    def close(self) -> None:
        """Detach every subscriber and stop the timer thread."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()
        with self._timer_cond:
            self._closed = True
            self._timer_cond.notify()


_default_bus: Bus | None = None
_default_lock = threading.Lock()


def default_bus() -> Bus:
    """The process-wide bus the ``inprocess`` sink publishes to by default."""
    global _default_bus  # noqa: PLW0603 - one bus per process, made on first use
    with _default_lock:
        if _default_bus is None:
            _default_bus = Bus()
        return _default_bus


class InProcessSink:
    """Publishes a run's events to a :class:`Bus` (the ``inprocess`` transport).

    Args:
        home: unused (every transport factory takes it).
        interval: the least seconds between forwarded progress/metrics
            (default 0.025: the bus limits each subscriber to its own rate).
        bus: the bus (default: :func:`default_bus`).
    """

    name = "inprocess"
    boundaries = False
    OPTIONS: Final = {"interval": float}

    def __init__(
        self, *, home: object = None, interval: float = LIVE_INTERVAL / 4, bus: Bus | None = None
    ) -> None:
        self.interval = interval
        self.bus = bus if bus is not None else default_bus()

    def open(self, training_id: str) -> int | None:
        """Continue after the bus's last seq of this run, if it holds one."""
        return self.bus.last_seq(training_id)

    def write(self, event: Event) -> None:
        """Publish the event (subscriber callbacks may run on this thread)."""
        self.bus.publish(event)

    def flush(self, durable: bool) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        """Nothing to release: the bus outlives its runs."""
