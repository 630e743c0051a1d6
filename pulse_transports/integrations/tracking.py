"""``track()``: a tqdm-like wrapper that reports a hand-written loop's progress.

This module owns :class:`track` and the process's *current run*
(:func:`set_current_run`, :func:`current_run`)::

    for epoch in track(range(3), unit="epoch"):
        for batch in track(loader):
            ...

Levels: a ``unit="epoch"`` loop reports the epoch in progress (1-based) and
``total_epochs``; any other loop reports ``step`` (iterations done) and
``total_steps`` (``len()`` of the iterable, or *total*). A loop that starts
inside another one turns the outer loop into the epoch level if there is
none yet, so ``for e in track(range(E)): for b in track(loader):`` reports
epochs and steps too. Loops nested deeper than an epoch and a step loop
are silent (they iterate, they do not report).

The run: the *run* argument; else the run of the enclosing loop; else the
current run (:func:`set_current_run`, or the only open
:class:`~pulse_core.emitter.TrainingRun` of the process); else the outermost
loop opens one (rank-aware, :func:`~pulse_transports.integrations.distributed.open_run`)
and ends it when its loop ends. An exception never ends it ``done``:

* ``done`` when the loop is finished, or left with ``break``/``return``;
* ``error`` with the exception's code at once when the iterable of any of
  the loops (a data loader) raises;
* an exception raised in the loop body cannot be seen by the generator,
  which is only closed: when it is, the frame of the loop is looked at
  (:func:`_left_normally`) and only a recognised ``break``/``return`` or
  loop end ends the run ``done``; otherwise the run is left to the
  exception's own way out -- ``error``/``cancelled`` through the emitter's
  process-wide excepthook when uncaught, or the emitter's exit net
  (``error``) when the program caught it and went on.

``with track(...) as t:`` ends the run with any exception leaving the block.
An outermost step loop sends ``total_steps`` from its second report on: a
loop started inside it in its first iteration makes it the epoch loop, and
its length must not stay behind as the inner loop's ``total_steps``.

Cost: the wrapper is a generator that increments a counter and compares it
with a precomputed threshold; ``run.progress`` is called only every *N*
iterations, *N* adapted after each call so that calls come about every
*interval* seconds (the run's own rate limiting then decides what is sent).
That is cheaper per iteration than tqdm with ``miniters``. The threshold is
recomputed only at those calls, so a loop that suddenly slows down reports
its step late by up to N iterations, as tqdm does.

Imports no framework; nesting is tracked per thread.
"""

from __future__ import annotations

import dis
import gc
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from types import FrameType, TracebackType
from typing import Any, Final, Generic, Self, TypeVar

from pulse_core import emitter
from pulse_core._log import get_logger
from pulse_core.closing import ClosesOnExit
from pulse_core.emitter import TrainingRun
from pulse_core.events import TERMINAL_STATUSES
from pulse_transports.integrations.distributed import PeerRun, open_run

log = get_logger("pulse.integrations")

T = TypeVar("T")
Run = TrainingRun | PeerRun

#: Seconds between two ``run.progress`` calls a step loop aims at.
INTERVAL: Final = 0.05
#: How much the iteration gap between two progress calls may grow at once.
GROWTH: Final = 4

_EPOCH: Final = "epoch"
_STEP: Final = "step"
_SILENT: Final = "silent"
_EPOCH_UNITS: Final = frozenset({"epoch", "epochs"})

_current: list[Run | None] = [None]
_local = threading.local()


def set_current_run(run: Run | None) -> None:
    """Make *run* the run that :func:`track` (and callbacks given no run) report to."""
    _current[0] = run


def current_run() -> Run | None:
    """The current run: the one set with :func:`set_current_run`, else the only open one.

    Returns None when none was set and the process has no open run or several.
    """
    run = _current[0]
    if run is not None and not run.closed:
        return run
    live = [
        r for r in emitter.open_runs() if not r.closed and r.current_status not in TERMINAL_STATUSES
    ]
    return live[0] if len(live) == 1 else None


def _stack() -> list[track[Any]]:
    stack: list[track[Any]] | None = getattr(_local, "stack", None)
    if stack is None:
        stack = _local.stack = []
    return stack


# The instruction a frame executes when it drops a for loop's iterator on
# ``break`` or ``return`` (3.11-3.13: POP_TOP; 3.14: POP_ITER), or a
# generator kept in a variable (a store, a ``del``, a return). None of them
# raises where it drops a reference, while an exception leaving the loop
# drops the iterator with the frame standing at the raising instruction.
_DROP_OPS: Final = frozenset(
    dis.opmap[name]
    for name in (
        "POP_TOP",
        "POP_ITER",
        "STORE_FAST",
        "DELETE_FAST",
        "STORE_NAME",
        "DELETE_NAME",
        "STORE_GLOBAL",
        "DELETE_GLOBAL",
        "RETURN_VALUE",
        "RETURN_CONST",
    )
    if name in dis.opmap
)
# Where a frame stands when its for loop ends because the iterator it loops
# over (``zip(track(...), range(n))``) is exhausted -- or because that
# iterator raised: told apart by the traceback an exception leaves.
_EXHAUST_OPS: Final = frozenset(
    dis.opmap[name] for name in ("FOR_ITER", "END_FOR") if name in dis.opmap
)
# Where a generator frame stands when it is closed itself and passes the
# close on to the loop it iterates (``yield`` / ``yield from``).
_YIELD_OPS: Final = frozenset(
    dis.opmap[name] for name in ("YIELD_VALUE", "SEND", "RESUME") if name in dis.opmap
)
_GENERATOR_FLAGS: Final = 0x20 | 0x200  # CO_GENERATOR | CO_ASYNC_GENERATOR


