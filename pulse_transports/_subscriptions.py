"""The in-process bus's per-run record and its two kinds of subscription.

Private to :mod:`pulse_transports.inprocess`: ``_Run`` (a run's folder and
its recent events, bounded in count and bytes), and the callback and asyncio subscriptions a
:class:`~pulse_transports.inprocess.Bus` hands out (the latter re-exported
there as :class:`AsyncSubscription`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from pulse_core._log import get_logger
from pulse_core.closing import AsyncClosesOnExit, ClosesOnExit
from pulse_core.events import (
    Event,
)
from pulse_core.policy import sampled
from pulse_core.reducer import Folder
from pulse_transports._mailbox import BATCH, BATCH_BYTES, Item, Mailbox, item_size
from pulse_transports.wire import Resync

if TYPE_CHECKING:
    from pulse_transports.inprocess import Bus

log = get_logger("pulse.inprocess")


class _Run:
    """One run on the bus: its folded state and its most recent events (bounded)."""

    __slots__ = ("ended_at", "folder", "known_from", "nbytes", "recent", "sizes", "touched")

    def __init__(self, now: float) -> None:
        self.folder = Folder()
        self.recent: deque[Event] = deque()
        self.sizes: deque[int] = deque()  # item_size of each recent event
        self.nbytes = 0
        self.known_from = 1  # the bus has every event of the run from this seq on
        self.ended_at: float | None = None
        self.touched = now

    def keep(self, event: Event, count: int, max_bytes: int) -> int:
        """Add *event* to the recent ones, within *count* events and *max_bytes*.

        Returns:
            How many bytes the recent events grew by (negative if they shrank).
        """
        before = self.nbytes
        size = item_size(event)
        self.recent.append(event)
        self.sizes.append(size)
        self.nbytes += size
        while len(self.recent) > count or (self.nbytes > max_bytes and len(self.recent) > 1):
            self.drop_oldest()
        return self.nbytes - before

    def drop_oldest(self) -> int:
        """Forget the oldest recent event; returns its size."""
        event = self.recent.popleft()
        size = self.sizes.popleft()
        self.nbytes -= size
        self.known_from = event.seq + 1
        return size

    def reaches(self, after: int) -> bool:
        """True if the recent events hold everything after seq *after*."""
        return self.folder.last_seq <= after or self.known_from <= after + 1


class _Subscription:
    """What the bus needs of a subscription."""

    def __init__(self, bus: Bus, mailbox: Mailbox) -> None:
        self.bus = bus
        self.mailbox = mailbox
        self.closed = False
        #: called once when the bus drops this subscriber (it fell behind its
        #: bound; a Resync is its last item): its owner closes the connection.
        self.on_drop: Callable[[], object] | None = None

    def wake(self) -> None:
        raise NotImplementedError

    def dropped(self) -> None:
        """The bus detached this subscriber for falling behind: tell its owner."""
        if self.on_drop is not None:
            try:
                self.on_drop()
            except Exception:  # the owner's failure must never break the publisher
                log.exception("pulse subscriber drop handler failed")

    def close(self) -> None:
        """Stop receiving; idempotent."""
        if not self.closed:
            self.closed = True
            self.bus._detach(self)
            self.wake()


class CallbackSubscription(_Subscription, ClosesOnExit):
    """A subscription whose items are passed to a function as they are due."""

    def __init__(self, bus: Bus, mailbox: Mailbox, callback: Callable[[Item], object]) -> None:
        super().__init__(bus, mailbox)
        self.callback = callback
        self.failures = 0
        self._deliver_lock = threading.RLock()

    def wake(self) -> None:
        self.deliver()

    def deliver(self) -> None:
        """Call the callback with every item due now (never raises)."""
        if self.closed:
            return
        with self._deliver_lock:
            with self.bus._lock:
                items = self.mailbox.take(self.bus._clock())
                due = self.mailbox.next_due()
            if due is not None:
                self.bus._timer.wake()
            for item in items:
                try:
                    self.callback(item)
                except Exception:  # a subscriber must never break the publisher
                    self.failures += 1
                    if sampled(self.failures, 1000):
                        log.exception("pulse bus callback failed", failures=self.failures)


class AsyncSubscription(AsyncClosesOnExit, _Subscription):
    """A subscription read with ``async for`` (or :meth:`batch`) in one event loop."""

    def __init__(self, bus: Bus, mailbox: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(bus, mailbox)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._signalled = False
        self._items: deque[Item] = deque()

    def dropped(self) -> None:
        """Tell the owner in the subscription's own event loop."""
        if threading.get_ident() == self._loop_thread:
            super().dropped()
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody reads any more
            self._loop.call_soon_threadsafe(super().dropped)

    def wake(self) -> None:
        if self._signalled:
            return
        self._signalled = True
        if threading.get_ident() == self._loop_thread:
            self._wake.set()
            return
        try:
            self._loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            self.closed = True
            self.bus._detach(self)

    async def batch(self, limit: int = BATCH, max_bytes: int = BATCH_BYTES) -> list[Item]:
        """Wait for the next items due (at most *limit*, and *max_bytes* beyond the first).

        Returns [] once closed.
        """
        bus = self.bus
        while True:
            self._wake.clear()
            self._signalled = False
            with bus._lock:
                items = self.mailbox.take(bus._clock(), limit, max_bytes)
                due = self.mailbox.next_due()
            if items:
                if isinstance(items[-1], Resync):
                    self.close()
                return items
            if self.closed:
                return []
            handle = None
            if due is not None:
                handle = self._loop.call_later(max(0.0, due - bus._clock()), self._wake.set)
            try:
                await self._wake.wait()
            finally:
                if handle is not None:
                    handle.cancel()

    def __aiter__(self) -> AsyncIterator[Item]:
        return self

    async def __anext__(self) -> Item:
        if not self._items:
            self._items.extend(await self.batch())
            if not self._items:
                raise StopAsyncIteration
        return self._items.popleft()

    async def aclose(self) -> None:
        """Stop receiving (what ``async with`` calls on the way out)."""
        self.close()


class _Timer:
    """The thread that delivers trailing values to a bus's callback subscribers."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition(threading.Lock())
        self._dirty = False
        self._closed = False

    def start(self) -> None:
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="pulse-bus", daemon=True)
                self._thread.start()

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _run(self) -> None:
        cond, bus = self._cond, self.bus
        while True:
            with cond:
                self._dirty = False
            due = bus._next_due()
            with cond:
                if self._closed:
                    return
                # A value held after _next_due() looked sets the dirty flag:
                # look again instead of sleeping past its deadline.
                if not self._dirty:
                    wait = None if due is None else max(0.0, due - bus._clock())
                    if wait is None or wait > 0:
                        cond.wait(wait)
            try:
                bus.tick()
            except Exception:  # the timer thread must never die
                log.exception("pulse bus timer failed")
