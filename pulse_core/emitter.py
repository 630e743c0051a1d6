"""The emitter: what training code calls to report a run.

This module owns :class:`TrainingRun`. Its promises:

* **Cheap**: ``progress()`` and ``metrics()`` store raw values and compare a
  clock reading with a deadline; events are built only when something is
  forwarded (a few tenths of a microsecond for a coalesced call).
* **Never harms training**: no sink failure raises into the caller. Failing
  sinks are buffered within a bounded budget, retried with backoff, counted,
  logged through structlog, and what had to be dropped is reported as a
  ``dropped`` event once the sink recovers.
* **Ordered**: status changes and errors are never dropped or delayed by the
  rate limiter, and pending progress/metrics are flushed before them.
* **Honest**: a run never ends ``done`` because of an exception; an
  exception leaving ``with``, an uncaught exception (excepthook), an opted-in
  SIGTERM/SIGINT and an interpreter exit with the run open (atexit) each end
  it as error or cancelled.

The default sinks come from configuration through the ``pulse.config`` entry
point (installed by ``pulse_transports``), so this module never imports the
transports package.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from types import FrameType, TracebackType
from typing import Any, Final

import structlog

from pulse_core.errors import IllegalTransition, PulseError
from pulse_core.events import (
    STATUSES,
    TERMINAL_STATUSES,
    Dropped,
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
    is_error_code,
    validate_training_id,
)
from pulse_core.lifecycle import next_status
from pulse_core.policy import BUFFER_EVENTS, LOG_EVERY, background_tick, retry_delay
from pulse_core.ports import Sink

log = structlog.get_logger("pulse.emitter")

#: Environment variables a run reads when the argument is not given (set by
#: ``pulse run`` and the Flow Manager for child processes).
ENV_TRAINING_ID: Final = "PULSE_TRAINING_ID"
ENV_FLOW_ID: Final = "PULSE_FLOW_ID"
ENV_FLOW_RUN_ID: Final = "PULSE_FLOW_RUN_ID"
ENV_FLOW_STEP_ID: Final = "PULSE_FLOW_STEP_ID"
ENV_ATTEMPT: Final = "PULSE_ATTEMPT"
ENV_TOTAL_EPOCHS: Final = "PULSE_TOTAL_EPOCHS"

_METRIC_NAMES_MAX: Final = 64


def new_training_id(wall: float | None = None) -> str:
    """Make a time-ordered unique training id, e.g. ``20261129-013724-123-9f2c41d07b``."""
    moment = datetime.fromtimestamp(time.time() if wall is None else wall, UTC)
    return moment.strftime("%Y%m%d-%H%M%S-") + f"{moment.microsecond // 1000:03d}-" + (
        secrets.token_hex(5)
    )


def classify_exception(exc: BaseException) -> tuple[str, bool]:
    """Map an exception to ``(error_code, is_retryable)``.

    An exception may name its own code with attributes ``pulse_error_code``
    and ``pulse_retryable``. Otherwise: file not found -> DATASET_NOT_FOUND;
    CUDA/torch/TF out-of-memory -> CUDA_OOM (retryable: memory may free up);
    MemoryError -> OUT_OF_MEMORY (retryable); anything else ->
    UNHANDLED_EXCEPTION.
    """
    own = getattr(exc, "pulse_error_code", None)
    if isinstance(own, str) and is_error_code(own):
        return own, bool(getattr(exc, "pulse_retryable", False))
    name = type(exc).__name__
    text = str(exc)
    if isinstance(exc, FileNotFoundError):
        return "DATASET_NOT_FOUND", False
    if name in ("OutOfMemoryError", "ResourceExhaustedError") or (
        isinstance(exc, RuntimeError) and "out of memory" in text.lower()
    ):
        return "CUDA_OOM", True
    if isinstance(exc, MemoryError):
        return "OUT_OF_MEMORY", True
    return "UNHANDLED_EXCEPTION", False


def _as_int(value: Any) -> int | None:
    if value is None or value.__class__ is int:
        return value  # type: ignore[no-any-return]
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == value else None


def _as_float(value: Any) -> float | None:
    if value is None or value.__class__ is float:
        return value  # type: ignore[no-any-return]
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return None


class _Route:
    """One sink as the run sees it: its throttle and its failure buffer."""

    __slots__ = (
        "boundaries",
        "buffer",
        "coalesced",
        "dropped",
        "failures",
        "interval",
        "last_write",
        "name",
        "next_at",
        "retry_at",
        "sent_metrics",
        "sent_progress",
        "sink",
    )

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.name = str(getattr(sink, "name", type(sink).__name__))
        self.interval = float(getattr(sink, "interval", 0.1))
        self.boundaries = bool(getattr(sink, "boundaries", False))
        self.next_at = float("-inf")
        self.sent_progress = 0  # generation of the last progress sent
        self.sent_metrics = 0
        self.buffer: deque[Event] = deque()
        self.failures = 0
        self.retry_at = 0.0
        self.dropped = 0
        self.coalesced = 0
        self.last_write = float("-inf")

    # The run holds its lock around every call below.

    def send(self, event: Event, now: float) -> bool:
        """Deliver or buffer *event*; True if the sink took it now."""
        self.last_write = now
        if self.buffer:
            self._hold(event)
            return False
        try:
            self.sink.write(event)
        except Exception as exc:  # noqa: BLE001 - any sink failure is contained
            self._failed(exc, now)
            self._hold(event)
            return False
        return True

    def retry(self, now: float, dropped_event: Callable[[int], Event]) -> None:
        """Try to drain the buffer; report drops once it is empty."""
        if not self.buffer or now < self.retry_at:
            return
        while self.buffer:
            event = self.buffer[0]
            try:
                self.sink.write(event)
            except Exception as exc:  # noqa: BLE001 - contained, retried later
                self._failed(exc, now)
                return
            self.buffer.popleft()
        log.info("pulse sink recovered", sink=self.name, failures=self.failures,
                 dropped=self.dropped)
        self.failures = 0
        if self.dropped:
            count, self.dropped = self.dropped, 0
            self.send(dropped_event(count), now)

    def _failed(self, exc: Exception, now: float) -> None:
        self.failures += 1
        self.retry_at = now + retry_delay(self.failures)
        if self.failures == 1 or self.failures % LOG_EVERY == 0:
            log.warning(
                "pulse sink failed; buffering and retrying",
                sink=self.name,
                error=f"{type(exc).__name__}: {exc}",
                failures=self.failures,
                buffered=len(self.buffer),
            )

    def _hold(self, event: Event) -> None:
        buffer = self.buffer
        if isinstance(event, Progress | Metrics | Heartbeat):
            # Coalesce: a newer value supersedes the same kind held since the
            # last status/error/meta event (order of those is kept).
            for index in range(len(buffer) - 1, -1, -1):
                held = buffer[index]
                if held.__class__ is event.__class__:
                    del buffer[index]
                    self.coalesced += 1
                    break
                if not isinstance(held, Progress | Metrics | Heartbeat):
                    break
        if len(buffer) >= BUFFER_EVENTS:
            victim = next(
                (i for i, e in enumerate(buffer) if isinstance(e, Progress | Metrics | Heartbeat)),
                0,
            )
            del buffer[victim]
            self.dropped += 1
        buffer.append(event)


class TrainingRun:
    """One training run, reported to the configured sinks.

    Use it as a context manager (``with TrainingRun(...) as run:``) or call
    :meth:`close` yourself. Creating the run opens the sinks and emits the run
    metadata and ``preparing``; the first progress or metrics call moves a
    preparing run to ``running``; leaving ``with`` normally ends it ``done``.

    Args:
        training_id: the run's id; default ``$PULSE_TRAINING_ID`` or a new
            time-ordered id.
        name: a short human name for UIs.
        flow_id, flow_run_id, flow_step_id, attempt: the flow link (defaults
            from ``PULSE_FLOW_ID``, ``PULSE_FLOW_RUN_ID``, ``PULSE_FLOW_STEP_ID``,
            ``PULSE_ATTEMPT``).
        total_epochs, total_steps: known totals, if any.
        sinks: where events go; default from configuration.
        strict: raise :class:`IllegalTransition` on illegal lifecycle requests
            (default: log a warning and emit nothing).
        heartbeat_interval: seconds between heartbeats while quiet.
        handle_signals: end the run ``cancelled`` on SIGTERM/SIGINT (main
            thread only); SIGTERM then raises ``SystemExit(143)``.
        labels: free-form string labels shown with the run.
        world_size: processes in a distributed job, shown in the metadata.
        clock, wall: monotonic and wall clocks (tests pass fakes).
        background: run the background thread that delivers trailing values
            and heartbeats (tests may drive :meth:`tick` instead).
        env: the environment to read ``PULSE_*`` variables from.
    """

    def __init__(
        self,
        training_id: str | None = None,
        *,
        name: str | None = None,
        flow_id: str | None = None,
        flow_run_id: str | None = None,
        flow_step_id: str | None = None,
        attempt: int | None = None,
        total_epochs: int | None = None,
        total_steps: int | None = None,
        sinks: Sequence[Sink] | None = None,
        strict: bool | None = None,
        heartbeat_interval: float | None = None,
        handle_signals: bool = False,
        labels: Mapping[str, str] | None = None,
        world_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        background: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        environ = os.environ if env is None else env
        self._clock = clock
        self._wall = wall
        tid = training_id or environ.get(ENV_TRAINING_ID) or new_training_id(wall())
        self.training_id: str = validate_training_id(tid)
        self._strict = bool(strict) if strict is not None else _env_flag(environ, "PULSE_STRICT")
        if heartbeat_interval is None:
            heartbeat_interval = float(environ.get("PULSE_HEARTBEAT_INTERVAL") or 5.0)
        self._heartbeat = heartbeat_interval
        self._lock = threading.RLock()
        self._seq = 0
        self._status = "idle"
        self._closed = False
        self._cancel_reason: str | None = None
        # Raw values written by the hot path; events are built from them.
        self._epoch: int | None = None
        self._total_epochs = total_epochs
        if total_epochs is None and environ.get(ENV_TOTAL_EPOCHS):
            self._total_epochs = _as_int(environ.get(ENV_TOTAL_EPOCHS))
        self._step: int | None = None
        self._total_steps = total_steps
        self._pdirty = False
        self._loss: Any = None
        self._tpe: Any = None
        self._sps: Any = None
        self._tps: Any = None
        self._extra: dict[str, Any] = {}
        self._mdirty = False
        self._pgen = 0
        self._mgen = 0
        self._latest_progress: Progress | None = None
        self._latest_metrics: Metrics | None = None
        self._next_at = float("-inf")

        if sinks is None:
            sinks = _default_sinks()
        opened: list[Sink] = []
        try:
            for sink in sinks:
                held = sink.open(self.training_id)
                opened.append(sink)
                if isinstance(held, int) and held > self._seq:
                    self._seq = held  # continue a log that already has events
        except BaseException:
            for sink in opened:
                _quietly(sink.close)
            raise
        self._routes = [_Route(sink) for sink in sinks]
        attempt_env = environ.get(ENV_ATTEMPT)
        meta = RunMeta(
            training_id=self.training_id,
            seq=self._next_seq(),
            timestamp=wall(),
            name=name,
            flow_id=flow_id or environ.get(ENV_FLOW_ID) or None,
            flow_run_id=flow_run_id or environ.get(ENV_FLOW_RUN_ID) or None,
            flow_step_id=flow_step_id or environ.get(ENV_FLOW_STEP_ID) or None,
            attempt=attempt if attempt is not None else _as_int(attempt_env),
            total_epochs=self._total_epochs,
            total_steps=total_steps,
            pid=os.getpid(),
            host=socket.gethostname(),
            world_size=world_size,
            labels=dict(labels or {}),
        )
        self.meta = meta
        now = clock()
        with self._lock:
            for route in self._routes:
                route.send(meta, now)
        _register(self)
        if handle_signals:
            self._install_signal_handlers()
        self.status("preparing", "starting")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._background, name=f"pulse-run-{self.training_id}", daemon=True
            )
            self._thread.start()

    # -- the hot path ---------------------------------------------------------

    def progress(
        self,
        epoch: int | None = None,
        total_epochs: int | None = None,
        step: int | None = None,
        total_steps: int | None = None,
    ) -> None:
        """Report where training is. Coalesced: the latest values win.

        ``epoch`` is the 1-based epoch in progress, ``step`` the steps done in
        it (``total_steps`` per epoch). Cheap enough to call every step.
        """
        if epoch is not None:
            if epoch != self._epoch and self._epoch is not None:
                self._epoch_boundary()
            self._epoch = epoch
        if total_epochs is not None:
            self._total_epochs = total_epochs
        if step is not None:
            self._step = step
        if total_steps is not None:
            self._total_steps = total_steps
        self._pdirty = True
        if self._clock() >= self._next_at:
            self._pump_soon()

    def metrics(
        self,
        loss: float | None = None,
        time_per_epoch: float | None = None,
        samples_per_second: float | None = None,
        tokens_per_second: float | None = None,
        **extra: float,
    ) -> None:
        """Report measured values; all optional, the latest values win.

        Extra keyword arguments are named metrics (e.g. ``lr=3e-4``). Values
        may be any number-like object (numpy, torch scalars); they are
        converted only when forwarded.
        """
        if loss is not None:
            self._loss = loss
        if time_per_epoch is not None:
            self._tpe = time_per_epoch
        if samples_per_second is not None:
            self._sps = samples_per_second
        if tokens_per_second is not None:
            self._tps = tokens_per_second
        if extra:
            self._extra.update(extra)
        self._mdirty = True
        if self._clock() >= self._next_at:
            self._pump_soon()

    # -- status, errors ---------------------------------------------------------

    def status(self, state: str, message: str = "") -> None:
        """Move the run to lifecycle *state* (or restate it with a new message).

        Pending progress and metrics are delivered first. An illegal request
        (e.g. ``running`` after ``done``) raises :class:`IllegalTransition` in
        strict mode; otherwise it is logged as a warning and nothing is sent.
        """
        with self._lock:
            if not self._transition_ok(state):
                return
            now = self._clock()
            self._pump(now, force=True, auto_start=False)
            event = StatusChanged(
                training_id=self.training_id,
                seq=self._next_seq(),
                timestamp=self._wall(),
                status=state,
                message=str(message),
            )
            self._status = state
            self._broadcast(event, now)

    def error(
        self,
        error_code: str,
        message: str,
        is_retryable: bool = False,
        details: Mapping[str, Any] | None = None,
        *,
        fatal: bool = True,
    ) -> None:
        """Report an error; by default it also ends the run with status ``error``.

        Args:
            error_code: an UPPER_SNAKE code, e.g. ``DATASET_NOT_FOUND``
                (anything else is replaced by ``UNHANDLED_EXCEPTION``, with
                the given code kept in details).
            message: a short sentence for people.
            is_retryable: whether a UI should offer "try again".
            details: JSON-ready context (trace id, paths, ...).
            fatal: False to record the error and keep the run going.
        """
        with self._lock:
            if self._status in TERMINAL_STATUSES:
                self._illegal(self._status, "error")
                return
            now = self._clock()
            self._flush_pending(now)
            info = dict(details) if details else None
            if not is_error_code(error_code):
                info = {**(info or {}), "given_code": str(error_code)[:200]}
                error_code = "UNHANDLED_EXCEPTION"
            event = ErrorReported(
                training_id=self.training_id,
                seq=self._next_seq(),
                timestamp=self._wall(),
                error_code=error_code,
                message=str(message),
                is_retryable=bool(is_retryable),
                details=info,
                epoch=_as_int(self._epoch),
                step=_as_int(self._step),
            )
            self._broadcast(event, now)
            if fatal:
                self.status("error", str(message))

    def cancel(self, message: str = "") -> None:
        """End the run as ``cancelled`` (stopped by the user)."""
        self.status("cancelled", message or "cancelled")

    def heartbeat(self) -> None:
        """Send a heartbeat now to every sink (normally the background thread does)."""
        with self._lock:
            if self._status in TERMINAL_STATUSES or self._closed:
                return
            self._broadcast(
                Heartbeat(training_id=self.training_id, seq=self._next_seq(), timestamp=self._wall()),
                self._clock(),
            )

    # -- state ------------------------------------------------------------------

    @property
    def current_status(self) -> str:
        """The run's lifecycle state as the emitter last reported it."""
        return self._status

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    @property
    def degraded(self) -> bool:
        """True while any sink is failing or has dropped events."""
        return any(r.buffer or r.failures or r.dropped for r in self._routes)

    def sink_stats(self) -> list[dict[str, Any]]:
        """Per sink: name, failures, buffered, dropped and coalesced counts."""
        with self._lock:
            return [
                {
                    "name": r.name,
                    "failures": r.failures,
                    "buffered": len(r.buffer),
                    "dropped": r.dropped,
                    "coalesced": r.coalesced,
                }
                for r in self._routes
            ]

    # -- ending -----------------------------------------------------------------

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.fail_with(exc)
            self.close()

    def fail_with(self, exc: BaseException) -> None:
        """End the run because of *exc* (error or cancelled; never done)."""
        if self._status in TERMINAL_STATUSES:
            return
        if self._cancel_reason is not None:
            self.cancel(self._cancel_reason)
            return
        if isinstance(exc, KeyboardInterrupt):
            self.cancel("interrupted (KeyboardInterrupt)")
            return
        if isinstance(exc, SystemExit):
            code = exc.code
            if code in (None, 0):
                self.cancel("the process exited before the run finished")
            else:
                self.error(
                    "PROCESS_EXITED_WITHOUT_RESULT",
                    f"the process exited with status {code!r} before the run finished",
                    details={"exit_code": code if isinstance(code, int) else str(code)},
                )
            return
        error_code, retryable = classify_exception(exc)
        trace_id = secrets.token_hex(8)
        lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
        text = "".join(lines)
        self.error(
            error_code,
            f"{type(exc).__name__}: {exc}"[:500],
            is_retryable=retryable,
            details={
                "exception_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "trace_id": trace_id,
                "traceback": text[-4000:],
            },
        )

    def close(self) -> None:
        """Finish the run and release its sinks; idempotent.

        A run still preparing or running when closed normally ends ``done``
        if it was running or cooling down, and ``cancelled`` if it never
        started running.
        """
        if self._closed:
            return
        if self._status not in TERMINAL_STATUSES:
            if self._status in ("running", "cooling_down"):
                self.status("done", "finished")
            else:
                self.cancel("the run was closed before it started")
        with self._lock:
            self._closed = True
            self._stop.set()
            now = self._clock()
            self._flush_pending(now)
            for route in self._routes:
                route.retry_at = 0.0
                route.retry(now, self._dropped_event)
                if route.buffer:
                    log.warning(
                        "pulse sink still failing at close; events lost",
                        sink=route.name,
                        lost=len(route.buffer) + route.dropped,
                    )
                _quietly(lambda r=route: r.sink.flush(True))
                _quietly(route.sink.close)
        _unregister(self)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)

    def tick(self) -> None:
        """Deliver due trailing values, heartbeats and retries (background work)."""
        with self._lock:
            if self._closed:
                return
            now = self._clock()
            self._pump(now)
            if self._status not in TERMINAL_STATUSES:
                quiet = [r for r in self._routes if now - r.last_write >= self._heartbeat]
                if quiet:
                    beat = Heartbeat(
                        training_id=self.training_id, seq=self._next_seq(), timestamp=self._wall()
                    )
                    for route in quiet:
                        route.send(beat, now)
            for route in self._routes:
                if route.buffer:
                    route.retry(now, self._dropped_event)

    # -- internals --------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _transition_ok(self, state: str) -> bool:
        if self._closed:
            self._illegal(self._status, state, "the run is closed")
            return False
        if state not in STATUSES or next_status(self._status, state) is None:
            self._illegal(self._status, state)
            return False
        return True

    def _illegal(self, source: str, target: str, why: str = "") -> None:
        if self._strict:
            raise IllegalTransition(source, target, self.training_id)
        log.warning(
            "pulse: illegal lifecycle request ignored",
            training_id=self.training_id,
            source=source,
            target=target,
            reason=why or "not allowed by the lifecycle",
        )

    def _pump_soon(self) -> None:
        # Called from the hot path when a sink may be due. Never waits: if the
        # background thread holds the lock it will deliver the values itself.
        if self._lock.acquire(blocking=False):
            try:
                if not self._closed:
                    self._pump(self._clock())
            finally:
                self._lock.release()

    def _pump(
        self,
        now: float,
        force: bool = False,
        only_boundaries: bool = False,
        auto_start: bool = True,
    ) -> None:
        """Build events from dirty values; send the latest to every due sink."""
        if self._status in TERMINAL_STATUSES:
            self._pdirty = self._mdirty = False
            self._next_at = float("inf")  # nothing more goes out: keep the hot path cheap
            return
        dirty = self._pdirty or self._mdirty
        if dirty and auto_start and self._status in ("idle", "preparing"):
            self._status_locked("running", "training started", now)
        self._build()
        latest_p, latest_m = self._latest_progress, self._latest_metrics
        pgen, mgen = self._pgen, self._mgen
        next_at = float("inf")
        for route in self._routes:
            if only_boundaries and not route.boundaries:
                next_at = min(next_at, route.next_at)
                continue
            stale = route.sent_progress < pgen or route.sent_metrics < mgen
            if stale and (force or now >= route.next_at):
                if route.sent_progress < pgen and latest_p is not None:
                    route.send(latest_p, now)
                if route.sent_metrics < mgen and latest_m is not None:
                    route.send(latest_m, now)
                route.sent_progress, route.sent_metrics = pgen, mgen
                route.next_at = now + route.interval
            next_at = min(next_at, route.next_at)
        self._next_at = next_at

    def _build(self) -> None:
        # Clear the dirty flag before reading the values: a hot-path write
        # racing with us sets it again and is sent on the next pump.
        if self._pdirty:
            self._pdirty = False
            self._pgen += 1
            self._latest_progress = Progress(
                training_id=self.training_id,
                seq=self._next_seq(),
                timestamp=self._wall(),
                epoch=_as_int(self._epoch),
                total_epochs=_as_int(self._total_epochs),
                step=_as_int(self._step),
                total_steps=_as_int(self._total_steps),
            )
        if self._mdirty:
            self._mdirty = False
            self._mgen += 1
            extra: dict[str, float] = {}
            for key, value in list(self._extra.items())[:_METRIC_NAMES_MAX]:
                number = _as_float(value)
                if number is not None:
                    extra[str(key)] = number
            self._latest_metrics = Metrics(
                training_id=self.training_id,
                seq=self._next_seq(),
                timestamp=self._wall(),
                loss=_as_float(self._loss),
                time_per_epoch=_as_float(self._tpe),
                samples_per_second=_as_float(self._sps),
                tokens_per_second=_as_float(self._tps),
                extra=extra,
            )

    def _flush_pending(self, now: float) -> None:
        self._pump(now, force=True)

    def _epoch_boundary(self) -> None:
        # The epoch is about to change: sinks that keep every epoch boundary
        # (the durable log) get the last values of the finished epoch now.
        if any(r.boundaries for r in self._routes):
            with self._lock:
                if not self._closed:
                    self._pump(self._clock(), force=True, only_boundaries=True)

    def _status_locked(self, state: str, message: str, now: float) -> None:
        event = StatusChanged(
            training_id=self.training_id,
            seq=self._next_seq(),
            timestamp=self._wall(),
            status=state,
            message=message,
        )
        self._status = state
        self._broadcast(event, now)

    def _broadcast(self, event: Event, now: float) -> None:
        for route in self._routes:
            route.send(event, now)

    def _dropped_event(self, count: int) -> Event:
        return Dropped(
            training_id=self.training_id,
            seq=self._next_seq(),
            timestamp=self._wall(),
            count=count,
            reason="a sink failed and its buffer was full",
        )

    def _background(self) -> None:
        tick = background_tick([r.interval for r in self._routes], self._heartbeat)
        while not self._stop.wait(tick):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the reporter thread must never die
                log.exception("pulse background tick failed", training_id=self.training_id)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("pulse: handle_signals ignored outside the main thread")
            return

        def on_signal(signum: int, frame: FrameType | None) -> None:
            name = signal.Signals(signum).name
            self._cancel_reason = f"cancelled by {name}"
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)


