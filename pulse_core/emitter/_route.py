"""One sink as a run sees it: its throttle, its outbox and its failure buffer.

This module owns :class:`_Route`, the emitter's per-sink state: when the
sink is next due (its rate limit), the bounded outbox of events the training
thread handed over and the run's writer thread has not written yet (bounded
in events and bytes: a stuck sink never grows memory), the bounded buffer of events a failing
sink could not take (coalescing progress/metrics/heartbeats, dropping the
oldest samples first, never statuses or errors while samples remain),
retries with backoff, poison events given up after a few tries, and the
drop and failure counters behind :meth:`~pulse_core.emitter.TrainingRun.sink_stats`.
Limits come from :mod:`pulse_core.policy`. Uses the library logger
(:mod:`pulse_core._log`) like the emitter; must never import
:mod:`pulse_transports`.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from pulse_core._log import get_logger
from pulse_core.events import TERMINAL_STATUSES, Dropped, ErrorReported, Event, StatusChanged
from pulse_core.policy import (
    BUFFER_EVENTS,
    OUTBOX_BYTES,
    OUTBOX_EVENTS,
    POISON_ATTEMPTS,
    hold_event,
    retry_delay,
    sampled,
    trim_events,
)
from pulse_core.ports import Sink

log = get_logger("pulse.emitter")

_INF: Final = float("inf")


def _always_fits(event: Event) -> bool:
    """Events that go into a full buffer anyway: a run's end and a drop report."""
    return isinstance(event, Dropped) or (
        isinstance(event, StatusChanged) and event.status in TERMINAL_STATUSES
    )


def _size(event: Event) -> int:
    """A rough size in bytes of *event* once encoded (for the outbox budget)."""
    if isinstance(event, StatusChanged | ErrorReported):
        size = 200 + len(event.message)
        details = getattr(event, "details", None)
        if details:
            size += len(repr(details))
        return size
    return 300


