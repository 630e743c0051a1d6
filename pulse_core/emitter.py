"""The emitter: what training code calls to report a run.

This module owns :class:`TrainingRun`. Its promises:

* **Cheap**: ``progress()`` and ``metrics()`` store raw values and compare a
  clock reading with a deadline; events are built only when something is
  forwarded (a few tenths of a microsecond for a coalesced call).
* **Never harms training**: no sink failure raises into the caller. Failing
  sinks are buffered within a bounded budget, retried with backoff, counted,
  logged (one short line on stderr, :mod:`pulse_core._log`), and what
  had to be dropped is reported as a
  ``dropped`` event once the sink recovers.
* **Ordered**: status changes and errors are never dropped or delayed by the
  rate limiter, and pending progress/metrics are flushed before them.
* **Honest**: a run never ends ``done`` because of an exception; an
  exception leaving ``with``, an uncaught exception (excepthook), an opted-in
  SIGTERM/SIGINT and an interpreter exit with the run open (atexit) each end
  it as error or cancelled.

Threads: the training thread writes the raw values without a lock (each kind
as one tuple, so a reader never sees half an update) and sets a dirty flag.
Building events and numbering them happens under the run's lock, held only
for that (on the training thread when a sink is due and the lock is free --
it never waits -- or on the run's writer thread). Built events are handed
to each sink's bounded outbox (:mod:`pulse_core._route`) and the run's one
writer thread does ALL sink I/O -- file writes, fsyncs, compaction, the v1
snapshot, retries -- without holding the run's lock, so the training thread
never waits on a disk. ``status()`` and ``error()`` return once the event is
handed over; ``close()`` hands over the end, then waits for the writer at most
``close_timeout`` seconds (default 5, ``PULSE_CLOSE_TIMEOUT``) and gives up
with one warning rather than hang. The trade-off: a process that dies right
after ``status()`` (``os._exit``, SIGKILL) may lose that line; liveness still
tells the truth, since a dead writer stops its heartbeats and the run reads
``lost``. With ``background=False`` (tests) there is no writer thread and
every call writes inline, synchronously. Call the hot path from one thread
at a time.

Status floods stay bounded: restating the current state with a new note and
non-fatal errors share a token bucket -- a burst of ``FLOOD_BURST``, then one
per the slowest sink's interval (the latest held note wins and goes out when
a token is back); errors held back are counted and the one that goes out
carries ``details["count"]``, the errors it stands for. Lifecycle
transitions and fatal errors are never held back.

Fork: a child process forked with a run open gets an inert copy (every call
a no-op; it never writes to, closes or unlocks the parent's sinks); a thread
that opened a run and dies of an uncaught exception ends that run ``error``
(see :mod:`pulse_core._safety`).

The default sinks come from configuration through the ``pulse.config`` entry
point (installed by ``pulse_transports``), so this module never imports the
transports package.

This module is the emitter's public face; its private parts live beside it:
``_route`` (one sink's throttle and failure buffer), ``_safety`` (the
process-wide excepthook, atexit and signal nets, and the registry of open
runs behind :func:`open_runs`), ``_defaults`` (settings from the environment
and the ``pulse.config`` entry points) and ``_value`` (turning given values
into event fields).
"""

from __future__ import annotations

import functools
import os
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, SupportsFloat, SupportsInt

from pulse_core._defaults import (
    _default_sinks,
    _env_flag,
    _env_int,
    _positive,
    _run_defaults,
)
from pulse_core._log import get_logger
from pulse_core._route import _Route
from pulse_core._safety import (
    _quietly,
    _register,
    _unregister,
    _unwatch_signals,
    _watch_signals,
)
from pulse_core._safety import open_runs as open_runs  # noqa: PLC0414 - public, re-exported
from pulse_core._value import (
    _as_bool,
    _as_details,
    _as_float,
    _as_int,
    _as_labels,
    _as_opt_text,
    _as_text,
)
from pulse_core.codec import bound_event, bound_text
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
from pulse_core.policy import CLOSE_TIMEOUT, FLOOD_BURST, HEARTBEAT_INTERVAL, background_tick
from pulse_core.ports import Sink

log = get_logger("pulse.emitter")

