"""The hub's bridge: NATS events into a hub's bus, as a producer's would be.

This module owns :class:`NatsFeed`, which ``pulse nats serve`` (and any hub
given it) runs to show every run NATS holds. Must not be imported by
:mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING, Final

import attrs

from pulse_core._log import get_logger
from pulse_core.events import Event
from pulse_core.policy import CONNECT_BACKOFF, sampled
from pulse_core.reducer import Folder
from pulse_transports._mailbox import KEEP_ENDED as _BUS_KEEP_ENDED
from pulse_transports.nats._connection import NatsOptions, connect, explain
from pulse_transports.nats._reader import StreamReader
from pulse_transports.nats._store import StoreConfig, ensure_store
from pulse_transports.nats._subject import run_filter

if TYPE_CHECKING:
    from pulse_transports.inprocess import Bus

log = get_logger("pulse.nats")


# -- names and defaults (specs/nats.md says why each default is what it is) ------

#: Seconds an ended run stays in a hub fed from NATS: as long as the bus keeps it.
KEEP_ENDED: Final = _BUS_KEEP_ENDED


def _default_store(store: StoreConfig | None) -> StoreConfig:
    return store or StoreConfig()


@attrs.define(eq=False, repr=False)
class NatsFeed:
    """Feeds a hub's bus from NATS: every run's events, as its producers would.

    Called by the hub with its :class:`~pulse_transports.inprocess.Bus`, it
    reads the stream's latest message per subject (each run's current state:
    its kept events and latest values), publishes the runs that are live or
    ended within ``keep_ended`` seconds, then follows ``pulse.v2.>`` live.
    The bus drops what it already has by seq, so events that also reach the
    hub over its socket are delivered once. A lost connection is retried
    for ever with backoff; the hub cancels the feed when it closes.

    Args:
        options: the connection.
        store: the stream and bucket (and their limits, if it makes them).
        keep_ended: seconds after its end a run is still loaded.
        create: make the stream and bucket when missing (as sinks do).
    """

    options: NatsOptions
    store: StoreConfig = attrs.field(default=None, converter=_default_store)
    keep_ended: float = attrs.field(default=KEEP_ENDED, kw_only=True)
    create: bool = attrs.field(default=True, kw_only=True)
    forwarded: int = attrs.field(default=0, init=False)
    failures: int = attrs.field(default=0, init=False)
    #: set once the current state of every run was handed to the bus.
    caught_up: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)

    def __repr__(self) -> str:
        return f"NatsFeed({self.options.shown!r}, stream={self.store.stream!r})"

    async def __call__(self, bus: Bus) -> None:
        """Feed *bus* until cancelled."""
        streak = 0
        while True:
            try:
                await self._feed(bus)
                streak = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; the feed goes on
                self.failures += 1
                streak += 1
                if streak == 1 or sampled(self.failures, 100):
                    log.warning(
                        "pulse hub cannot read NATS; retrying",
                        server=self.options.shown,
                        error=str(explain(exc, self.options))[:300],
                    )
            await asyncio.sleep(CONNECT_BACKOFF.delay(max(streak, 1), random.random()))  # noqa: S311

    async def _feed(self, bus: Bus) -> None:
        nc = await connect(self.options, reconnect=True)
        reader: StreamReader | None = None
        try:
            js = nc.jetstream(timeout=max(2.0, self.options.connect_timeout))
            if self.create:
                await ensure_store(js, self.store)
            reader = StreamReader(js, self.store.stream, run_filter(), policy="last_per_subject")
            await reader.open()
            log.info(
                "pulse hub reading NATS", server=self.options.shown, behind=reader.initial_pending
            )
            runs: dict[str, list[Event]] = {}
            async for delivery in reader.catch_up(timeout=10.0):
                if delivery.event is not None:
                    runs.setdefault(delivery.event.training_id, []).append(delivery.event)
            now = time.time()
            for events in runs.values():
                folder = Folder()
                for event in events:
                    folder.apply(event)
                ended = folder.state.finished_at
                if ended is not None and now - ended > self.keep_ended:
                    continue
                for event in events:
                    if bus.publish(event):
                        self.forwarded += 1
            self.caught_up.set()
            while True:
                live = await reader.next(timeout=None)
                if live is not None and live.event is not None and bus.publish(live.event):
                    self.forwarded += 1
        finally:
            if reader is not None:
                await reader.close()
            with contextlib.suppress(Exception):
                await nc.close()
