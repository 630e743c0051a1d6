"""The run: what training code creates and calls.

This module owns :class:`TrainingRun`'s initialiser (arguments coerced,
settings resolved, sinks opened, metadata and ``preparing`` sent, the
writer thread started), the hot path (``progress()``, ``metrics()``: raw
values stored, one clock compare) and the run's read-only state. The
lifecycle requests are in :mod:`pulse_core.emitter._lifecycle`, event
building and writing in :mod:`pulse_core.emitter._writer`. Uses os,
socket, threading and time; must never import :mod:`pulse_transports`.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, SupportsFloat, SupportsInt

from pulse_core._log import get_logger
from pulse_core.closing import EndsOnExit
from pulse_core.codec import bound_event, warm
from pulse_core.emitter import _settings
from pulse_core.emitter._hooks import _quietly, _register, _watch_signals
from pulse_core.emitter._ids import new_training_id
from pulse_core.emitter._lifecycle import _RunLifecycle
from pulse_core.emitter._metrics import _DROPPED_NAMES_MAX, _METRIC_NAMES_MAX, _Bounds
from pulse_core.emitter._route import _Route
from pulse_core.emitter._settings import _as_env, _env_flag, _env_int, _positive, resolve
from pulse_core.emitter._value import (
    _as_bool,
    _as_float,
    _as_int,
    _as_labels,
    _as_opt_text,
    _swallowed,
)
from pulse_core.emitter._writer import _INF
from pulse_core.errors import PulseError
from pulse_core.events import Metrics, Progress, RunMeta, validate_training_id
from pulse_core.policy import CLOSE_TIMEOUT, FLOOD_BURST, HEARTBEAT_INTERVAL
from pulse_core.ports import Sink

log = get_logger("pulse.emitter")

_PROGRESS_FIELDS: Final = ("epoch", "total_epochs", "step", "total_steps")


class TrainingRun(EndsOnExit, _RunLifecycle):
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
        self._flush_asked = 0  # flush() requests handed to the writer
        self._flush_done = 0  # of which the writer has flushed every sink
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
            tid = environ.get(_settings.ENV_TRAINING_ID) or new_training_id(wall())
        self.training_id: str = validate_training_id(tid)

        # Configuration is read once, for the settings and the default sinks.
        defaults, configured = resolve(
            environ,
            need_defaults=strict is None or heartbeat_interval is None,
            need_sinks=sinks is None,
        )
        if strict is None:
            strict = bool(defaults.get("strict", _env_flag(environ, _settings.ENV_STRICT)))
        self._strict = bool(strict)
        if heartbeat_interval is None:
            heartbeat_interval = _positive(
                defaults.get("heartbeat_interval", environ.get(_settings.ENV_HEARTBEAT_INTERVAL)),
                HEARTBEAT_INTERVAL,
                _settings.ENV_HEARTBEAT_INTERVAL,
            )
        self._heartbeat = _positive(heartbeat_interval, HEARTBEAT_INTERVAL, "heartbeat_interval")
        if handle_signals is None:
            handle_signals = _env_flag(environ, _settings.ENV_HANDLE_SIGNALS)
        if close_timeout is None:
            close_timeout = defaults.get("close_timeout", environ.get(_settings.ENV_CLOSE_TIMEOUT))
        self._close_timeout = _positive(close_timeout, CLOSE_TIMEOUT, "close_timeout")

        # Raw values written by the hot path, one tuple per kind (a single
        # store: the background thread never sees half an update).
        if total_epochs is None:
            total_epochs = _env_int(environ, _settings.ENV_TOTAL_EPOCHS)
        self._p: tuple[Any, Any, Any, Any] = (None, total_epochs, None, total_steps)
        self._m: tuple[Any, Any, Any, Any, Mapping[str, Any]] = (None, None, None, None, {})
        self._pdirty = False
        self._mdirty = False
        self._pgen = 0
        self._mgen = 0
        # Exact min/max of every metrics() call, per metric name (13.14);
        # names past the cap are counted, not kept (13.10).
        self._bounds = _Bounds()
        self._names_dropped: set[str] = set()
        self._latest_progress: Progress | None = None
        self._latest_metrics: Metrics | None = None
        self._next_at = -_INF

        sink_list = list(sinks) if sinks is not None else list(configured or ())
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
        given_name = environ.get(_settings.ENV_RUN_NAME) or None
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
            flow_id=flow_id or environ.get(_settings.ENV_FLOW_ID) or None,
            flow_run_id=flow_run_id or environ.get(_settings.ENV_FLOW_RUN_ID) or None,
            flow_step_id=flow_step_id or environ.get(_settings.ENV_FLOW_STEP_ID) or None,
            attempt=attempt if attempt is not None else _env_int(environ, _settings.ENV_ATTEMPT),
            total_epochs=_as_int(total_epochs),
            total_steps=_as_int(total_steps),
            pid=os.getpid(),
            host=socket.gethostname(),
            world_size=world_size,
            labels=label_map,
        )
        self.meta = bound_event(self.meta)  # type: ignore[assignment] # text fits a line
        warm()  # every event type's encoder built here, not in the loop
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
        if continued and _env_flag(environ, _settings.ENV_SUPERVISED):
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
            # Exact best/worst of every call (13.14); other number types
            # than float and int are compared when the event is built.
            note = self._bounds.note
            if loss is None:
                loss = m[0]
            else:
                note("loss", loss)
            if time_per_epoch is None:
                time_per_epoch = m[1]
            else:
                note("time_per_epoch", time_per_epoch)
            if samples_per_second is None:
                samples_per_second = m[2]
            else:
                note("samples_per_second", samples_per_second)
            if tokens_per_second is None:
                tokens_per_second = m[3]
            else:
                note("tokens_per_second", tokens_per_second)
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

    @property
    def degraded(self) -> bool:
        """True while any sink is failing, unopened, or has unreported drops."""
        return any(r.degraded for r in self._routes)

    def sink_stats(self) -> list[dict[str, Any]]:
        """Per sink: name, failure, buffer, drop and coalescing counts, degraded."""
        with self._lock:
            return [r.stats() for r in self._routes]

    # -- ending -----------------------------------------------------------------

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