#: Environment variables a run reads when the argument is not given (set by
#: ``pulse run`` and the Flow Manager for child processes).
ENV_TRAINING_ID: Final = "PULSE_TRAINING_ID"
ENV_FLOW_ID: Final = "PULSE_FLOW_ID"
ENV_FLOW_RUN_ID: Final = "PULSE_FLOW_RUN_ID"
ENV_FLOW_STEP_ID: Final = "PULSE_FLOW_STEP_ID"
ENV_ATTEMPT: Final = "PULSE_ATTEMPT"
ENV_TOTAL_EPOCHS: Final = "PULSE_TOTAL_EPOCHS"
ENV_HANDLE_SIGNALS: Final = "PULSE_HANDLE_SIGNALS"
ENV_STRICT: Final = "PULSE_STRICT"
ENV_HEARTBEAT_INTERVAL: Final = "PULSE_HEARTBEAT_INTERVAL"
ENV_CLOSE_TIMEOUT: Final = "PULSE_CLOSE_TIMEOUT"
#: Set to 1 by a supervisor that already wrote ``preparing`` and ``running``.
ENV_SUPERVISED: Final = "PULSE_SUPERVISED"
#: The run name a supervisor (pulse run, a Flow Manager) gave; it wins over the script's.
ENV_RUN_NAME: Final = "PULSE_RUN_NAME"

_METRIC_NAMES_MAX: Final = 64  # extra names; loss and the protocol's named metrics always kept
_DROPPED_NAMES_MAX: Final = 10_000  # distinct dropped names counted (bounded memory)
_PROGRESS_FIELDS: Final = ("epoch", "total_epochs", "step", "total_steps")
_INF: Final = float("inf")
#: Seconds the writer lets hand-overs gather after a wake-up before writing.
_BATCH_WAIT: Final = 0.005
_NOT_STARTED: Final = frozenset({"idle", "preparing"})

# -- training ids ------------------------------------------------------------------

_id_lock = threading.Lock()
_id_last: list[int] = [0, 0]  # [milliseconds, random part] of the last id made


def new_training_id(wall: float | None = None) -> str:
    """Make a time-ordered unique training id, e.g. ``20261129-013724-123-9f2c41d07b``.

    Ids made by one process sort in the order they were made (within one
    millisecond the random part counts up; so does a wall clock stepping
    back by less than a second); ids of different processes sort by their
    millisecond and are unique with overwhelming probability (39 random bits).
    """
    millis = int((time.time() if wall is None else wall) * 1000)
    with _id_lock:
        # The same millisecond (or a clock stepping back by less than a
        # second) counts up from the last id; anything else starts afresh.
        if 0 <= _id_last[0] - millis < 1000:
            millis = _id_last[0]
            rand = (_id_last[1] + 1) % (1 << 40)
        else:
            rand = secrets.randbits(39)  # room to count up within the millisecond
        _id_last[0], _id_last[1] = millis, rand
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return f"{moment:%Y%m%d-%H%M%S}-{millis % 1000:03d}-{rand:010x}"


# -- exceptions ------------------------------------------------------------------------


def classify_exception(exc: BaseException) -> tuple[str, bool]:
    """Map an exception to ``(error_code, is_retryable)``.

    An exception may name its own code with attributes ``pulse_error_code``
    and ``pulse_retryable``. Otherwise: file not found -> DATASET_NOT_FOUND;
    CUDA/torch/TF/JAX out-of-memory -> CUDA_OOM (retryable: memory may free
    up); MemoryError -> OUT_OF_MEMORY (retryable); anything else ->
    UNHANDLED_EXCEPTION.
    """
    own = getattr(exc, "pulse_error_code", None)
    if isinstance(own, str) and is_error_code(own):
        return own, bool(getattr(exc, "pulse_retryable", False))
    name = type(exc).__name__
    if isinstance(exc, FileNotFoundError) or name in ("DatasetNotFoundError", "DataFileNotFound"):
        return "DATASET_NOT_FOUND", False
    if name in ("OutOfMemoryError", "ResourceExhaustedError") or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    ):
        return "CUDA_OOM", True
    if isinstance(exc, MemoryError):
        return "OUT_OF_MEMORY", True
    return "UNHANDLED_EXCEPTION", False