class _Route:
    """One sink as the run sees it: its throttle, outbox and failure buffer.

    Two sides, two threads: :meth:`send` (any thread, under the run's lock)
    only appends to the outbox; :meth:`deliver` and :meth:`retry` (the run's
    writer thread, never under the run's lock) do the sink I/O. The outbox
    and the drop counters are guarded by the route's own small lock, which
    is never held during I/O.

    Counters (see :meth:`TrainingRun.sink_stats`): ``failures`` is the
    current streak of failed writes (0 when healthy), ``failures_total`` all
    of them; ``dropped`` is what was dropped and not yet reported by a
    ``dropped`` event, ``dropped_total`` all of it; ``coalesced`` counts held
    progress/metrics/heartbeats that a newer one replaced while failing.
    """

    __slots__ = (
        "boundaries",
        "buffer",
        "coalesced",
        "dropped",
        "dropped_total",
        "failures",
        "failures_total",
        "head_attempts",
        "interval",
        "last_error",
        "last_write",
        "log_context",
        "name",
        "next_at",
        "opened",
        "outbox",
        "outbox_bytes",
        "qlock",
        "retry_at",
        "sent_metrics",
        "sent_progress",
        "sink",
        "training_id",
    )

    def __init__(self, sink: Sink, training_id: str) -> None:
        self.sink = sink
        self.training_id = training_id
        self.name = str(getattr(sink, "name", type(sink).__name__))
        self.log_context = {"sink": self.name, "training_id": training_id}  # in every log line
        try:
            interval = float(getattr(sink, "interval", 0.1))
        except (TypeError, ValueError):
            interval = 0.1
        self.interval = interval if interval >= 0 else 0.0
        self.boundaries = bool(getattr(sink, "boundaries", False))
        self.next_at = -_INF
        self.sent_progress = 0  # generation of the last progress sent
        self.sent_metrics = 0
        self.buffer: deque[Event] = deque()
        self.opened = True
        self.failures = 0
        self.failures_total = 0
        self.head_attempts = 0
        self.retry_at = 0.0
        self.dropped = 0
        self.dropped_total = 0
        self.coalesced = 0
        self.last_write = -_INF
        self.last_error = ""
        self.outbox: deque[Event] = deque()
        self.outbox_bytes = 0
        self.qlock = threading.Lock()

    @property
    def degraded(self) -> bool:
        return bool(self.buffer) or self.failures > 0 or not self.opened or self.dropped > 0

    @property
    def idle(self) -> bool:
        """Nothing handed over waits to be written (the failure buffer aside)."""
        return not self.outbox

    @property
    def healthy(self) -> bool:
        """Open and holding nothing: the next event goes straight to the sink."""
        return self.opened and not self.buffer

    def open_failed(self, exc: Exception, now: float) -> None:
        """Record that the sink could not be opened; :meth:`retry` opens it later."""
        self.opened = False
        self._failed(exc, now)

    def send(self, event: Event, now: float, always_fits: bool = False) -> None:
        """Hand *event* to the writer: append it to the outbox, never doing I/O.

        The outbox is bounded: at its limit in events or bytes a waiting
        progress/metrics/heartbeat is coalesced (latest wins) or the oldest
        samples, then the oldest others, are dropped and counted -- except
        *always_fits* events (a run's end).
        """
        self.last_write = now
        size = _size(event)
        with self.qlock:
            outbox = self.outbox
            if len(outbox) < OUTBOX_EVENTS and self.outbox_bytes + size <= OUTBOX_BYTES:
                outbox.append(event)
                self.outbox_bytes += size
                return
            held = hold_event(outbox, event, OUTBOX_EVENTS, always_fits=always_fits)
            victims = list(held.dropped)
            if not any(v is event for v in victims):
                self.outbox_bytes += size
            if held.coalesced:
                self.outbox_bytes -= size  # a sample of the same kind (and size) made way
            for victim in victims:
                if victim is not event:
                    self.outbox_bytes -= _size(victim)
            while self.outbox_bytes > OUTBOX_BYTES and len(outbox) > 1 and not always_fits:
                for victim in trim_events(outbox, 1):
                    self.outbox_bytes -= _size(victim)
                    victims.append(victim)
            if held.coalesced:
                self.coalesced += 1
            for victim in victims:
                self._count_drop(victim, None)

    def deliver(
        self, now: float, force: bool = False, pace: Callable[[], object] | None = None
    ) -> None:
        """Write what the outbox holds (writer thread, without the run's lock).

        *pace*, if given, is called after each event: the writer thread's
        chance to hand the GIL back to the training thread between slices.
        """
        self.retry(now, force)
        outbox = self.outbox
        while outbox:
            with self.qlock:
                if not outbox:
                    break
                event = outbox.popleft()
                self.outbox_bytes -= _size(event)
            self.write(event, now)
            if pace is not None:
                pace()

    def write(self, event: Event, now: float) -> bool:
        """Write or buffer *event* now (writer side); True if the sink took it."""
        always_fits = _always_fits(event)
        if self.buffer or not self.opened:
            self.retry(now)
            if self.buffer or not self.opened:
                self._hold(event, always_fits)
                return False
        try:
            self.sink.write(event)
        except Exception as exc:  # noqa: BLE001 - any sink failure is contained
            self._failed(exc, now)
            self._hold(event, always_fits)
            self.head_attempts = 0 if isinstance(exc, OSError) else 1
            return False
        return True

    def take_dropped(self) -> int:
        """The drops not yet reported, now reset (the caller reports them)."""
        with self.qlock:
            count, self.dropped = self.dropped, 0
        return count

    def retry(self, now: float, force: bool = False) -> None:
        """Reopen the sink if needed and drain the buffer (when a retry is due).

        The run reports drops (a ``dropped`` event) once the route is healthy.
        """
        if (not self.buffer and self.opened) or (now < self.retry_at and not force):
            return
        if not self.opened and not self._reopen(now):
            return
        buffer = self.buffer
        while buffer:
            try:
                self.sink.write(buffer[0])
            except Exception as exc:  # noqa: BLE001 - contained, retried later
                if not isinstance(exc, OSError):
                    # Not an I/O condition that may pass: the sink may never
                    # take this event. Give it a few tries, then drop it so
                    # the events behind it are not stuck forever.
                    self.head_attempts += 1
                    if self.head_attempts >= POISON_ATTEMPTS:
                        victim = buffer.popleft()
                        self.head_attempts = 0
                        self._drop(victim, exc)
                        continue
                self._failed(exc, now)
                return
            buffer.popleft()
            self.head_attempts = 0
        if self.failures:
            log.info(
                "pulse sink recovered",
                **self.log_context,
                failures=self.failures,
                dropped=self.dropped,
            )
        self.failures = 0
        self.retry_at = 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "failures": self.failures,
            "failures_total": self.failures_total,
            "buffered": len(self.buffer),
            "queued": len(self.outbox),
            "dropped": self.dropped,
            "dropped_total": self.dropped_total,
            "coalesced": self.coalesced,
            "opened": self.opened,
            "degraded": self.degraded,
            "last_error": self.last_error,
        }

    def _reopen(self, now: float) -> bool:
        try:
            held = self.sink.open(self.training_id)
        except Exception as exc:  # noqa: BLE001 - still unavailable: retried later
            self._failed(exc, now)
            return False
        self.opened = True
        log.info("pulse sink opened after failing", **self.log_context)
        if isinstance(held, int) and not isinstance(held, bool) and held > 0:
            log.warning(
                "pulse sink opened late on a log that already has events; "
                "readers may skip this run's early events as duplicates",
                **self.log_context,
                last_seq=held,
            )
        return True

    def _failed(self, exc: Exception, now: float) -> None:
        self.failures += 1
        self.failures_total += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.retry_at = now + retry_delay(self.failures)
        if sampled(self.failures):
            log.warning(
                "pulse sink failed; buffering and retrying",
                **self.log_context,
                error=self.last_error,
                failures=self.failures,
                buffered=len(self.buffer),
            )

    def _drop(self, event: Event, exc: Exception | None = None) -> None:
        # Writer side: the counters are shared with the training thread's
        # outbox, so they change under the route's lock.
        with self.qlock:
            self._count_drop(event, exc)

    def _count_drop(self, event: Event, exc: Exception | None) -> None:
        """Count one dropped event; the caller holds ``qlock``."""
        self.dropped += 1
        self.dropped_total += 1
        if sampled(self.dropped_total):
            log.warning(
                "pulse sink dropped an event",
                **self.log_context,
                kind=type(event).__name__,
                seq=event.seq,
                reason=(
                    f"the sink rejected it {POISON_ATTEMPTS} times: {type(exc).__name__}: {exc}"
                    if exc is not None
                    else f"the buffer of a slow or failing sink is full ({BUFFER_EVENTS} events)"
                )[:300],
                dropped_total=self.dropped_total,
            )

    def _hold(self, event: Event, always_fits: bool = False) -> None:
        held = hold_event(self.buffer, event, BUFFER_EVENTS, always_fits=always_fits)
        if held.coalesced:
            self.coalesced += 1
        if held.head_changed:
            self.head_attempts = 0
        for dropped in held.dropped:
            self._drop(dropped)