# -- process-wide safety nets ------------------------------------------------------

_open_runs: set[TrainingRun] = set()
_hooks_installed = False
_previous_excepthook = sys.excepthook


def _register(run: TrainingRun) -> None:
    global _hooks_installed, _previous_excepthook  # noqa: PLW0603 - one process-wide hook
    _open_runs.add(run)
    if not _hooks_installed:
        _hooks_installed = True
        _previous_excepthook = sys.excepthook
        sys.excepthook = _excepthook
        atexit.register(_at_exit)


def _unregister(run: TrainingRun) -> None:
    _open_runs.discard(run)


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    for run in list(_open_runs):
        _quietly(lambda r=run: r.fail_with(exc))
        _quietly(run.close)
    _previous_excepthook(exc_type, exc, tb)


def _at_exit() -> None:
    for run in list(_open_runs):
        if run._cancel_reason is not None:
            _quietly(lambda r=run: r.cancel(r._cancel_reason or "cancelled"))
        elif run.current_status not in TERMINAL_STATUSES:
            _quietly(
                lambda r=run: r.error(
                    "PROCESS_EXITED_WITHOUT_RESULT",
                    "the interpreter exited while the run was still open",
                )
            )
        _quietly(run.close)


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:  # noqa: BLE001 - cleanup must go on for the other sinks
        log.exception("pulse cleanup step failed")


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _default_sinks() -> list[Sink]:
    """Sinks from configuration, via the ``pulse.config`` entry point."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="pulse.config"):
        if ep.name == "default_sinks":
            factory: Callable[[], list[Sink]] = ep.load()
            return factory()
    raise PulseError(
        "no sinks given and no 'pulse.config' entry point installed; "
        "pass sinks=[...] or install pulse-v2 with its transports"
    )
