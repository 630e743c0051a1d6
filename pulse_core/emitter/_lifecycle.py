"""The run's lifecycle requests: status, errors, cancel, the honest end.

This module owns :class:`_RunLifecycle`, the part of
:class:`~pulse_core.emitter.TrainingRun` that moves the run through its
lifecycle: ``status()``, ``error()`` (declared by
:class:`~pulse_core.closing.EndsOnExit`, sent here with the flood limit's leading edge),
``cancel()``/``request_cancel()``, ``heartbeat()``, ``fail_with()`` (an
exception as error or cancelled, never done) and ``close()``. Illegal
requests are warned about, or raise in strict mode. Uses secrets,
threading and traceback; must never import :mod:`pulse_transports`.
"""

from __future__ import annotations

import functools
import secrets
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from pulse_core._log import get_logger
from pulse_core.codec import bound_text
from pulse_core.emitter._hooks import _unregister, _unwatch_signals
from pulse_core.emitter._ids import classify_exception
from pulse_core.emitter._value import _as_bool, _as_details, _as_int, _as_text, _guarded
from pulse_core.emitter._writer import _RunWriter
from pulse_core.errors import IllegalTransition
from pulse_core.events import STATUSES, TERMINAL_STATUSES, Heartbeat, is_error_code
from pulse_core.lifecycle import next_status

log = get_logger("pulse.emitter")


def _then_await_writer(
    method: Callable[[_RunLifecycle, BaseException], None],
) -> Callable[[_RunLifecycle, BaseException], None]:
    """Run *method*, then wait (bounded) until the writer wrote what it was handed."""

    @functools.wraps(method)
    def wrapper(self: _RunLifecycle, exc: BaseException) -> None:
        try:
            method(self, exc)
        finally:
            self._await_writer(self._close_timeout)

    return wrapper


class _RunLifecycle(_RunWriter):
    """Lifecycle requests and the end of a run (public methods of TrainingRun)."""

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
    def _report_error(
        self, error_code: str, message: str, is_retryable: bool, details: Any, fatal: bool
    ) -> None:
        """Send an error event, and end the run ``error`` if *fatal* (see ``error()``).

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
        """Wait until every sink has written everything reported so far.

        Pending progress and metrics go out now (not at their next interval)
        and each sink writes what it holds (the v1 file, a socket's queue),
        not durably. Training code never needs this (the writer delivers on
        its own, and :meth:`close` waits for the end); it is for code that
        must read a sink right after a call, e.g. tests, or a process about
        to ``os._exit``. Waits at most *timeout* seconds (default
        ``close_timeout``).

        Returns:
            True if everything was written, False if the wait timed out.
        """
        if self._inert:
            return True
        return self._flush_sinks(self._close_timeout if timeout is None else timeout)

    def _flush_sinks(self, timeout: float) -> bool:
        """Send pending values now and have every sink write what it holds.

        The writer thread does it (the caller only waits, bounded); without
        one it happens inline. False if the wait timed out.
        """
        with self._lock:
            if self._closed:
                return self._await_writer(timeout)
            self._pump(self._clock(), force=True, auto_start=False)
            self._flush_asked += 1
            asked = self._flush_asked
        thread = self._thread
        if thread is None or thread is threading.current_thread():
            self._flush_if_asked()
            return True
        deadline = time.monotonic() + timeout
        self._wake.set()
        while thread.is_alive() and self._flush_done < asked:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return self._await_writer(max(0.0, deadline - time.monotonic()))

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
                    self._report_error(
                        "PROCESS_EXITED_WITHOUT_RESULT",
                        f"the process exited with status {code!r} before the run finished",
                        is_retryable=False,
                        details={
                            "exit_code": _as_int(code) if code.__class__ is int else _as_text(code)
                        },
                        fatal=True,
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
            self._report_error(
                error_code,
                f"{type(exc).__name__}: {_as_text(exc)}"[:500],
                is_retryable=retryable,
                details={"exception_type": kind, "trace_id": trace_id, "traceback": text[-4000:]},
                fatal=True,
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

    def _end_at_exit(self) -> None:
        """The interpreter is exiting with the run open: an honest end (the atexit hook)."""
        if self._cancel_reason is not None:
            self.cancel(self._cancel_reason)
        elif self._status not in TERMINAL_STATUSES:
            self._report_error(
                "PROCESS_EXITED_WITHOUT_RESULT",
                "the interpreter exited while the run was still open",
                is_retryable=False,
                details=None,
                fatal=True,
            )

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