def _left_normally(frame: FrameType | None) -> bool:
    """True if the loop whose iterator is being closed was left with break or return.

    *frame* is the frame running when the iterator was closed: the loop's
    own frame (or a generator around it, being closed in turn). A frame
    standing on the instruction that drops an iterator left it with break
    or return; anything else (an exception on its way out, an iterator
    dropped some other way) is not taken for a normal end.
    """
    while frame is not None:
        code = frame.f_code
        lasti = frame.f_lasti
        op = code.co_code[lasti] if 0 <= lasti < len(code.co_code) else -1
        if op in _DROP_OPS:
            return True
        if op in _EXHAUST_OPS:
            return not _raising_through(frame)
        if op in _YIELD_OPS and code.co_flags & _GENERATOR_FLAGS:
            frame = frame.f_back  # a wrapping generator being closed: ask its closer
            continue
        return False
    return False


def _closer() -> FrameType | None:
    """The frame that closed the generator calling this (None: closed with no frame running)."""
    try:
        return sys._getframe(2)
    except ValueError:
        return None


def _raising_through(frame: FrameType) -> bool:
    """True if an exception is passing through *frame* at its current instruction.

    The interpreter adds the frame to the exception's traceback before it
    drops the frame's iterators, so the traceback entry is there to find.
    Slow (a look through the collector's objects): asked only for a loop
    ended by its iterator's end, not for ``break`` or the loop's own end.
    """
    lasti = frame.f_lasti
    return any(
        isinstance(ref, TracebackType) and ref.tb_frame is frame and ref.tb_lasti == lasti
        for ref in gc.get_referrers(frame)
    )


def _kind(value: object) -> str:
    return type(value).__qualname__


def _reports(run: object) -> bool:
    """True for a run-like object: a TrainingRun, a PeerRun, or anything with ``progress``."""
    if isinstance(run, (TrainingRun, PeerRun)):
        return True
    try:
        return callable(getattr(run, "progress", None))
    except Exception:  # noqa: BLE001 - a hostile __getattr__: not a run
        return False


