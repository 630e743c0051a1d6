"""The in-process bus's per-run record and its two kinds of subscription.

Private to :mod:`pulse_transports.inprocess`: ``_Run`` (a run's folder and
ring of recent events), and the callback and asyncio subscriptions a
:class:`~pulse_transports.inprocess.Bus` hands out (the latter re-exported
there as :class:`AsyncSubscription`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from pulse_core._log import get_logger
from pulse_core.closing import ClosesOnExit
from pulse_core.events import (
    Event,
)
from pulse_core.policy import sampled
from pulse_core.reducer import Folder
from pulse_transports._mailbox import Item, Mailbox
from pulse_transports.wire import Resync

if TYPE_CHECKING:
    from pulse_transports.inprocess import Bus

log = get_logger("pulse.inprocess")


class _Run:
    __slots__ = ("ended_at", "folder", "known_from", "recent", "touched")

    def __init__(self, recent: int, now: float) -> None:
        self.folder = Folder()
        self.recent: deque[Event] = deque(maxlen=recent)
        self.known_from = 1  # the bus has every event of the run from this seq on
        self.ended_at: float | None = None
        self.touched = now

    def reaches(self, after: int) -> bool:
        """True if the recent events hold everything after seq *after*."""
        if self.folder.last_seq <= after:
            return True
        recent = self.recent
        start = recent[0].seq if len(recent) == recent.maxlen else self.known_from
        return start <= after + 1


class _Subscription:
    """What the bus needs of a subscription."""

    def __init__(self, bus: Bus, mailbox: Mailbox) -> None:
        self.bus = bus
        self.mailbox = mailbox
        self.closed = False

    def wake(self) -> None:
        raise NotImplementedError

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
                self.bus._timer_wake()
            for item in items:
                try:
                    self.callback(item)
                except Exception:  # a subscriber must never break the publisher
                    self.failures += 1
                    if sampled(self.failures, 1000):
                        log.exception("pulse bus callback failed", failures=self.failures)


class AsyncSubscription(_Subscription):
    """A subscription read with ``async for`` (or :meth:`batch`) in one event loop."""

    def __init__(self, bus: Bus, mailbox: Mailbox, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(bus, mailbox)
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._wake = asyncio.Event()
        self._signalled = False
        self._items: deque[Item] = deque()

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

    async def batch(self, limit: int = 256) -> list[Item]:
        """Wait for the next items due (at most *limit*); [] once closed."""
        bus = self.bus
        while True:
            self._wake.clear()
            self._signalled = False
            with bus._lock:
                items = self.mailbox.take(bus._clock(), limit)
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

    async def __aenter__(self) -> AsyncSubscription:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
