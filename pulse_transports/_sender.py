"""The sender machinery shared by network sinks: a queue, a thread, a backoff.

This module owns :class:`BackgroundSender`. A sink that pushes a run's
events to a server (the ``socket`` sink; the pattern the ``nats`` sink
follows) subclasses it and supplies only ``connect()``, ``send(batch)`` and
``disconnect()`` (plus ``poll()`` to read what the server said). The base
class owns the rest, once:

* ``write()`` never blocks on the network: the event goes into a
  :class:`~pulse_core.policy.BoundedBuffer` (count bound, samples coalesced,
  oldest samples dropped first, drops counted and logged sampled);
* one daemon thread connects, sends batches and, on failure, puts the batch
  back at the front (trimmed to the bound) and reconnects;
* reconnection follows a :class:`~pulse_core.policy.Retry`: the next
  attempt has an absolute time, so new events that wake the thread never
  make it retry sooner than the backoff allows (issue 21: 300 attempts per
  10 s outage before);
* ``flush(durable)`` waits up to ``close_timeout`` for the queue to drain
  while connected; ``close()`` sends what is queued within that deadline.

Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from typing import ClassVar, Final, Protocol

from pulse_core._log import PulseLogger
from pulse_core.events import Event
from pulse_core.policy import CONNECT_BACKOFF, BoundedBuffer, Retry, sample_kind, sampled

#: Events sent per ``send()`` call.
BATCH: Final = 512
#: Longest idle wait of the thread (seconds) before it polls the server.
IDLE_WAIT: Final = 0.5


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


class BackgroundSender:
    """A bounded queue drained to a server by one background thread.

    Subclasses set :attr:`failures_are` (the exceptions that mean "the
    server is not there") and implement :meth:`connect`, :meth:`send`,
    :meth:`disconnect` and :attr:`connected`.
    """

    #: Exceptions from connect/send/poll that count as a lost connection.
    failures_are: ClassVar[tuple[type[BaseException], ...]] = (OSError, EOFError)
    #: Log a full queue's drops on the 1st and every Nth.
    DROP_LOG_EVERY: ClassVar[int] = 1000

    def __init__(self, *, log: PulseLogger, queue: int, close_timeout: float, label: str) -> None:
        self.log = log
        self.label = label
        self.queue_limit = queue
        self.close_timeout = close_timeout
        self.training_id: str | None = None
        # counters, for tests and stats; ``attempts``: connections tried (issue 21)
        self.sent = self.coalesced = self.dropped = self.connects = self.attempts = 0
        self.retry = Retry(CONNECT_BACKOFF)
        self._queue: BoundedBuffer[Event] = BoundedBuffer(queue, key=sample_kind)
        self._cond = threading.Condition()
        self._busy = False  # a batch is out of the queue, being sent
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

    def send(self, batch: list[Event]) -> None:
        """Send *batch* (raise one of :attr:`failures_are` on a lost connection)."""
        raise NotImplementedError

    def disconnect(self) -> None:
        """Drop the connection, if any."""
        raise NotImplementedError

    def poll(self) -> None:
        """Read what the server said without waiting (default: nothing)."""

    def describe_down(self, exc: BaseException) -> None:
        """Log the first failure of a streak (subclasses say where to)."""
        self.log.warning(
            f"pulse {self.label} unreachable; keeping events and retrying",
            training_id=self.training_id,
            error=f"{type(exc).__name__}: {exc}",
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
        with self._cond:
            coalesced, dropped = self._queue.put(event)
            self.coalesced += coalesced
            self._count_drops(len(dropped))
            self._cond.notify()

    def flush(self, durable: bool) -> None:
        """With *durable*, wait (up to ``close_timeout``) for the queue to be sent.

        Returns at once while the server is unreachable: events then stay queued.
        """
        if durable:
            wait_sent(self._cond, lambda: bool(self._queue or self._busy), self, self.close_timeout)

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
        with self._cond:
            return len(self._queue)

    def queued(self) -> int:
        """Events waiting to be sent."""
        with self._cond:
            return len(self._queue)

    def drop_through(self, seq: int) -> None:
        """Forget queued events up to *seq* (the server has them already)."""
        with self._cond:
            while self._queue and self._queue.items[0].seq <= seq:
                self._queue.popleft()

    def count_drop(self) -> None:
        """Count one dropped event (logged on the 1st and every Nth)."""
        self._count_drops(1)

    def _count_drops(self, n: int) -> None:
        for _ in range(n):
            self.dropped += 1
            if sampled(self.dropped, self.DROP_LOG_EVERY):
                self.log.warning(
                    f"pulse {self.label} queue full; dropping the oldest events",
                    training_id=self.training_id,
                    dropped=self.dropped,
                    limit=self.queue_limit,
                )

    # -- the sender thread -------------------------------------------------------

    def _attempt(self) -> bool:
        """One connection attempt; on failure, schedule the next by the backoff."""
        self.attempts += 1
        try:
            self.connect()
        except self.failures_are as exc:
            if self.retry.failures == 0:
                self.describe_down(exc)
            self.retry.failed(time.monotonic(), random.random())  # noqa: S311 - jitter
            return False
        self.connects += 1
        failures = self.retry.succeeded()
        if failures:
            self.log.info(
                f"pulse {self.label} reachable again; sending queued events",
                training_id=self.training_id,
                attempts=failures,
                queued=self.queued(),
            )
        return True

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the reporter thread must never take training down
            self.log.exception(f"pulse {self.label} thread failed", training_id=self.training_id)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _wait_for_retry(self) -> None:
        """Sleep until the backoff allows the next attempt; new events do not cut it short."""
        with self._cond:
            while not self._closing:
                left = self.retry.wait(time.monotonic())
                if left <= 0:
                    return
                self._cond.wait(left)

    def _loop(self) -> None:
        cond = self._cond
        while True:
            if not self.connected:
                with cond:
                    closing, empty = self._closing, not self._queue
                if closing and (empty or time.monotonic() >= self._deadline):
                    return
                self._wait_for_retry()
                if not self._attempt():
                    if self._closing:
                        return  # one last try at close, no waiting on a server that is down
                    continue
            with cond:
                if not self._queue and not self._closing:
                    cond.wait(IDLE_WAIT)
                batch = self._queue.take(BATCH)
                closing = self._closing
                self._busy = bool(batch)
            try:
                self.poll()
                if batch:
                    self.send(batch)
            except self.failures_are as exc:
                with cond:
                    self._count_drops(len(self._queue.requeue(batch)))
                    self._busy = False
                self.disconnect()
                if self.retry.failures == 0:
                    self.describe_down(exc)
                self.retry.failed(time.monotonic(), random.random())  # noqa: S311 - jitter
                continue
            with cond:
                self._busy = False
                cond.notify_all()
                if closing and (not self._queue or time.monotonic() >= self._deadline):
                    return