def _interval(value: object) -> float:
    """*value* as a finite, non-negative number of seconds, else :data:`INTERVAL`."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - hostile __float__: use the default
        number = float("nan")
    if number >= 0 and number != float("inf"):
        return number
    log.warning("pulse: track() interval is not a number of seconds; using the default")
    return INTERVAL


def _length(iterable: object) -> int | None:
    try:
        return len(iterable)  # type: ignore[arg-type]
    except (TypeError, AttributeError, NotImplementedError):
        return None


class track(ClosesOnExit, Generic[T]):  # lower case: it stands in for tqdm()
    """Iterate over *iterable*, reporting progress to a PULSE run.

    Args:
        iterable: what to iterate over.
        total: how many items it has (default ``len(iterable)`` if it has one).
        unit: ``"epoch"`` for the epoch loop; anything else is a step loop.
        desc: a label (kept for tqdm compatibility; not reported).
        run: the run to report to (default: see the module docs).
        interval: seconds between progress calls a step loop aims at.

    Attributes:
        n: iterations done when progress was last reported (exact once the
            loop has ended).
        role: ``"epoch"``, ``"step"`` or ``"silent"`` once iteration started.
    """

    def __init__(
        self,
        iterable: Iterable[T],
        total: int | None = None,
        *,
        unit: str = "it",
        desc: str | None = None,
        run: Run | None = None,
        interval: float = INTERVAL,
    ) -> None:
        self.iterable = iterable
        self.total = total if total is not None else _length(iterable)
        # Any argument is accepted (issue 14.4): what does not fit is replaced
        # by its default with one warning, never raised into the loop.
        if not isinstance(unit, str):
            log.warning("pulse: track() unit is not a string; using 'it'", given=_kind(unit))
            unit = "it"
        if run is not None and not _reports(run):
            log.warning("pulse: track() run cannot report progress; ignored", given=_kind(run))
            run = None
        self.unit = unit
        self.desc = desc
        self.run = run
        self.interval = _interval(interval)
        self.n = 0
        self.role = _EPOCH if unit in _EPOCH_UNITS else _STEP
        self._owned = False
        #: an exception a loop inside this one's iterable raised (it is
        #: leaving this loop's body now): the run this loop owns ends with it.
        self._failure: BaseException | None = None
        #: a top-level step loop sends total_steps from its second report on:
        #: it may yet become the epoch loop of a loop started inside it.
        self._total_due = False
        self._in_with = False  # a with block ends an owned run, not the loop
        self._last_n = 0
        self._last_t = 0.0

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError(f"this {type(self.iterable).__name__} has no length")
        return self.total

    def __iter__(self) -> Iterator[T]:
        return self._iterate()

    def __enter__(self) -> Self:
        self._in_with = True
        return self

    def exited_with(self, exc: BaseException) -> None:
        """An exception left the ``with`` block: the run (if any) ends by it."""
        self._in_with = False
        if self.run is not None:
            self.run.fail_with(exc)

    def close(self) -> None:
        """Leave the ``with`` block: end the run if this loop opened it."""
        self._in_with = False
        if self._owned and self.run is not None:
            self.run.close()

    # -- the loop ---------------------------------------------------------------------

    def _iterate(self) -> Iterator[T]:
        stack = _stack()
        self._start(stack)
        stack.append(self)
        finished = False
        n = 0
        try:
            if self.role == _SILENT:
                yield from self.iterable
            else:
                threshold = 0
                for item in self.iterable:
                    if n >= threshold:
                        threshold = self._report(n)
                    yield item
                    n += 1
                self._report_end(n)
            finished = True
        except GeneratorExit:
            # The loop was left before its end: with break/return (the run
            # we own ends done), or by an exception raised in its body,
            # which this generator cannot see. Only a positively recognised
            # break ends the run here; otherwise an exception from a loop
            # below ends it with its code, else the exception's own way
            # out does (the emitter's excepthook, or its exit net).
            self._report_end(n)
            if self._owned and self.run is not None and not self._in_with:
                finished = _left_normally(_closer())
                failure = self._failure
                if not finished and failure is not None:
                    self.run.fail_with(failure)  # a loader's error, on its way out
                    finished = True
                elif not finished:
                    log.info(
                        "pulse: track() loop left by an exception; the run ends with it",
                        training_id=getattr(self.run, "training_id", None),
                        step=n,
                    )
            raise
        except BaseException as exc:
            # The iterable itself raised (a data loader failing): a run we
            # opened ends with it; the loop that owns the run learns of it
            # so that it ends with this error too, not done.
            if self._owned and self.run is not None:
                self.run.fail_with(exc)
            else:
                owner = self._owner(stack)
                if owner is not None:
                    owner._failure = exc
            raise
        finally:
            if stack and stack[-1] is self:
                stack.pop()
            elif self in stack:
                stack.remove(self)
            if finished and self._owned and self.run is not None and not self._in_with:
                self.run.close()

    def _owner(self, stack: list[track[Any]]) -> track[Any] | None:
        """The enclosing loop that opened this loop's run, if one did."""
        for outer in stack:
            if outer._owned and outer.run is self.run:
                return outer
        return None

    def _start(self, stack: list[track[Any]]) -> None:
        parent = stack[-1] if stack else None
        has_epoch = any(t.role == _EPOCH for t in stack)
        if self.role == _EPOCH:
            if has_epoch:
                self.role = _SILENT
        elif parent is None or parent.role == _EPOCH:
            self.role = _STEP
            self._total_due = parent is None
        elif parent.role == _STEP and not has_epoch:
            parent._promote()
            self.role = _STEP
        else:
            self.role = _SILENT
        if self.run is None:
            self.run = parent.run if parent is not None else current_run()
        if self.run is None:
            self.run = open_run(broadcast=False)
            self._owned = True

    def _promote(self) -> None:
        """Become the epoch loop (a step loop started inside this one)."""
        self.role = _EPOCH
        if self.run is not None:
            self.run.progress(epoch=self.n + 1, total_epochs=self.total, step=0)

    def _report(self, n: int) -> int:
        """Report *n* iterations done; returns the iteration count of the next report."""
        run = self.run
        assert run is not None
        self.n = n
        self._failure = None  # the loop goes on: an exception below was handled
        if self.role == _EPOCH:
            run.progress(epoch=n + 1, total_epochs=self.total, step=0)
            return n + 1
        now = time.monotonic()
        if n == 0:
            if self._total_due:
                run.progress(step=0)
            else:
                run.progress(step=0, total_steps=self.total)
            self._last_n, self._last_t = 0, now
            return 1
        if self._total_due:
            self._total_due = False
            run.progress(step=n, total_steps=self.total)
        else:
            run.progress(step=n)
        done = n - self._last_n
        elapsed = now - self._last_t
        self._last_n, self._last_t = n, now
        limit = done * GROWTH
        gap = int(done * self.interval / elapsed) if elapsed > 0 else limit
        return n + max(1, min(gap, limit))

    def _report_end(self, n: int) -> None:
        self.n = n
        if self.role == _STEP and self.run is not None:
            if self._total_due:
                self._total_due = False
                self.run.progress(step=n, total_steps=self.total)
            else:
                self.run.progress(step=n)
