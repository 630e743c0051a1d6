"""The run's writer: building events, handing them to sinks, the writer thread.

This module owns :class:`_RunWriter`, the private half of
:class:`~pulse_core.emitter.TrainingRun`: turning the hot path's raw values
into events (only when some sink is due), numbering them, handing them to
each sink's outbox (:mod:`pulse_core.emitter._route`) in seq order, the
flood limit's trailing edge, heartbeats, and the one writer thread that
does all sink I/O without holding the run's lock. Uses threading and time;
must never import :mod:`pulse_transports`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from pulse_core import events
from pulse_core._log import get_logger
from pulse_core.codec import bound_event
from pulse_core.emitter._hooks import _quietly
from pulse_core.emitter._metrics import _Bounds, _metric_fields
from pulse_core.emitter._route import _Route
from pulse_core.emitter._value import _as_int
from pulse_core.events import TERMINAL_STATUSES, Event
from pulse_core.policy import FLOOD_BURST, GIL_YIELD, background_tick

log = get_logger("pulse.emitter")

_INF: Final = float("inf")
#: Seconds the writer lets hand-overs gather after a wake-up before writing.
_BATCH_WAIT: Final = 0.005
#: The writer's longest stretch of work (s) before it lets the training thread
#: have the GIL: it works in slices and sleeps :data:`~pulse_core.policy.GIL_YIELD`
#: between them, long enough for the waiter to run.
_SLICE: Final = 0.0002
#: Outbox length at which a sink is not due for new progress/metrics: values
#: coalesce on the hot path until the writer catches up. A backlog of
#: thousands of events outlives the young gc generations, so the training
#: thread would pay for full collections of a bigger heap (7-30 ms each here).
_BACKLOG: Final = 256
_NOT_STARTED: Final = frozenset({"idle", "preparing"})


class _RunWriter:
    """The run's state and everything that builds, orders and writes its events.

    :class:`~pulse_core.emitter.TrainingRun` sets these fields in its
    initialiser; the public methods live there and in
    :class:`~pulse_core.emitter._lifecycle._RunLifecycle`.
    """

    training_id: str
    _clock: Callable[[], float]
    _wall: Callable[[], float]
    _lock: threading.RLock
    _stop: threading.Event
    _wake: threading.Event
    _io_lock: threading.Lock
    _thread: threading.Thread | None
    _finished: bool
    _writing: bool
    _flush_asked: int
    _flush_done: int
    _inert: bool
    _owner: int
    _held_note: tuple[str, str] | None
    _held_error: dict[str, Any] | None
    _held_count: int
    _flood_tokens: float
    _flood_last: float
    _flood_interval: float
    _closed: bool
    _closing: bool
    _seq: int
    _status: str
    _cancel_reason: str | None
    _signals: bool
    _strict: bool
    _heartbeat: float
    _close_timeout: float
    _p: tuple[Any, Any, Any, Any]
    _m: tuple[Any, Any, Any, Any, Mapping[str, Any]]
    _pdirty: bool
    _mdirty: bool
    _pgen: int
    _mgen: int
    _bounds: _Bounds
    _names_dropped: set[str]
    _latest_progress: events.Progress | None
    _latest_metrics: events.Metrics | None
    _next_at: float
    _routes: list[_Route]
    _slice_start: float = 0.0  # when the writer thread last took up work

    def tick(self) -> None:
        """Deliver due trailing values, heartbeats and retries (background work).

        Without a writer thread this also writes what is due, inline.
        """
        if self._inert or self._closed:
            return
        self._tick_locked()
        self._drain()

    def _tick_locked(self) -> None:
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            self._release_held(now)
            self._pump(now)
            if self._status not in TERMINAL_STATUSES:
                quiet = [r for r in self._routes if now - r.last_write >= self._heartbeat]
                if quiet:
                    for route in quiet:
                        self._send_latest(route, now)  # keep seq order on every sink
                    beat = events.Heartbeat(
                        training_id=self.training_id, seq=self._next_seq(), timestamp=self._wall()
                    )
                    for route in quiet:
                        route.send(beat, now)

    def _become_inert(self) -> None:
        """In a forked child: this copy of the parent's run does nothing, ever.

        Called by the fork hook in :mod:`pulse_core.emitter._hooks`. The locks are
        replaced (another thread of the parent may have held them at fork);
        the sinks are left alone -- closing them would close or unlock the
        parent's log.
        """
        self._inert = True
        self._next_at = _INF
        self._lock = threading.RLock()
        self._io_lock = threading.Lock()
        self._thread = None
        self._closed = True
        self._pdirty = self._mdirty = False
        self._held_note, self._held_error = None, None

    # -- the writer --------------------------------------------------------------

    def _await_writer(self, timeout: float) -> bool:
        """Wait until the writer has written everything handed over; False on timeout."""
        thread = self._thread
        if self._inert or thread is None or thread is threading.current_thread():
            return True  # inline: already written
        deadline = time.monotonic() + timeout
        self._wake.set()
        while thread.is_alive() and (self._writing or any(r.outbox for r in self._routes)):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def _flush_if_asked(self) -> None:
        """If flush() asked: write everything, then flush every open sink (not durably)."""
        asked = self._flush_asked
        if self._flush_done < asked:
            self._drain(force=True)
            with self._io_lock:
                for route in self._routes:
                    if route.opened and not route.buffer:
                        _quietly(functools.partial(route.sink.flush, False))
            self._flush_done = asked

    def _kick(self) -> None:
        """Events were handed over: wake the writer, or write inline without one."""
        if self._thread is not None:
            wake = self._wake
            if not wake.is_set():  # set() takes a lock and may wake a thread: once per batch
                wake.set()
        else:
            self._drain()

    def _drain(self, force: bool = False) -> None:
        """Write every route's outbox, retry failing sinks, report drops.

        Runs on the writer thread (or inline without one), never under the
        run's lock while doing I/O.
        """
        if self._inert:
            return
        pace = self._pace if threading.current_thread() is self._thread else None
        with self._io_lock:
            for _ in range(4):  # a drop report adds one event; then it is done
                now = self._clock()
                for route in self._routes:
                    route.deliver(now, force, pace)
                with self._lock:
                    reported = False
                    for route in self._routes:
                        if route.dropped and route.healthy:
                            self._report_dropped(route, now)
                            reported = True
                if not reported:
                    return

    def _pace(self) -> None:
        """Writer thread, between two events: after a slice of work, yield the GIL."""
        if time.perf_counter() - self._slice_start >= _SLICE:
            time.sleep(GIL_YIELD)  # blocks: a training thread waiting for the GIL runs now
            self._slice_start = time.perf_counter()

    def _finish(self) -> None:
        """Write what is left, then flush every sink durably and close it (once)."""
        with self._io_lock:
            if self._finished or self._inert:
                return
            self._finished = True
        self._drain(force=True)
        with self._io_lock:
            for route in self._routes:
                if route.buffer or not route.opened:
                    log.warning(
                        "pulse sink still failing at close; events lost",
                        sink=route.name,
                        training_id=self.training_id,
                        lost=len(route.buffer) + route.dropped,
                    )
                if route.opened:
                    _quietly(functools.partial(route.sink.flush, True))
                    _quietly(route.sink.close)

    def _background(self) -> None:
        tick = background_tick([r.interval for r in self._routes], self._heartbeat)
        while not self._stop.is_set():
            if self._wake.wait(tick) and not self._stop.is_set():
                # Let a burst of hand-overs gather: one wake-up per batch, not
                # per event, keeps GIL hand-offs with the training thread rare.
                time.sleep(_BATCH_WAIT)
            self._wake.clear()
            if self._inert:
                return
            self._slice_start = time.perf_counter()
            self._writing = True
            try:
                if not self._stop.is_set():
                    self._tick_locked()
                self._drain()
                self._flush_if_asked()
            except Exception:
                log.exception("pulse writer step failed", training_id=self.training_id)
            finally:
                self._writing = False
        try:
            self._finish()
        except Exception:
            log.exception("pulse writer failed at close", training_id=self.training_id)

    # -- internals --------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _pump_soon(self) -> None:
        # Called from the hot path when a sink may be due. Never waits: if the
        # background thread holds the lock it delivers the values itself.
        if self._lock.acquire(blocking=False):
            try:
                if self._closed or self._inert:
                    return
                self._pump(self._clock())
            finally:
                self._lock.release()
            self._kick()

    def _pump(
        self,
        now: float,
        force: bool = False,
        only_boundaries: bool = False,
        auto_start: bool = True,
    ) -> None:
        """Build events from dirty values and send the latest to every due sink.

        Events are built only if some sink is due, so values coalesced away
        cost no event, no seq and no encoding.
        """
        if self._status in TERMINAL_STATUSES:
            self._pdirty = self._mdirty = False
            self._next_at = _INF  # nothing more goes out: keep the hot path cheap
            return
        if auto_start and self._status in _NOT_STARTED and (self._pdirty or self._mdirty):
            self._status_locked("running", "training started", now)
        routes = self._routes
        due = [
            r
            for r in routes
            if (force or now >= r.next_at) and (r.boundaries or not only_boundaries)
        ]
        if not force:
            backlogged = [r for r in due if len(r.outbox) >= _BACKLOG]
            for route in backlogged:
                # Its writer is behind: coalesce values here (no event, no seq)
                # and look again a little later.
                route.next_at = now + _BATCH_WAIT
                due.remove(route)
        if due:
            self._build()
            for route in due:
                if self._send_latest(route, now):
                    route.next_at = now + route.interval
        next_at = min((r.next_at for r in routes), default=_INF)
        if self._status in _NOT_STARTED:
            next_at = -_INF  # the first value moves the run to running, sinks or not
        self._next_at = next_at

    def _build(self) -> None:
        # Clear the dirty flag before reading the values: a hot-path write
        # racing with us sets it again and is sent on a later pump.
        if self._pdirty:
            self._pdirty = False
            epoch, total_epochs, step, total_steps = self._p
            self._pgen += 1
            self._latest_progress = events.Progress(
                training_id=self.training_id,
                seq=self._next_seq(),
                timestamp=self._wall(),
                epoch=_as_int(epoch),
                total_epochs=_as_int(total_epochs),
                step=_as_int(step),
                total_steps=_as_int(total_steps),
            )
        if self._mdirty:
            self._mdirty = False
            self._mgen += 1
            self._latest_metrics = events.Metrics(
                training_id=self.training_id,
                seq=self._next_seq(),
                timestamp=self._wall(),
                **_metric_fields(self._m, self._bounds),
                names_dropped=len(self._names_dropped) or None,
            )

    def _send_latest(self, route: _Route, now: float) -> bool:
        """Send *route* the built progress/metrics it has not had, in seq order.

        Every event a route gets has a higher seq than the ones before it:
        before a heartbeat, a ``dropped`` event or a status goes to a route,
        this hands it the values built earlier for other, faster routes.
        """
        p = self._latest_progress if route.sent_progress < self._pgen else None
        m = self._latest_metrics if route.sent_metrics < self._mgen else None
        route.sent_progress, route.sent_metrics = self._pgen, self._mgen
        if p is None and m is None:
            return False
        if p is not None and m is not None and m.seq < p.seq:
            route.send(m, now)
            route.send(p, now)
        else:
            if p is not None:
                route.send(p, now)
            if m is not None:
                route.send(m, now)
        return True

    def _report_dropped(self, route: _Route, now: float) -> None:
        count = route.take_dropped()
        if count:
            self._send_latest(route, now)
            route.send(self._dropped_event(count), now, always_fits=True)

    def _epoch_boundary(self) -> None:
        # The epoch is about to change: sinks that keep every epoch boundary
        # (the durable log) get the last values of the finished epoch now --
        # also when a faster sink already built them (the dirty flags are
        # clear then, but the boundary sink has not had that build).
        if self._inert:
            return
        dirty = self._pdirty or self._mdirty
        pgen, mgen = self._pgen, self._mgen
        if any(
            r.boundaries and (dirty or r.sent_progress < pgen or r.sent_metrics < mgen)
            for r in self._routes
        ):
            with self._lock:
                if self._closed:
                    return
                self._pump(self._clock(), force=True, only_boundaries=True)
            self._kick()

    def _error_event(self, fields: Mapping[str, Any], count: int) -> events.ErrorReported:
        details = fields["details"]
        if count > 1:
            details = {**(details or {}), "count": count}
        return bound_event(  # type: ignore[return-value] # fits one line, valid text
            events.ErrorReported(
                training_id=self.training_id,
                seq=self._next_seq(),
                timestamp=self._wall(),
                error_code=fields["error_code"],
                message=fields["message"],
                is_retryable=fields["is_retryable"],
                details=details,
                epoch=fields["epoch"],
                step=fields["step"],
            )
        )

    def _release_held_error(self, now: float) -> None:
        """Send the non-fatal error held back (with its count) now; under the lock."""
        held, count = self._held_error, self._held_count
        if held is None:
            return
        self._held_error, self._held_count = None, 0
        self._pump(now, force=True, auto_start=False)
        self._broadcast(self._error_event(held, count), now)

    def _flood_allows(self, now: float) -> bool:
        """Token bucket of notes and non-fatal errors: a burst, then one per interval."""
        interval = self._flood_interval
        if interval <= 0:
            return True
        tokens = min(float(FLOOD_BURST), self._flood_tokens + (now - self._flood_last) / interval)
        self._flood_last = now
        if tokens >= 1.0:
            self._flood_tokens = tokens - 1.0
            return True
        self._flood_tokens = tokens
        return False

    def _release_held(self, now: float) -> None:
        """Trailing edge of the flood limit: send a held note or error once due."""
        if self._held_note is None and self._held_error is None:
            return
        if self._status in TERMINAL_STATUSES:
            self._held_note, self._held_error, self._held_count = None, None, 0
            return
        if not self._flood_allows(now):
            return
        self._release_held_error(now)
        self._send_held_note(now)

    def _send_held_note(self, now: float) -> None:
        """Send the latest note held back by the flood limit (if its state still holds)."""
        note, self._held_note = self._held_note, None
        if note is not None and note[0] == self._status:
            self._pump(now, force=True, auto_start=False)
            self._status_locked(note[0], note[1], now)

    def _status_locked(self, state: str, message: str, now: float) -> None:
        if state in TERMINAL_STATUSES:
            # Drops not yet reported go before the end (readers ignore
            # events after a terminal status), buffered if the sink still fails.
            for route in self._routes:
                self._report_dropped(route, now)
        event = events.StatusChanged(
            training_id=self.training_id,
            seq=self._next_seq(),
            timestamp=self._wall(),
            status=state,
            message=message,
        )
        self._status = state
        if state in TERMINAL_STATUSES:
            self._next_at = _INF
        elif state in _NOT_STARTED:
            self._next_at = -_INF
        for route in self._routes:
            route.send(event, now, always_fits=state in TERMINAL_STATUSES)

    def _broadcast(self, event: Event, now: float) -> None:
        for route in self._routes:
            self._send_latest(route, now)  # values built before *event* go first
            route.send(event, now)

    def _dropped_event(self, count: int) -> Event:
        return events.Dropped(
            training_id=self.training_id,
            seq=self._next_seq(),
            timestamp=self._wall(),
            count=count,
            reason="a sink failed and could not keep these events",
        )