# -- arguments: any object in, never an exception out (issue 14.4) ----------------


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Make a public method total: nothing escapes but strict mode's IllegalTransition.

    Arguments are coerced inside the methods; this is the net for what is
    left (a hostile object deep inside a value, a bug): the call is logged
    as one warning and returns. Costs nothing while nothing raises.
    """

    @functools.wraps(method)
    def call(self: TrainingRun, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except IllegalTransition:
            raise
        except Exception as exc:  # noqa: BLE001 - reporting never raises into training
            _swallowed(method.__name__, exc)

    return call


def _swallowed(where: str, exc: BaseException) -> None:
    log.warning(
        "pulse: a reporting call failed and was ignored",
        call=where,
        error=f"{type(exc).__name__}: {_as_text(exc)[:200]}",
    )


def _as_env(env: Any) -> Mapping[str, str]:
    if env is None:
        return os.environ
    try:
        if isinstance(env, Mapping):
            return {_as_text(k): _as_text(v) for k, v in list(env.items())}
    except Exception:  # noqa: BLE001, S110 - a hostile mapping: the real environment
        pass
    log.warning("pulse: ignoring env that is not a mapping", type=type(env).__name__)
    return os.environ


def _then_await_writer(
    method: Callable[[TrainingRun, BaseException], None],
) -> Callable[[TrainingRun, BaseException], None]:
    """Run *method*, then wait (bounded) until the writer wrote what it was handed."""

    @functools.wraps(method)
    def wrapper(self: TrainingRun, exc: BaseException) -> None:
        try:
            method(self, exc)
        finally:
            self._await_writer(self._close_timeout)

    return wrapper


# -- the run -------------------------------------------------------------------------


class TrainingRun:
    """One training run, reported to the configured sinks.

    Use it as a context manager (``with TrainingRun(...) as run:``) or call
    :meth:`close` yourself. Creating the run opens the sinks and emits the run
    metadata and ``preparing``; the first progress or metrics call moves a
    preparing run to ``running``; leaving ``with`` normally (or ``close()``)
    ends it ``done`` -- or ``cancelled`` if it never started running or a
    cancel was requested -- and leaving ``with`` by an exception ends it
    ``error`` (``cancelled`` for KeyboardInterrupt) and re-raises.

    Args:
        training_id: the run's id; default ``$PULSE_TRAINING_ID`` or a new
            time-ordered id.
        name: a short human name for UIs.
        flow_id, flow_run_id, flow_step_id, attempt: the flow link (defaults
            from ``PULSE_FLOW_ID``, ``PULSE_FLOW_RUN_ID``, ``PULSE_FLOW_STEP_ID``,
            ``PULSE_ATTEMPT``).
        total_epochs, total_steps: known totals, if any (``total_steps`` is
            per epoch).
        sinks: where events go; default from configuration.
        strict: raise :class:`IllegalTransition` on illegal lifecycle requests
            (default ``$PULSE_STRICT``, then configuration: log a warning and
            emit nothing).
        heartbeat_interval: seconds between heartbeats while quiet (default
            ``$PULSE_HEARTBEAT_INTERVAL``, then configuration, then 5).
        handle_signals: end the run ``cancelled`` on SIGTERM/SIGINT (main
            thread only); SIGTERM then raises ``SystemExit(143)`` and SIGINT
            ``KeyboardInterrupt``. Default ``$PULSE_HANDLE_SIGNALS``.
        labels: free-form string labels shown with the run.
        world_size: processes in a distributed job, shown in the metadata.
        clock, wall: monotonic and wall clocks (tests pass fakes).
        background: run the writer thread that does all sink I/O and
            delivers trailing values, heartbeats and retries; without it
            (tests) every call writes inline and :meth:`tick` does the rest.
        close_timeout: seconds :meth:`close` waits for the writer to write
            what is left (default ``$PULSE_CLOSE_TIMEOUT``, then
            configuration, then 5); then it warns once and returns.
        env: the environment to read ``PULSE_*`` variables from.

    Raises:
        RunLocked: another live writer holds this training_id's log.
        ConfigError: the configuration names an unknown transport or option.
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
        sinks: Iterable[Sink] | None = None,
        strict: bool | None = None,
        heartbeat_interval: float | None = None,
        handle_signals: bool | None = None,
        labels: Mapping[str, str] | None = None,
        world_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        background: bool = True,
        env: Mapping[str, str] | None = None,
        close_timeout: float | None = None,
    ) -> None:
        # Arguments, coerced (any object in; documented exceptions only).
        environ = _as_env(env)
        if not callable(clock):
            log.warning("pulse: clock is not callable; using time.monotonic")
            clock = time.monotonic
        if not callable(wall):
            log.warning("pulse: wall is not callable; using time.time")
            wall = time.time
        name = _as_opt_text(name)
        flow_id, flow_run_id = _as_opt_text(flow_id), _as_opt_text(flow_run_id)
        flow_step_id = _as_opt_text(flow_step_id)
        attempt, world_size = _as_int(attempt), _as_int(world_size)
        total_epochs, total_steps = _as_int(total_epochs), _as_int(total_steps)
        if strict is not None:
            strict = _as_bool(strict)
        if handle_signals is not None:
            handle_signals = _as_bool(handle_signals)
        if heartbeat_interval is not None:
            given = heartbeat_interval
            heartbeat_interval = _as_float(given)
            if heartbeat_interval is None:
                heartbeat_interval = float("nan")  # warned about and replaced below
        background = _as_bool(background, True)
        label_map = _as_labels(labels)
        if label_map is None:
            log.warning("pulse: labels must be a mapping; ignored", type=type(labels).__name__)
            label_map = {}
        if training_id is not None and training_id.__class__ is str and not training_id:
            training_id = None  # "" means "not given", as before
        if sinks is not None:
            try:
                sinks = list(sinks)
            except Exception:  # noqa: BLE001 - not iterable: the configured sinks
                log.warning("pulse: sinks is not iterable; using the configured sinks")
                sinks = None
        self._clock = clock
        self._wall = wall
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._wake = threading.Event()  # the writer has work
        self._io_lock = threading.Lock()  # one thread at a time does sink I/O
        self._thread: threading.Thread | None = None
        self._finished = False
        self._writing = False  # the writer is writing (for a bounded wait on it)
        self._inert = False  # a forked child's copy: every call a no-op
        self._owner = threading.get_ident()  # the thread that opened the run
        self._held_note: tuple[str, str] | None = None  # (state, message) held back
        self._held_error: dict[str, Any] | None = None  # a non-fatal error held back
        self._held_count = 0  # errors the held one stands for
        self._flood_tokens = float(FLOOD_BURST)  # notes/non-fatal errors that may go out now
        self._flood_last = -_INF  # when the tokens were last counted
        self._closed = False
        self._closing = False
        self._seq = 0
        self._status = "idle"
        self._cancel_reason: str | None = None
        self._signals = False
        tid = training_id
        if tid is None:
            tid = environ.get(ENV_TRAINING_ID) or new_training_id(wall())
        self.training_id: str = validate_training_id(tid)

        defaults: Mapping[str, Any] = {}
        if strict is None or heartbeat_interval is None:
            defaults = _run_defaults(environ)
        if strict is None:
            strict = bool(defaults.get("strict", _env_flag(environ, ENV_STRICT)))
        self._strict = bool(strict)
        if heartbeat_interval is None:
            heartbeat_interval = _positive(
                defaults.get("heartbeat_interval", environ.get(ENV_HEARTBEAT_INTERVAL)),
                HEARTBEAT_INTERVAL,
                ENV_HEARTBEAT_INTERVAL,
            )
        self._heartbeat = _positive(heartbeat_interval, HEARTBEAT_INTERVAL, "heartbeat_interval")
        if handle_signals is None:
            handle_signals = _env_flag(environ, ENV_HANDLE_SIGNALS)
        if close_timeout is None:
            close_timeout = defaults.get("close_timeout", environ.get(ENV_CLOSE_TIMEOUT))
        self._close_timeout = _positive(close_timeout, CLOSE_TIMEOUT, "close_timeout")

        # Raw values written by the hot path, one tuple per kind (a single
        # store: the background thread never sees half an update).
        if total_epochs is None:
            total_epochs = _env_int(environ, ENV_TOTAL_EPOCHS)
        self._p: tuple[Any, Any, Any, Any] = (None, total_epochs, None, total_steps)
        self._m: tuple[Any, Any, Any, Any, Mapping[str, Any]] = (None, None, None, None, {})
        self._pdirty = False
        self._mdirty = False
        self._pgen = 0
        self._mgen = 0
        # Exact min/max of every metrics() call, per metric name (13.14);
        # names past the cap are counted, not kept (13.10).
        self._loss_bounds: list[float] = [_INF, -_INF]
        self._bounds: dict[str, list[float]] = {"loss": self._loss_bounds}
        self._names_dropped: set[str] = set()
        self._latest_progress: Progress | None = None
        self._latest_metrics: Metrics | None = None
        self._next_at = -_INF

        sink_list = list(_default_sinks(environ) if sinks is None else sinks)
        self._routes = [_Route(s, self.training_id) for s in sink_list]
        # Notes and non-fatal errors go out at most at the slowest sink's rate.
        self._flood_interval = max((r.interval for r in self._routes), default=0.0)
        now = clock()
        opened: list[Sink] = []
        try:
            for route in self._routes:
                try:
                    held = route.sink.open(self.training_id)
                except PulseError:
                    raise  # RunLocked, ConfigError: the caller must know at start
                except Exception as exc:  # noqa: BLE001 - e.g. a read-only home: retried later
                    route.open_failed(exc, now)
                    continue
                opened.append(route.sink)
                if isinstance(held, int) and not isinstance(held, bool) and held > self._seq:
                    self._seq = held  # continue a log that already has events
        except BaseException:
            for sink in opened:
                _quietly(sink.close)
            raise

        continued = self._seq > 0  # the log already holds events (e.g. a supervisor's)
        given_name = environ.get(ENV_RUN_NAME) or None
        if given_name is not None:
            # The supervisor's (the flow's) name is the run's name; the script's
            # own name is kept beside it as the label ``script_name``.
            if isinstance(name, str) and name and name != given_name:
                label_map = {**label_map, "script_name": name[:1024]}
            name = given_name
        self.meta = RunMeta(
            training_id=self.training_id,
            seq=self._next_seq(),
            timestamp=wall(),
            name=name,
            flow_id=flow_id or environ.get(ENV_FLOW_ID) or None,
            flow_run_id=flow_run_id or environ.get(ENV_FLOW_RUN_ID) or None,
            flow_step_id=flow_step_id or environ.get(ENV_FLOW_STEP_ID) or None,
            attempt=attempt if attempt is not None else _env_int(environ, ENV_ATTEMPT),
            total_epochs=_as_int(total_epochs),
            total_steps=_as_int(total_steps),
            pid=os.getpid(),
            host=socket.gethostname(),
            world_size=world_size,
            labels=label_map,
        )
        self.meta = bound_event(self.meta)  # type: ignore[assignment] # text fits a line
        if background:
            self._thread = threading.Thread(
                target=self._background, name=f"pulse-run-{self.training_id}", daemon=True
            )
        with self._lock:
            for route in self._routes:
                route.send(self.meta, now)
        _register(self)
        if handle_signals:
            self._signals = _watch_signals(self)
        if continued and _env_flag(environ, ENV_SUPERVISED):
            # A supervisor (``pulse run``, a Flow step) already wrote preparing
            # and running for this process: continue from running, no restating.
            self._status = "running"
        else:
            self.status("preparing", "starting")
        if self._thread is not None:
            self._thread.start()

    # -- the hot path ---------------------------------------------------------

    def progress(
        self,
        epoch: SupportsInt | None = None,
        total_epochs: SupportsInt | None = None,
        step: SupportsInt | None = None,
        total_steps: SupportsInt | None = None,
    ) -> None:
        """Report where training is. Coalesced: the latest values win.

        ``epoch`` is the 1-based epoch in progress, ``step`` the steps done in
        it (``total_steps`` per epoch). Cheap enough to call every step; the
        values are converted only when forwarded (numpy/torch scalars are fine).
        """
        try:
            p = self._p
            if epoch is None:
                epoch = p[0]
            elif p[0] is not None and epoch != p[0]:
                self._epoch_boundary()
            if total_epochs is None:
                total_epochs = p[1]
            if step is None:
                step = p[2]
            if total_steps is None:
                total_steps = p[3]
            self._p = (epoch, total_epochs, step, total_steps)
            self._pdirty = True
            if self._clock() >= self._next_at:
                self._pump_soon()
        except Exception:  # noqa: BLE001 - free while nothing raises (3.11)
            self._progress_coerced(epoch, total_epochs, step, total_steps)

    def metrics(
        self,
        loss: SupportsFloat | None = None,
        time_per_epoch: SupportsFloat | None = None,
        samples_per_second: SupportsFloat | None = None,
        tokens_per_second: SupportsFloat | None = None,
        **extra: SupportsFloat,
    ) -> None:
        """Report measured values; all optional, the latest values win.

        Extra keyword arguments are named metrics (e.g. ``lr=3e-4``). Values
        may be any number-like object (numpy, torch scalars); they are
        converted only when forwarded.
        """
        try:
            m = self._m
            if loss is None:
                loss = m[0]
            elif loss.__class__ is float or loss.__class__ is int:
                # Exact best/worst of every call (13.14): two compares; NaN
                # compares false. Other number types are compared in _build.
                b = self._loss_bounds
                if loss < b[0]:  # noqa: PLR1730 - min() costs a call on the hot path
                    b[0] = loss
                if loss > b[1]:  # noqa: PLR1730
                    b[1] = loss
            if time_per_epoch is None:
                time_per_epoch = m[1]
            else:
                self._bound("time_per_epoch", time_per_epoch)
            if samples_per_second is None:
                samples_per_second = m[2]
            else:
                self._bound("samples_per_second", samples_per_second)
            if tokens_per_second is None:
                tokens_per_second = m[3]
            else:
                self._bound("tokens_per_second", tokens_per_second)
            named = m[4]
            if extra:
                named = {**named, **extra}  # copied: a reader may hold the old one
                if len(named) > _METRIC_NAMES_MAX:
                    named = self._cap_names(named)
                # Extra names' min/max are folded in when events are built (a
                # loop here would cost ~0.17 us a call): exact for names set
                # less often than the forwarding rate (val_loss per epoch).
            self._m = (loss, time_per_epoch, samples_per_second, tokens_per_second, named)
            self._mdirty = True
            if self._clock() >= self._next_at:
                self._pump_soon()
        except Exception as exc:  # noqa: BLE001 - free while nothing raises (3.11)
            _swallowed("metrics", exc)

    # -- status, errors ---------------------------------------------------------

    @_guarded
    def status(self, state: str, message: str = "") -> None:
        """Move the run to lifecycle *state* (or restate it with a new message).

        Pending progress and metrics are delivered first.

        Raises:
            IllegalTransition: in strict mode, for a move the lifecycle does
                not allow (e.g. ``running`` after ``done``). Otherwise such a
                request is logged as a warning and nothing is sent.
        """
        if self._inert:
            return
        state, message = _as_text(state), bound_text(_as_text(message))
        with self._lock:
            if not self._transition_ok(state):
                return
            now = self._clock()
            if state == self._status and state not in TERMINAL_STATUSES:
                # A restated state with a new note: a burst, then one per interval.
                if not self._flood_allows(now):
                    self._held_note = (state, str(message))
                    return
                self._held_note = None
            else:
                self._send_held_note(now)  # the latest note goes out before the transition
                self._release_held_error(now)
            self._pump(now, force=True, auto_start=False)
            self._status_locked(state, message, now)
        self._kick()

    @_guarded
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
            details: JSON-ready context (trace id, paths, ...); other values
                are turned into strings.
            fatal: False to record the error and keep the run going.

        Raises:
            IllegalTransition: in strict mode, if the run already ended.
        """
        if self._inert:
            return
        code, message = _as_text(error_code), bound_text(_as_text(message))
        is_retryable, fatal = _as_bool(is_retryable), _as_bool(fatal, True)
        info = _as_details(details)  # a string -> {"text": ...}, a list -> {"items": ...}
        with self._lock:
            if self._status in TERMINAL_STATUSES or self._closed:
                self._illegal(self._status, "error", "the run already ended")
                return
            now = self._clock()
            if len(code) > 64 or not is_error_code(code):
                info = {**(info or {}), "given_code": code[:200]}
                code = "UNHANDLED_EXCEPTION"
            p = self._p
            fields: dict[str, Any] = {
                "error_code": code,
                "message": message,
                "is_retryable": is_retryable,
                "details": info,
                "epoch": _as_int(p[0]),
                "step": _as_int(p[2]),
            }
            if not fatal and not self._flood_allows(now):
                # Beyond the rate: held back (latest wins) and counted.
                self._held_error = fields
                self._held_count += 1
                return
            if fatal:
                self._send_held_note(now)
            self._release_held_error(now)
            self._pump(now, force=True, auto_start=False)
            self._broadcast(self._error_event(fields, 1), now)
            if fatal:
                self._status_locked("error", message, now)
        self._kick()

    @_guarded
    def cancel(self, message: str = "") -> None:
        """End the run as ``cancelled`` (stopped by the user)."""
        self.status("cancelled", _as_text(message) or "cancelled")

    @_guarded
    def request_cancel(self, message: str = "cancelled") -> None:
        """Ask the training code to stop; the run then ends ``cancelled``.

        Sets :attr:`cancel_requested` for code that checks it; a run closed
        after this (``with`` left normally, ``close()``) ends ``cancelled``
        with *message*, never ``done``. Safe from any thread.
        """
        self._cancel_reason = _as_text(message) or "cancelled"

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel was requested (:meth:`request_cancel` or a handled signal)."""
        return self._cancel_reason is not None

    def heartbeat(self) -> None:
        """Send a heartbeat now to every sink (normally the background thread does)."""
        if self._inert:
            return
        with self._lock:
            if self._status in TERMINAL_STATUSES or self._closed:
                return
            beat = Heartbeat(
                training_id=self.training_id, seq=self._next_seq(), timestamp=self._wall()
            )
            self._broadcast(beat, self._clock())
        self._kick()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the writer has written every event handed over so far.

        Training code never needs this (the writer delivers on its own, and
        :meth:`close` waits for the end); it is for code that must read a
        sink right after a call, e.g. tests. Waits at most *timeout* seconds
        (default ``close_timeout``).

        Returns:
            True if everything was written, False if the wait timed out.
        """
        if self._inert:
            return True
        return self._await_writer(self._close_timeout if timeout is None else timeout)

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
        """True while any sink is failing, unopened, or has unreported drops."""
        return any(r.degraded for r in self._routes)

    def sink_stats(self) -> list[dict[str, Any]]:
        """Per sink: name, failure, buffer, drop and coalescing counts, degraded."""
        with self._lock:
            return [r.stats() for r in self._routes]

    # -- ending -----------------------------------------------------------------

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                self.fail_with(exc)
        finally:
            self.close()

    @_guarded
    @_then_await_writer
    def fail_with(self, exc: BaseException) -> None:
        """End the run because of *exc* (error or cancelled; never done).

        KeyboardInterrupt (and a handled signal, or an earlier cancel
        request) ends it ``cancelled``; ``SystemExit`` with status 0 too;
        any other exception is classified (:func:`classify_exception`) and
        reported as an error whose details carry the exception type, a trace
        id (also logged with the traceback) and the traceback's end.

        Training is over when this is called (an exception is on its way
        out, and the process may end with it), so unlike ``status()`` it
        waits for the writer to write the end, at most ``close_timeout``.
        """
        if self._inert:
            return
        with self._lock:
            if self._status in TERMINAL_STATUSES or self._closed:
                return
            if self._cancel_reason is not None:
                self.cancel(self._cancel_reason)
                return
            if isinstance(exc, KeyboardInterrupt):
                self.cancel("interrupted (KeyboardInterrupt)")
                return
            if isinstance(exc, SystemExit):
                code = exc.code
                if code is None or (code.__class__ is int and code == 0):
                    self.cancel("the process exited before the run finished")
                else:
                    self.error(
                        "PROCESS_EXITED_WITHOUT_RESULT",
                        f"the process exited with status {code!r} before the run finished",
                        details={
                            "exit_code": _as_int(code) if code.__class__ is int else _as_text(code)
                        },
                    )
                return
            try:
                error_code, retryable = classify_exception(exc)
            except Exception:  # noqa: BLE001 - a hostile exception's __str__
                error_code, retryable = "UNHANDLED_EXCEPTION", False
            trace_id = secrets.token_hex(8)
            try:
                text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            except Exception:  # noqa: BLE001 - not an exception, or a broken one
                text = ""
            kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
            log.error(
                "pulse: training raised; the run ends with an error",
                training_id=self.training_id,
                error_code=error_code,
                exception_type=kind,
                trace_id=trace_id,
            )  # no traceback: Python prints the user's exception itself
            self.error(
                error_code,
                f"{type(exc).__name__}: {_as_text(exc)}"[:500],
                is_retryable=retryable,
                details={"exception_type": kind, "trace_id": trace_id, "traceback": text[-4000:]},
            )

    def close(self) -> None:
        """Finish the run and release its sinks; idempotent and thread-safe.

        A run still open when closed ends ``done`` if it was running or
        cooling down, and ``cancelled`` if it never started running or a
        cancel was requested. Pending values are handed over first; then the
        writer gives each sink a last retry, flushes it durably and closes
        it. ``close()`` waits for that at most ``close_timeout`` seconds,
        then warns once and returns (the writer keeps trying in the
        background while the process lives).
        """
        if self._inert:
            return
        with self._lock:
            if self._closed or self._closing:
                return
            self._closing = True
            try:
                now = self._clock()
                self._send_held_note(now)
                self._release_held_error(now)
                if self._status not in TERMINAL_STATUSES:
                    if self._cancel_reason is not None:
                        self.cancel(self._cancel_reason)
                    elif self._status in ("running", "cooling_down"):
                        self.status("done", "finished")
                    else:
                        self.cancel("the run was closed before it started")
            finally:
                self._closed = True
                self._stop.set()
                self._pump(self._clock(), force=True)
        _unregister(self)
        if self._signals:
            _unwatch_signals(self)
        thread = self._thread
        if thread is None or not thread.is_alive() or thread is threading.current_thread():
            self._finish()
            return
        self._wake.set()
        thread.join(self._close_timeout)
        if thread.is_alive():
            log.warning(
                "pulse: the writer did not finish in time; the run's last events may be lost",
                training_id=self.training_id,
                close_timeout=self._close_timeout,
                queued=sum(len(r.outbox) + len(r.buffer) for r in self._routes),
            )

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
                    beat = Heartbeat(
                        training_id=self.training_id, seq=self._next_seq(), timestamp=self._wall()
                    )
                    for route in quiet:
                        route.send(beat, now)

    def _become_inert(self) -> None:
        """In a forked child: this copy of the parent's run does nothing, ever.

        Called by the fork hook in :mod:`pulse_core._safety`. The locks are
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

    def _kick(self) -> None:
        """Events were handed over: wake the writer, or write inline without one."""
        if self._thread is not None:
            self._wake.set()
        else:
            self._drain()

    def _drain(self, force: bool = False) -> None:
        """Write every route's outbox, retry failing sinks, report drops.

        Runs on the writer thread (or inline without one), never under the
        run's lock while doing I/O.
        """
        if self._inert:
            return
        with self._io_lock:
            for _ in range(4):  # a drop report adds one event; then it is done
                now = self._clock()
                for route in self._routes:
                    route.deliver(now, force)
                with self._lock:
                    reported = False
                    for route in self._routes:
                        if route.dropped and route.healthy:
                            self._report_dropped(route, now)
                            reported = True
                if not reported:
                    return

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
            self._writing = True
            try:
                if not self._stop.is_set():
                    self._tick_locked()
                self._drain()
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

    # -- argument coercion and metric bookkeeping (issues 14.4, 13.10, 13.14) --

    def _progress_coerced(self, *given: Any) -> None:
        """progress() whose arguments raised: whole numbers kept, the rest dropped."""
        try:
            values = [_as_int(value) for value in given]
            for field, value, number in zip(_PROGRESS_FIELDS, given, values, strict=True):
                if number is None and value is not None:
                    log.warning(
                        "pulse: progress value is not a whole number; ignored",
                        field=field,
                        type=type(value).__name__,
                    )
            old = tuple(_as_int(value) for value in self._p)
            merged = tuple(o if v is None else v for v, o in zip(values, old, strict=True))
            if old[0] is not None and merged[0] != old[0]:
                self._epoch_boundary()
            self._p = merged  # type: ignore[assignment]
            self._pdirty = True
            if self._clock() >= self._next_at:
                self._pump_soon()
        except Exception as exc:  # noqa: BLE001 - reporting never raises into training
            _swallowed("progress", exc)

    def _bound(self, name: str, value: Any) -> None:
        # Plain floats and ints only (cheap, exact); others are compared when
        # the event is built. NaN compares false and never becomes a bound.
        if value.__class__ is not float and value.__class__ is not int:
            return
        bounds = self._bounds.get(name)
        if bounds is None:
            if len(self._bounds) > _METRIC_NAMES_MAX + 4 or value != value:
                return
            self._bounds[name] = [value, value]
            return
        if value < bounds[0]:  # noqa: PLR1730 - called per metrics() argument: no min() call
            bounds[0] = value
        if value > bounds[1]:  # noqa: PLR1730
            bounds[1] = value

    def _cap_names(self, named: dict[str, Any]) -> dict[str, Any]:
        """Keep the first ``_METRIC_NAMES_MAX`` names; count (and warn once about) the rest."""
        kept = dict(list(named.items())[:_METRIC_NAMES_MAX])
        dropped = self._names_dropped
        first = not dropped
        for key in named:
            if key not in kept and len(dropped) < _DROPPED_NAMES_MAX:
                dropped.add(key)
        if first and dropped:
            log.warning(
                "pulse: too many metric names; new names are not reported",
                training_id=self.training_id,
                limit=_METRIC_NAMES_MAX,
                first_dropped=next(iter(dropped))[:80],
            )
        return kept

    def _min_max(
        self, values: Mapping[str, float | None]
    ) -> tuple[dict[str, float], dict[str, float]]:
        """The run's min and max per metric, folding in the values about to be sent."""
        lows: dict[str, float] = {}
        highs: dict[str, float] = {}
        bounds = self._bounds
        for name, value in values.items():
            pair = bounds.get(name)
            if value is not None and value == value:
                if pair is None:
                    if len(bounds) > _METRIC_NAMES_MAX + 4:
                        continue
                    pair = bounds[name] = [value, value]
                # A numpy/torch value the hot path did not compare is folded in here.
                pair[0] = min(pair[0], value)
                pair[1] = max(pair[1], value)
            if pair is not None and pair[0] <= pair[1]:  # not the empty [inf, -inf]
                lows[name], highs[name] = pair[0], pair[1]
        return lows, highs

    def _transition_ok(self, state: str) -> bool:
        if self._closed:
            self._illegal(self._status, str(state), "the run is closed")
            return False
        if state not in STATUSES or next_status(self._status, state) is None:
            self._illegal(self._status, str(state))
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
            self._latest_progress = Progress(
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
            loss, tpe, sps, tps, named = self._m
            self._mgen += 1
            extra: dict[str, float] = {}
            for key, value in list(named.items())[:_METRIC_NAMES_MAX]:
                number = _as_float(value)
                if number is not None:
                    extra[_as_text(key)[:200]] = number
            given = {
                "loss": _as_float(loss),
                "time_per_epoch": _as_float(tpe),
                "samples_per_second": _as_float(sps),
                "tokens_per_second": _as_float(tps),
            }
            lows, highs = self._min_max({**given, **extra})
            self._latest_metrics = Metrics(
                training_id=self.training_id,
                seq=self._next_seq(),
                timestamp=self._wall(),
                loss=given["loss"],
                time_per_epoch=given["time_per_epoch"],
                samples_per_second=given["samples_per_second"],
                tokens_per_second=given["tokens_per_second"],
                extra=extra,
                min=lows,
                max=highs,
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

    def _error_event(self, fields: Mapping[str, Any], count: int) -> ErrorReported:
        details = fields["details"]
        if count > 1:
            details = {**(details or {}), "count": count}
        return bound_event(  # type: ignore[return-value] # fits one line, valid text
            ErrorReported(
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
        event = StatusChanged(
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
        return Dropped(
            training_id=self.training_id,
            seq=self._next_seq(),
            timestamp=self._wall(),
            count=count,
            reason="a sink failed and could not keep these events",
        )
