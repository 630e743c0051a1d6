"""The in-process bus: live run state and rate-limited fan-out, without bytes.

This module owns :class:`Bus` -- the live state of every run it hears of (a
:class:`~pulse_core.reducer.Folder` and a ring of recent events per run) and
its subscribers, each with its own mailbox (rate limit, coalescing, bounds:
:class:`~pulse_transports._mailbox.Mailbox`) -- and the ``inprocess`` sink
that publishes a run's events to it.
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
  dropped event waits behind the value held before it until that value is due
  or superseded, but never over 0.1 s whatever the rate (the held values then
  go out with it, early).
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
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Final

import attrs

from pulse_core._log import get_logger
from pulse_core.events import (
    TERMINAL_STATUSES,
    Event,
    StatusChanged,
)
from pulse_core.policy import LIVE_INTERVAL
from pulse_core.state import RunState
from pulse_transports._encoded import EncodedEvents
from pulse_transports._mailbox import (
    BATCH_BYTES,
    BUFFER,
    BUFFER_BYTES,
    KEEP_ENDED,
    LIMIT,
    LIMIT_BYTES,
    MAX_RUNS,
    RECENT,
    RECENT_BYTES,
    RECENT_TOTAL,
    Item,
    Mailbox,
    StateSnapshot,
    replay,
)
from pulse_transports._subscriptions import (
    AsyncSubscription,
    CallbackSubscription,
    _Run,
    _Subscription,
    _Timer,
)
from pulse_transports.wire import Live

__all__ = [
    "BATCH_BYTES",
    "BUFFER",
    "BUFFER_BYTES",
    "KEEP_ENDED",
    "LIMIT",
    "LIMIT_BYTES",
    "MAX_RUNS",
    "RECENT",
    "RECENT_BYTES",
    "RECENT_TOTAL",
    "AsyncSubscription",
    "Bus",
    "CallbackSubscription",
    "EncodedEvents",
    "InProcessSink",
    "Item",
    "StateSnapshot",
    "default_bus",
]

log = get_logger("pulse.inprocess")


@attrs.define(eq=False, repr=False, kw_only=True)
class Bus:
    """Live run state and rate-limited fan-out to subscribers, in one process.

    Args:
        interval: default seconds between two values of one stream of a run
            per subscriber (0.1: 10 updates/s).
        buffer: per-subscriber waiting items above which progress coalesces.
        limit: per-subscriber waiting items above which it is dropped.
        recent: events kept per run for resuming subscribers.
        max_runs: runs kept in memory.
        keep_ended: seconds an ended run (or a lost one, see :meth:`expire`) is kept.
        buffer_bytes, limit_bytes: *buffer* and *limit* in bytes.
        recent_bytes, recent_total: bytes of recent events kept per run and in all.
        clock: the monotonic clock (tests pass a fake one).
        timer: run the thread that delivers trailing values to callback
            subscribers (tests may call :meth:`tick` instead).
    """

    interval: float = LIVE_INTERVAL
    buffer: int = BUFFER
    limit: int = LIMIT
    recent: int = RECENT
    max_runs: int = MAX_RUNS
    keep_ended: float = KEEP_ENDED
    _clock: Callable[[], float] = time.monotonic
    _use_timer: bool = attrs.field(default=True, alias="timer")
    buffer_bytes: int = BUFFER_BYTES
    limit_bytes: int = LIMIT_BYTES
    recent_bytes: int = RECENT_BYTES
    recent_total: int = RECENT_TOTAL
    #: bytes of recent events held, all runs
    recent_used: int = attrs.field(default=0, init=False)
    _lock: threading.RLock = attrs.field(factory=threading.RLock, init=False)
    _runs: dict[str, _Run] = attrs.field(factory=dict, init=False)
    _subs: list[_Subscription] = attrs.field(factory=list, init=False)
    _timer: _Timer = attrs.field(default=attrs.Factory(_Timer, takes_self=True), init=False)
    published: int = attrs.field(default=0, init=False)
    duplicates: int = attrs.field(default=0, init=False)
    overflows: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        if self.buffer < 1 or self.limit < self.buffer:
            raise ValueError("need 1 <= buffer <= limit")

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
            self._keep(run, event)
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
            if sub.mailbox.overflowed and sub in self._subs:
                self._detach(sub)
                sub.dropped()
        return True

    def _keep(self, run: _Run, event: Event) -> None:
        """Keep *event* in its run's recent ones, in budget (past the total: ended runs' first)."""
        self.recent_used += run.keep(event, self.recent, self.recent_bytes)
        if self.recent_used > self.recent_total:
            target = self.recent_total * 9 // 10
            for other in sorted(self._runs.values(), key=lambda r: (r.ended_at is None, r.touched)):
                while other.recent and self.recent_used > target:
                    self.recent_used -= other.drop_oldest()
                if self.recent_used <= target:
                    return

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
                        self._keep(run, event)
                    if run.folder.state.is_terminal:
                        run.ended_at = run.touched
            return self.last_seq(training_id)

    def _add_run(self, training_id: str, now: float) -> _Run:
        self._forget_old(now)
        run = self._runs[training_id] = _Run(now)
        return run

    def expire(self, lost: Collection[str] = ()) -> int:
        """Forget the runs that ended more than ``keep_ended`` seconds ago; how many.

        Args:
            lost: runs known to be lost (their writer is gone): forgotten
                once silent for ``keep_ended`` seconds too.
        """
        with self._lock:
            return self._forget_old(self._clock(), lost, room=False)

    def _forget_old(self, now: float, lost: Collection[str] = (), *, room: bool = True) -> int:
        """Forget expired runs; with *room*, also the oldest beyond max_runs - 1."""
        runs = self._runs
        expired = [
            tid
            for tid, run in runs.items()
            if now - (run.touched if run.ended_at is None else run.ended_at) > self.keep_ended
            and (run.ended_at is not None or tid in lost)
        ]
        excess = len(runs) - len(expired) - (self.max_runs - 1)
        if room and excess > 0:
            rest = sorted(
                (tid for tid in runs if tid not in expired),
                key=lambda t: (runs[t].ended_at is None, runs[t].touched),
            )
            expired.extend(rest[:excess])
        for tid in expired:
            self.recent_used -= runs.pop(tid).nbytes
            for sub in self._subs:
                sub.mailbox.forget(tid)
        return len(expired)

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
                    mailbox.restate(StateSnapshot(training_id, run.folder.state))
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
        return len(self._subs)  # a list's length is read atomically

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
            self._timer.start()
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
            self.interval if interval is None else interval,
            self.buffer,
            self.limit,
            training_id,
            buffer_bytes=self.buffer_bytes,
            limit_bytes=self.limit_bytes,
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
                replay(mailbox, tid, after, last, past, run.recent)
                if past is None and not run.reaches(after):
                    # Events between the subscriber's seq and the oldest one kept
                    # are gone: the snapshot makes its state whole again.
                    mailbox.push(StateSnapshot(tid, run.folder.state))
                mailbox.floor[tid] = max(after, last)
            for tid, after in resume.items():
                if tid not in self._runs and mailbox.wants(tid) and tid in history:
                    replay(mailbox, tid, after, None, history[tid], ())
            if marker:
                mailbox.push(Live(runs=tuple(shown), time=time.time()))
            self._subs.append(sub)

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

    def close(self) -> None:
        """Detach every subscriber and stop the timer thread."""
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            sub.close()
        self._timer.close()


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
