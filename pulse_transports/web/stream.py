"""The ``/events`` server-sent-events stream: the hub's subscriber protocol over HTTP.

This module owns one browser's stream (:class:`EventStream`) and the SSE
framing. It is a hub subscription (:meth:`pulse_transports.inprocess.Bus.stream`)
-- the same catch-up, per-subscriber rate limit, seq order, never-dropped
status/error events and slow-subscriber bound as a socket subscriber
(specs/hub-protocol.md, section 4) -- written as SSE messages:

* Each message's ``data`` is one JSON array of *items*, everything the
  subscription had due at that moment. An item is an event (an object with a
  ``type``, encoded as in the run's log) or an object with exactly one key:
  ``hello`` (first message only), ``snapshot`` (``{training_id: v2 view}``),
  ``live`` (the catch-up is over), ``liveness`` (``{"runs": {training_id:
  liveness}}``: what changed since the stream last said) or ``resync`` (the
  client fell behind; the stream ends and the client reconnects).
* A message after which the cursor's text differs from the last one sent
  carries ``id:`` = that text (:mod:`pulse_transports.web.cursor`): a quiet
  mark (runs ended or lost and silent since are held whole) and the highest
  seq the client holds of every other run it holds. A browser sends it back
  as ``Last-Event-ID`` when it reconnects (or a page passes it as
  ``?last_event_id=``), and the stream resumes from it: every run named gets
  exactly the events after its seq that the run's log or the bus's memory
  holds (both are read and merged, each seq once, in order), runs older than
  the quiet mark nothing, other runs a snapshot. So a reconnect -- after a
  dropped connection, a resync or a hub restart -- loses nothing that was
  logged and repeats nothing (specs/sse.md, "Resuming"), and the id grows
  with the runs running now, not with every run ever carried.
* ``retry:`` asks the browser to reconnect after ``retry_ms``; a comment line
  every ``keepalive`` seconds keeps idle connections open.

Backpressure: at most two batches (256 items and 1 MiB each) wait between the
bus and the socket; beyond that items wait in the subscription's mailbox,
bounded in items and bytes as a socket subscriber's is, which coalesces and
finally drops a client that does not read: the bus tells it to resync (its
last item), a warning is logged, and if the stream has not ended
:data:`DROP_GRACE` seconds later (the client does not read even that) the
connection is cut.
Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import orjson

from pulse_core._log import get_logger
from pulse_core.errors import PulseError
from pulse_core.events import STATUSES, Event
from pulse_core.lifecycle import allowed_targets
from pulse_core.liveness import LOST, Liveness, liveness_of
from pulse_core.projections import to_view
from pulse_core.state import RunState
from pulse_transports.file import log_path
from pulse_transports.follow import read_events
from pulse_transports.history import load_run
from pulse_transports.inprocess import (
    AsyncSubscription,
    Bus,
    EncodedEvents,
    Item,
    StateSnapshot,
)
from pulse_transports.web.cursor import Cursor, format_cursor
from pulse_transports.web.monitor import LivenessMonitor
from pulse_transports.wire import Live, Resync

log = get_logger("pulse.web")

#: The stream's own protocol name and version, in its hello.
SSE_PROTOCOL: Final = "pulse-sse/1"
#: Seconds a dropped client has to read its ``resync`` before its connection is cut.
DROP_GRACE: Final = 10.0
#: Seconds a run must have been silent (after it ended or was lost) before
#: the cursor stops naming it and the quiet mark covers it instead.
QUIET_AFTER: Final = 10.0
#: Legal status moves, for clients that fold events themselves (from pulse_core.lifecycle).
TRANSITIONS: Final[Mapping[str, list[str]]] = {s: allowed_targets(s) for s in STATUSES}


def cut(connections: Collection[Any], client: Any) -> None:
    """Cut the HTTP connection of *client* (``(host, port)``) at once, unsent data and all.

    *connections* are the server's open ones (uvicorn protocol objects, each
    with ``client`` and ``transport``).
    """
    for conn in list(connections):
        if client is not None and tuple(getattr(conn, "client", ()) or ()) == tuple(client):
            conn.transport.abort()


def sse_message(data: bytes, event_id: str | None = None) -> bytes:
    """One SSE message: an optional ``id`` line and one ``data`` line (no newlines in it)."""
    head = b"id: " + event_id.encode() + b"\n" if event_id is not None else b""
    return head + b"data: " + data + b"\n\n"


@attrs.define(eq=False, repr=False, kw_only=True)
class EventStream:
    """One client's ``/events`` stream.

    Args:
        bus: the hub's bus.
        monitor: the liveness monitor (its changes are pushed as ``liveness`` items).
        home: the PULSE home (logs of runs to resume that the bus no longer covers).
        encoded: the shared event encoder.
        scope: only this run (None: every run).
        interval: this client's rate limit: least seconds between two values
            of one stream (progress, metrics, heartbeat) of a run.
        resume: the client's cursor.
        retry_ms: the reconnect delay asked of the browser.
        keepalive: seconds of silence after which a comment line is sent.
        quiet_after: seconds a run ended or lost must have been silent before
            the cursor's quiet mark covers it instead of naming it.
        abort: cuts the client's connection (a client dropped for falling
            behind that did not read its resync within *drop_grace*).
        peer: the client's address, for log lines.
    """

    bus: Bus
    monitor: LivenessMonitor
    home: Path
    encoded: EncodedEvents
    scope: str | None
    interval: float
    _asked: Cursor = attrs.field(alias="resume")
    retry_ms: int = 1000
    keepalive: float = 15.0
    quiet_after: float = QUIET_AFTER
    abort: Callable[[], object] | None = None
    drop_grace: float = DROP_GRACE
    peer: str = "?"
    #: run -> the seq the client resumes after (set from the cursor, below).
    resume: dict[str, int] = attrs.field(init=False)
    #: the runs the cursor named and that are resumed (the hello lists them).
    named: list[str] = attrs.field(init=False)
    #: what the client holds: highest seq per run (what the SSE id is made of).
    cursor: dict[str, int] = attrs.field(factory=dict, init=False)
    #: the id last sent (a message carries one only when it differs).
    _last_id: str | None = attrs.field(default=None, init=False)
    #: the liveness the client was last told, per run.
    told: dict[str, Liveness] = attrs.field(factory=dict, init=False)
    _pending: list[list[Item]] = attrs.field(factory=list, init=False)
    _wake: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _room: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    #: set after the catch-up: every run's liveness once
    _liveness_due: bool = attrs.field(default=False, init=False)
    #: liveness of resumed runs the bus does not hold (read from their logs).
    _offline: dict[str, Liveness] = attrs.field(factory=dict, init=False)
    _closed: bool = attrs.field(default=False, init=False)
    _ended: bool = attrs.field(default=False, init=False)
    #: True once the bus dropped this client for falling behind.
    dropped: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        bus, scope, asked = self.bus, self.scope, self._asked
        self.resume = {
            t: s
            for t, s in asked.seqs.items()
            # A cursor ahead of what the hub holds is no resume: a snapshot instead.
            if (scope is None or t == scope) and s <= (bus.last_seq(t) or s)
        }
        self.named = sorted(self.resume)
        if asked.quiet is not None:
            # Runs silent since before the quiet mark and not named: held whole.
            for tid, state in bus.states().items():
                at = state.last_event_at
                wanted = (scope is None or tid == scope) and tid not in asked.seqs
                if wanted and at is not None and at <= asked.quiet:
                    self.resume[tid] = state.last_seq

    def close(self) -> None:
        """End the stream soon (the hub is closing)."""
        self._closed = True
        self._wake.set()

    def _liveness_changed(self) -> None:
        self._liveness_due = True
        self._wake.set()

    async def _subscribe(self) -> AsyncSubscription:
        """Attach to the bus, with the logs of runs to resume that memory no longer covers."""
        history: dict[str, list[Event]] = {}
        for tid, after in self.resume.items():
            newest = self.bus.last_seq(tid)
            # The log is read whenever there is anything to catch up: the hub's
            # memory may reach back far enough and still lack events (a
            # producer's reconnect queue coalesces progress and metrics; a
            # restarted hub holds what came after it started), and resuming
            # promises every event after the cursor that the log holds.
            if newest is None or newest > after:
                past = await asyncio.to_thread(read_events, log_path(self.home, tid), tid, after)
                if past is not None:
                    history[tid] = past
                    if self.bus.last_seq(tid) is None:
                        self._offline[tid] = await asyncio.to_thread(self._log_liveness, tid)
        sub = self.bus.stream(
            training_id=self.scope,
            interval=self.interval,
            resume=self.resume,
            history=history,
            marker=True,
        )
        sub.on_drop = self._on_drop
        held = self.bus.states()
        for tid, after in self.resume.items():
            if tid in held or tid in history:
                self.cursor[tid] = after
        return sub

    def _on_drop(self) -> None:
        """The bus dropped this client (too slow): say so, cut it if it stays stuck."""
        self.dropped = True
        log.warning(
            "pulse /events client too slow; told to resync and dropped",
            peer=self.peer,
            grace=self.drop_grace,
        )
        asyncio.get_running_loop().call_later(self.drop_grace, self._cut)

    def _cut(self) -> None:
        if not self._ended and self.abort is not None:
            log.warning(
                "pulse /events client did not read its resync; connection closed", peer=self.peer
            )
            self.abort()

    def _log_liveness(self, training_id: str) -> Liveness:
        """The liveness of a run the bus does not hold, from its log (blocking)."""
        try:
            record = load_run(
                self.home,
                training_id,
                stale_after=self.monitor.stale_after,
                lost_after=self.monitor.lost_after,
            )
        except PulseError:
            return LOST
        return record.liveness

    async def _pump(self, sub: AsyncSubscription) -> None:
        """Move due items from the subscription to the stream, two batches ahead at most."""
        self._room.set()
        while True:
            await self._room.wait()
            self._room.clear()
            items = await sub.batch()
            self._pending.append(items)
            self._wake.set()
            if not items or isinstance(items[-1], Resync):
                return

    def _hello(self) -> dict[str, Any]:
        return {
            "hello": {
                "protocol": SSE_PROTOCOL,
                "scope": self.scope,
                "rate": 1.0 / self.interval,
                "resumed": self.named,
                "time": time.time(),
                "stale_after": self.monitor.stale_after,
                "lost_after": self.monitor.lost_after,
                "transitions": TRANSITIONS,
            }
        }

    def _item(self, item: Item, parts: list[bytes]) -> bool:
        """Append an item's JSON to *parts*, note it in the cursor; True if it ends the stream."""
        if isinstance(item, Event):
            parts.append(self.encoded(item)[:-1])  # the line without its newline
            tid = item.training_id
            if item.seq > self.cursor.get(tid, 0):
                self.cursor[tid] = item.seq
            return False
        if isinstance(item, StateSnapshot):
            tid = item.training_id
            now = time.time()
            live = self.monitor.liveness.get(tid) or liveness_of(
                item.state,
                now=now,
                stale_after=self.monitor.stale_after,
                lost_after=self.monitor.lost_after,
            )
            view = to_view(item.state, now=now, liveness=live)
            parts.append(orjson.dumps({"snapshot": {tid: view}}))
            self.cursor[tid] = max(self.cursor.get(tid, 0), item.state.last_seq)
            self.told[tid] = view["liveness"]
            return False
        if isinstance(item, Live):
            # The catch-up is over: tell every run's liveness now, after the
            # events it replayed (an old event does not make a lost run alive).
            self.told.clear()
            self._liveness_due = True
            parts.append(orjson.dumps({"live": {"runs": list(item.runs), "time": item.time}}))
            return False
        if isinstance(item, Resync):
            parts.append(
                orjson.dumps({"resync": {"reason": item.reason, "buffered": item.buffered}})
            )
            return True
        return False

    def _next_id(self) -> str | None:
        """The cursor's text if it changed since the last id sent, else None.

        Runs the bus no longer holds are forgotten (the client keeps them;
        a resume has nothing to send for them). A run that ended or was
        lost, whose every event the client holds and that has been silent
        since the quiet mark, is covered by the mark instead of being named;
        a run in scope the client does not hold (yet: its snapshot is still
        on its way during the catch-up) pulls the mark below its last event.
        """
        states = self.bus.states()
        for gone in self.cursor.keys() - states.keys():
            del self.cursor[gone]
            self.told.pop(gone, None)
            self._offline.pop(gone, None)
        quiet = int(time.time() - self.quiet_after)
        for tid, state in states.items():
            at = state.last_event_at
            if at is not None and tid not in self.cursor and self._wants(tid):
                quiet = min(quiet, int(at) - 1)  # not held: never claim it
        named = {
            tid: seq
            for tid, seq in self.cursor.items()
            if not self._settled(tid, states[tid], seq, quiet)
        }
        text = format_cursor(named, quiet)
        if text == self._last_id:
            return None
        self._last_id = text
        return text

    def _wants(self, training_id: str) -> bool:
        return self.scope is None or self.scope == training_id

    def _settled(self, training_id: str, state: RunState, held: int, quiet: int) -> bool:
        """True if the quiet mark may stand for a run the client holds to seq *held*."""
        at = state.last_event_at
        if at is None or at > quiet or held < state.last_seq:
            return False
        return state.is_terminal or self.monitor.liveness.get(training_id) == LOST

    def _liveness_item(self) -> bytes | None:
        """The liveness changes of runs the client holds, or None."""
        changed: dict[str, Liveness] = {}
        for tid, value in (self._offline | self.monitor.liveness).items():
            if tid in self.cursor and self.told.get(tid) != value:
                changed[tid] = value
                self.told[tid] = value
        if not changed:
            return None
        return orjson.dumps({"liveness": {"runs": changed, "time": time.time()}})

    async def body(self) -> AsyncIterator[bytes]:
        """The response body: SSE messages until the client leaves or the hub closes."""
        sub = await self._subscribe()
        unlisten = self.monitor.listen(self._liveness_changed)
        pump = asyncio.get_running_loop().create_task(self._pump(sub))
        try:
            yield f"retry: {self.retry_ms}\n\n".encode() + sse_message(
                orjson.dumps([self._hello()])
            )
            while True:
                if not self._wake.is_set():
                    try:
                        async with asyncio.timeout(self.keepalive):
                            await self._wake.wait()
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                self._wake.clear()
                batches, self._pending = self._pending, []
                if batches:
                    self._room.set()
                elif self._closed:
                    return
                parts: list[bytes] = []
                ended = False
                for items in batches:
                    if not items:
                        ended = True
                    for item in items:
                        ended = self._item(item, parts) or ended
                if self._liveness_due:
                    self._liveness_due = False
                    liveness = self._liveness_item()
                    if liveness is not None:
                        parts.append(liveness)
                if parts:
                    data = b"[" + b",".join(parts) + b"]"
                    yield sse_message(data, self._next_id())
                if ended or self._closed:
                    return  # closing: what was taken went out; the cursor resumes the rest
        finally:
            self._ended = True
            unlisten()
            pump.cancel()
            sub.close()
