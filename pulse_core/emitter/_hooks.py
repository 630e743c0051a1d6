"""The emitter's process-wide safety nets: the one registry of process hooks.

This module owns what makes a run end honestly when training code does not
end it: the registry of the process's open runs (:func:`open_runs`), the
``sys.excepthook`` that ends them as error (or cancelled) on an uncaught
exception, the ``threading.excepthook`` that ends the runs a thread opened
when that thread dies of an uncaught exception (the process may live on),
the ``atexit`` hook that ends runs still open at interpreter exit, the
opted-in SIGTERM/SIGINT handlers that turn a signal into a cancel, and the
``os.register_at_fork`` hook that makes every run inherited by a forked
child inert (the child never writes to, closes or unlocks the parent's
sinks, and its exit or exception never ends the parent's run). This is the
one registry of process hooks: they are installed once, by the first run
or the first :func:`register_abortable` call, and chain to the hooks
installed before them. Anything else that must hear of an uncaught
exception (a distributed job's non-zero rank, ``PeerRun``) registers an
:class:`Abortable` with :func:`register_abortable` instead of installing a
second ``sys.excepthook``. This module knows runs only through the
:class:`Abortable` and ``_OpenRun`` protocols, never by their class. Uses os,
threading, signal and the library logger (:mod:`pulse_core._log`) like the
emitter; must never import :mod:`pulse_transports`.
"""

from __future__ import annotations

import atexit
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Protocol

from pulse_core._log import get_logger

log = get_logger("pulse.emitter")


class Abortable(Protocol):
    """Something an uncaught exception in the process must end (it records its own failure)."""

    def fail_with(self, exc: BaseException) -> None:
        """End because of *exc*; never raises."""


class _OpenRun(Abortable, Protocol):
    """An open run as the process hooks see it (:class:`~pulse_core.emitter.TrainingRun`)."""

    _owner: int  # the thread that opened it

    def close(self) -> None: ...

    def request_cancel(self, message: str = ...) -> None: ...

    def _end_at_exit(self) -> None: ...

    def _become_inert(self) -> None: ...


_open_runs: set[_OpenRun] = set()
_abortables: dict[int, Abortable] = {}  # by id(): a PeerRun need not be hashable
_nets_lock = threading.Lock()
_hooks_installed = False
_previous_excepthook = sys.excepthook
_previous_thread_excepthook = threading.excepthook
_signal_runs: set[_OpenRun] = set()
_previous_handlers: dict[int, Any] = {}


def register_abortable(thing: Abortable) -> None:
    """Have an uncaught exception in this process call ``thing.fail_with(exc)``.

    The one ``sys.excepthook`` of :mod:`pulse_core` does it, after ending
    the open runs and before chaining to the hook installed before it.
    Call :func:`unregister_abortable` when *thing* ends.
    """
    with _nets_lock:
        _abortables[id(thing)] = thing
        _install_locked()


def unregister_abortable(thing: Abortable) -> None:
    """Undo :func:`register_abortable` (idempotent)."""
    with _nets_lock:
        _abortables.pop(id(thing), None)


def _register(run: _OpenRun) -> None:
    with _nets_lock:
        _open_runs.add(run)
        _install_locked()


def _install_locked() -> None:
    """Install the process hooks once (under ``_nets_lock``)."""
    global _hooks_installed, _previous_excepthook, _previous_thread_excepthook  # noqa: PLW0603 - one process-wide hook
    if _hooks_installed:
        return
    _hooks_installed = True
    _previous_excepthook = sys.excepthook
    sys.excepthook = _excepthook
    _previous_thread_excepthook = threading.excepthook
    threading.excepthook = _thread_excepthook
    atexit.register(_at_exit)
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)


def _unregister(run: _OpenRun) -> None:
    with _nets_lock:
        _open_runs.discard(run)


def open_runs() -> list[_OpenRun]:
    """The runs of this process that are open (created and not yet closed)."""
    with _nets_lock:
        return list(_open_runs)


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """An uncaught exception ends every open run as error (or cancelled), then is printed."""
    with _nets_lock:
        runs = list(_open_runs)
        others = list(_abortables.values())
    for run in runs:
        _quietly(functools.partial(run.fail_with, exc))
        _quietly(run.close)
    for thing in others:
        _quietly(functools.partial(thing.fail_with, exc))
    _previous_excepthook(exc_type, exc, tb)


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """A thread died of an uncaught exception: end the runs it opened, then chain."""
    thread = args.thread
    ident = thread.ident if thread is not None else threading.get_ident()
    with _nets_lock:
        runs = [run for run in _open_runs if run._owner == ident]
    exc = args.exc_value
    if exc is not None and not isinstance(exc, SystemExit):
        for run in runs:
            _quietly(functools.partial(run.fail_with, exc))
            _quietly(run.close)
    _previous_thread_excepthook(args)


def _after_fork_in_child() -> None:
    """In a forked child: every inherited run becomes inert, the registry empty."""
    global _nets_lock  # noqa: PLW0603 - a lock held by another thread at fork stays held
    _nets_lock = threading.Lock()
    for run in list(_open_runs):
        _quietly(run._become_inert)
    _open_runs.clear()
    _signal_runs.clear()


def _at_exit() -> None:
    """The interpreter is exiting with runs open: record an honest end for each."""
    with _nets_lock:
        runs = list(_open_runs)
    for run in runs:
        _quietly(run._end_at_exit)
        _quietly(run.close)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    with _nets_lock:
        runs = list(_signal_runs)
    for run in runs:
        run.request_cancel(f"cancelled by {name}")
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _watch_signals(run: _OpenRun) -> bool:
    """Turn SIGTERM/SIGINT into a cancel of *run*; False outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        log.warning("pulse: handle_signals ignored outside the main thread")
        return False
    with _nets_lock:
        if not _signal_runs:
            for signum in (signal.SIGTERM, signal.SIGINT):
                _previous_handlers[signum] = signal.signal(signum, _on_signal)
        _signal_runs.add(run)
    return True


def _unwatch_signals(run: _OpenRun) -> None:
    """Stop watching for *run*; the last one restores the previous handlers."""
    with _nets_lock:
        _signal_runs.discard(run)
        if _signal_runs or not _previous_handlers:
            return
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; ours stays harmless
        for signum, previous in list(_previous_handlers.items()):
            if signal.getsignal(signum) is _on_signal:
                signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        _previous_handlers.clear()


def _quietly(call: Callable[[], object]) -> None:
    try:
        call()
    except Exception:
        log.exception("pulse cleanup step failed")
