"""The hub's subscriber side: the bus's items written to a subscriber connection.

Private to :mod:`pulse_transports.hub`: :class:`HubSubscribers` welcomes a
subscriber (reading the run logs its resume cursors need), writes its
stream's items as lines in batches, notices it leaving, and encodes each
event once for all subscribers. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable

from pulse_core._log import get_logger
from pulse_core.events import Event
from pulse_core.projections import to_view
from pulse_transports._hubconn import Conn
from pulse_transports._hubliveness import HubLiveness
from pulse_transports.file import run_file
from pulse_transports.follow import read_events
from pulse_transports.inprocess import (
    AsyncSubscription,
    EncodedEvents,
    Item,
    StateSnapshot,
)
from pulse_transports.wire import (
    Hello,
    Live,
    Resync,
    live_line,
    resync_line,
    snapshot_line,
    welcome_line,
)

log = get_logger("pulse.hub")


class HubSubscribers(HubLiveness):
    """Subscriber connections (a base of :class:`~pulse_transports.hub.Hub`)."""

    _encoded: EncodedEvents

    async def _subscriber(self, conn: Conn, reader: asyncio.StreamReader, hello: Hello) -> None:
        scope = hello.training_id
        resume = {t: s for t, s in hello.resume.items() if scope is None or t == scope}
        # A cursor ahead of what the hub holds (another hub's, or a reused id's) is
        # no resume: that run gets a snapshot and every later event (section 4).
        resume = {t: s for t, s in resume.items() if s <= (self.bus.last_seq(t) or s)}
        history: dict[str, list[Event]] = {}
        for tid, after in resume.items():
            if not self.bus.covers(tid, after):
                path = run_file(self.settings.home, tid, ".jsonl")
                past = await self._blocking(read_events, path, tid, after)
                if past is not None:
                    history[tid] = past
        interval = self.bus.interval
        if hello.rate is not None:
            interval = max(interval, 1.0 / hello.rate)
        sub = self.bus.stream(
            training_id=scope, interval=interval, resume=resume, history=history, marker=True
        )
        conn.send(
            welcome_line(
                role="subscriber",
                training_id=scope,
                rate=1.0 / interval,
                max_frame=self.settings.max_frame,
                time=time.time(),
            )
        )
        log.info(
            "pulse subscriber connected", peer=conn.peer, training_id=scope, resume=len(resume)
        )
        watcher = asyncio.create_task(self._watch(conn, reader, sub.close))
        sub.on_drop = functools.partial(self._drop, conn, sub)
        writer = conn.writer
        try:
            while True:
                items = await sub.batch()
                if not items:
                    return
                writer.write(b"".join([self._line(item) for item in items]))
                if isinstance(items[-1], Resync):
                    log.warning("pulse subscriber dropped: too slow", peer=conn.peer)
                    return
                await writer.drain()
                del items  # not kept while waiting: the bus may have let go of them
        finally:
            watcher.cancel()
            sub.close()
            log.info("pulse subscriber disconnected", peer=conn.peer)

    def _drop(self, conn: Conn, sub: AsyncSubscription) -> None:
        """The bus dropped a subscriber that fell behind: send its resync and close it.

        Its task may be stuck waiting for the socket to drain: the resync is
        queued behind what the socket holds, and the connection is closed
        after it (cut if the peer does not read it within the grace).
        """
        with self.bus._lock:
            items = sub.mailbox.take(self.bus._clock())
        conn.writer.write(b"".join([self._line(item) for item in items]))
        sub.close()
        log.warning("pulse subscriber dropped: too slow; closing", peer=conn.peer)
        conn.close()

    async def _watch(
        self, conn: Conn, reader: asyncio.StreamReader, on_end: Callable[[], None]
    ) -> None:
        """Read (and ignore) what a subscriber sends, to notice it leaving."""
        try:
            while await self._readline(conn, reader) is not None:
                pass
        except (ConnectionError, OSError):
            pass
        finally:
            on_end()

    def _line(self, item: Item) -> bytes:
        if isinstance(item, StateSnapshot):
            known = self.liveness.get(item.training_id)
            live = known[0] if known is not None and not item.state.is_terminal else None
            view = to_view(item.state, now=time.time(), liveness=live)
            return snapshot_line(item.training_id, view, self.settings.max_frame)
        if isinstance(item, Live):
            return live_line(item.runs, item.time or time.time())
        if isinstance(item, Resync):
            return resync_line(item.reason, item.buffered)
        return self._encoded(item)  # every subscriber gets the same event: encoded once
