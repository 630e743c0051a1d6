"""The sender machinery shared by network sinks: a queue, a thread, a backoff.

This module owns :class:`BackgroundSender`. A sink that pushes a run's
events to a server (the ``socket`` and the ``nats`` sinks) subclasses it and
supplies only ``prepare(event)`` (what is queued), ``connect()``,
``send(batch)`` and ``disconnect()`` (plus ``poll()`` to read what the
server said or do idle work). The base class owns the rest, once:

* ``write()`` never blocks on the network: the prepared item goes into the
  subclass's :class:`~pulse_core.policy.BoundedBuffer` (count and byte
  bounds, samples coalesced, oldest samples dropped first, drops counted and
  logged sampled);
* one daemon thread connects, sends batches and, on failure, puts the batch
  back at the front (trimmed to the bound) and reconnects;
* reconnection follows a :class:`~pulse_core.policy.Retry`: the next
  attempt has an absolute time, so new events that wake the thread never
  make it retry sooner than the backoff allows (issue 21: 300 attempts per
  10 s outage before);
* ``flush(durable)`` waits up to ``close_timeout`` for the queue to drain
  while connected; ``close()`` sends what is queued within that deadline.

A sender whose client is asyncio (``nats``) runs it on a :class:`LoopThread`.

Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, ClassVar, Final, Generic, Protocol, TypeVar

import attrs

from pulse_core._log import PulseLogger
from pulse_core.events import ErrorReported, Event
from pulse_core.policy import CONNECT_BACKOFF, BoundedBuffer, Retry, sampled

#: Events sent per ``send()`` call.
BATCH: Final = 512
#: Longest idle wait of the thread (seconds) before it polls the server.
IDLE_WAIT: Final = 0.5


class _Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


T = TypeVar("T", bound=_Sequenced)
R = TypeVar("R")


class _Connected(Protocol):
    @property
    def connected(self) -> bool: ...


def wait_sent(
    cond: threading.Condition,
    pending: Callable[[], bool],
    link: _Connected,
    timeout: float,
    poll: float = IDLE_WAIT,
) -> None:
    """Wait on *cond* up to *timeout* while *pending* and *link* is connected.

    ``flush(durable=True)`` of every network sink: queued events go out
    while connected; while the server is unreachable they stay queued and
    the wait ends at once.
    """
    deadline = time.monotonic() + timeout
    with cond:
        while pending() and link.connected:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            cond.wait(min(left, poll))


def shed_details(event: ErrorReported, size: int) -> ErrorReported:
    """*event* (*size* bytes, too large to send) with its details shed: never dropped."""
    details = {"pulse_truncated": f"details were {size} bytes; too large"}
    return attrs.evolve(event, message=event.message[:1000], details=details)


class BackgroundSender(Generic[T]):
    """A bounded queue drained to a server by one background thread.

    Subclasses set :attr:`failures_are` (the exceptions that mean "the
    server is not there") and implement :meth:`prepare`, :meth:`connect`,
    :meth:`send`, :meth:`disconnect` and :attr:`connected`; *buffer* is the
    queue, with the subclass's bounds and coalescing key.
    """

    #: Exceptions from connect/send/poll that count as a lost connection.
    failures_are: ClassVar[tuple[type[BaseException], ...]] = (OSError, EOFError)
    #: Log a full queue's drops on the 1st and every Nth.
    DROP_LOG_EVERY: ClassVar[int] = 1000
    #: Most events handed to one ``send()``.
    BATCH: ClassVar[int] = BATCH
    #: Besides the first failure of a streak, log every Nth failure (None: never).
    DOWN_LOG_EVERY: ClassVar[int | None] = None

    def __init__(
        self, *, log: PulseLogger, buffer: BoundedBuffer[T], close_timeout: float, label: str
    ) -> None:
        self.log = log
        self.label = label
        self.queue_limit = buffer.limit
        self.close_timeout = close_timeout
        self.training_id: str | None = None
        # counters, for tests and stats; ``attempts``: connections tried (issue 21)
        self.sent = self.coalesced = self.dropped = self.connects = self.attempts = 0
        self.failures = 0
        self.last_error = ""
        self.retry = Retry(CONNECT_BACKOFF)
        self._queue = buffer
        self._cond = threading.Condition()
        self._inflight = 0  # events out of the queue, being sent
        self._closing = False
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None

    # -- what a subclass supplies ------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while the sender holds a working connection."""
        raise NotImplementedError

    def connect(self) -> None:
        """Connect (raise one of :attr:`failures_are` if the server is not there)."""
        raise NotImplementedError

    def prepare(self, event: Event) -> T | None:
        """What to queue for *event* (None: nothing, it was dropped and counted)."""
        raise NotImplementedError

    def send(self, batch: list[T]) -> None:
        """Send *batch* (raise one of :attr:`failures_are` on a lost connection).

        Before raising, a sender that sends item by item removes from the
        front of *batch* what is done with: the rest goes back to the queue.
        """
        raise NotImplementedError

    def disconnect(self) -> None:
        """Drop the connection, if any."""
        raise NotImplementedError

    def poll(self) -> None:
        """Read what the server said without waiting, or idle work (default: nothing)."""

    def lost(self, exc: BaseException) -> None:
        """A send failed: drop the connection (a self-healing client may keep it)."""
        self.disconnect()

    def explain(self, exc: BaseException) -> str:
        """The text of a failure, for :attr:`last_error` and logs."""
        return f"{type(exc).__name__}: {exc}"

    def describe_down(self, exc: BaseException) -> None:
        """Log the first failure of a streak (subclasses say where to)."""
        self.log.warning(
            f"pulse {self.label} unreachable; keeping events and retrying",
            training_id=self.training_id,
            error=self.last_error,
        )

    # -- the sink side -----------------------------------------------------------

    def start(self, training_id: str) -> None:
        """Try once now (briefly), then start the sender thread."""
        self.training_id = training_id
        self._attempt()
        self._thread = threading.Thread(
            target=self._run, name=f"pulse-{self.label}-{training_id}", daemon=True
        )
        self._thread.start()

    def write(self, event: Event) -> None:
        """Queue *event* for the sender thread; never blocks on the network."""
        item = self.prepare(event)
        if item is None:
            return
        with self._cond:
            if self._closing:
                return  # nothing follows close()
            coalesced, dropped = self._queue.put(item)
            self.coalesced += coalesced
            self._count_drops(dropped)
            self._cond.notify()

    def flush(self, durable: bool) -> None:
        """With *durable*, wait (up to ``close_timeout``) for the queue to be sent.

        Returns at once while the server is unreachable: events then stay queued.
        """
        if durable:
            wait_sent(
                self._cond, lambda: bool(self._queue or self._inflight), self, self.close_timeout
            )

    def stop(self) -> int:
        """Send what is queued (bounded by ``close_timeout``), disconnect; return unsent."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + self.close_timeout
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.close_timeout + 1.0)
        self.disconnect()
        return self.queued()

    def queued(self) -> int:
        """Events waiting to be sent (and being sent)."""
        with self._cond:
            return len(self._queue) + self._inflight

    def drop_through(self, seq: int) -> None:
        """Forget queued events up to *seq* (the server has them already)."""
        with self._cond:
            while self._queue and self._queue.items[0].seq <= seq:
                self._queue.popleft()

    def count_drop(self, why: str = "", seq: int | None = None) -> None:
        """Count one dropped event (logged on the 1st and every Nth)."""
        self.dropped += 1
        if sampled(self.dropped, self.DROP_LOG_EVERY):
            self.log.warning(
                f"pulse {self.label} dropped an event",
                training_id=self.training_id,
                seq=seq,
                reason=why or "the queue is full; the oldest events go first",
                dropped=self.dropped,
                limit=self.queue_limit,
            )

    def _count_drops(self, items: tuple[T, ...]) -> None:
        for gone in items:
            self.count_drop(seq=gone.seq)

    def _failed(self, exc: BaseException) -> None:
        """Count a failure; log the first of a streak (and every Nth); back off."""
        self.failures += 1
        self.last_error = self.explain(exc)[:300]
        every = self.DOWN_LOG_EVERY
        if self.retry.failures == 0 or (every and sampled(self.failures, every)):
            self.describe_down(exc)
        self.retry.failed(time.monotonic(), random.random())  # noqa: S311 - jitter

    # -- the sender thread -------------------------------------------------------

    def _attempt(self) -> bool:
        """One connection attempt; on failure, schedule the next by the backoff."""
        self.attempts += 1
        try:
            self.connect()
        except self.failures_are as exc:
            self._failed(exc)
            return False
        self.connects += 1
        self._succeeded("reachable again")
        return True

    def _succeeded(self, what: str) -> None:
        """End a failure streak (logged once, with how long it was)."""
        failures = self.retry.succeeded()
        if failures:
            self.log.info(
                f"pulse {self.label} {what}; sending queued events",
                training_id=self.training_id,
                attempts=failures,
                queued=self.queued(),
            )

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the reporter thread must never take training down
            self.log.exception(f"pulse {self.label} thread failed", training_id=self.training_id)
        finally:
            with self._cond:
                self._inflight = 0
                self._cond.notify_all()

    def _wait_for_retry(self) -> None:
        """Sleep until the backoff allows the next attempt; new events do not cut it short.

        While closing, a connection attempt goes at once (one last try) and a
        failed send waits at most until the close deadline.
        """
        with self._cond:
            while True:
                now = time.monotonic()
                left = self.retry.wait(now)
                if self._closing:
                    if not self.connected:
                        return
                    left = min(left, self._deadline - now)
                if left <= 0:
                    return
                self._cond.wait(left)

    def _loop(self) -> None:
        cond = self._cond
        while True:
            self._wait_for_retry()  # after a failed send: not before the backoff allows
            if not self.connected:
                with cond:
                    closing, empty = self._closing, not self._queue
                if closing and (empty or time.monotonic() >= self._deadline):
                    return
                if not self._attempt():
                    if self._closing:
                        return  # one last try at close, no waiting on a server that is down
                    continue
            with cond:
                if not self._queue and not self._closing:
                    cond.wait(IDLE_WAIT)
                batch = self._queue.take(self.BATCH)
                closing = self._closing
                self._inflight = len(batch)
            try:
                self.poll()
                if batch:
                    self.send(batch)
            except self.failures_are as exc:
                with cond:
                    self._count_drops(self._queue.requeue(batch))
                    self._inflight = 0
                self.lost(exc)
                self._failed(exc)
                if closing and time.monotonic() >= self._deadline:
                    return
                continue
            if self._inflight and self.retry.failures:
                self._succeeded("sending again")  # a client that kept its connection
            with cond:
                self._inflight = 0
                cond.notify_all()
                if closing and (not self._queue or time.monotonic() >= self._deadline):
                    return


class LoopThread:
    """A private asyncio event loop on a daemon thread, for a sender whose client is async.

    The sender thread hands coroutines over with :meth:`run` and waits for
    their result; the loop keeps running between them, so the client's own
    tasks (reading, pings, reconnection) go on.
    """

    def __init__(self, name: str) -> None:
        """Start the loop on a daemon thread called *name*."""
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self.loop.is_closed()

    def run(self, coro: Coroutine[Any, Any, R]) -> R:
        """Run *coro* on the loop and wait for its result (from another thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        """Cancel what is left on the loop, stop it and close it."""
        if self.running:
            with contextlib.suppress(Exception):
                self.run(_cancel_others())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(2.0)
        if not self._thread.is_alive() and not self.loop.is_closed():
            self.loop.close()


async def _cancel_others() -> None:
    me = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not me]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=1.0)
