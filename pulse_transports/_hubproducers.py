"""The hub's producer side: a run's events read from its producer connection.

Private to :mod:`pulse_transports.hub`: :class:`HubProducers` welcomes a
producer (reading its run's log first if the hub does not hold the run),
publishes each of its lines to the bus, and answers a bad line with a
non-fatal ``error`` line. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Final

from pulse_core._log import get_logger
from pulse_core.codec import MAX_LINE_BYTES, bound_event, decode
from pulse_core.errors import DecodeError
from pulse_core.policy import BAD_LOG_EVERY, BAD_LOG_FIRST, sampled
from pulse_transports._hubconn import Conn
from pulse_transports._hubliveness import HubLiveness
from pulse_transports._hubowner import RunOwners, peer_pid, seq_refusal
from pulse_transports.file import run_file
from pulse_transports.follow import read_events
from pulse_transports.wire import Hello, error_line, welcome_line

log = get_logger("pulse.hub")

#: Error lines sent to one producer connection; later rejections are only counted.
_ERRORS_SENT: Final = 100
#: Producer lines longer than this are bounded (re-encoding may lengthen a line a little).
_BOUNDED: Final = MAX_LINE_BYTES // 2


class HubProducers(HubLiveness):
    """Producer connections (a base of :class:`~pulse_transports.hub.Hub`)."""

    _producers: dict[str, Conn]
    _owners: RunOwners
    _closing: bool

    async def _producer(self, conn: Conn, reader: asyncio.StreamReader, hello: Hello) -> None:
        tid = hello.training_id
        assert tid is not None  # parse_hello requires it of a producer
        pid = peer_pid(conn.writer.get_extra_info("socket"))
        refusal = self._owners.admit(self.settings.home, tid, pid)
        if refusal is not None:
            self._refuse(conn, "run_owned", refusal)
            return
        self._owners.took(tid, pid)
        old = self._producers.get(tid)
        if old is not None:
            log.warning("pulse hub: a new producer took over a run", training_id=tid, old=old.peer)
            old.send(error_line("superseded", f"a newer connection reports run {tid!r}"))
            old.close()
        self._producers[tid] = conn
        try:
            path = run_file(self.settings.home, tid, ".jsonl")
            # One stat on the loop spares a new run's welcome a thread hop.
            if self.bus.last_seq(tid) is None and os.path.exists(path):
                events = await self._blocking(read_events, path, tid)
                if events:
                    self.bus.seed(tid, events)
            conn.send(
                welcome_line(
                    role="producer",
                    training_id=tid,
                    last_seq=self.bus.last_seq(tid),
                    max_frame=self.settings.max_frame,
                    time=time.time(),
                )
            )
            log.info("pulse producer connected", training_id=tid, peer=conn.peer, via=conn.kind)
            await self._read_events(conn, reader, tid)
        finally:
            if self._producers.get(tid) is conn:
                del self._producers[tid]
                self._owners.left(tid)
                if not self._closing:
                    self._spawn_check(tid)
            log.info("pulse producer disconnected", training_id=tid, peer=conn.peer)

    async def _read_events(self, conn: Conn, reader: asyncio.StreamReader, tid: str) -> None:
        publish = self.bus.publish
        last_seq = self.bus.last_seq
        heard = self._owners.heard
        count = 0
        while True:
            line = await self._readline(conn, reader)
            if line is None:
                return
            heard(tid)
            if line.isspace():
                continue
            try:
                event = decode(line)
            except DecodeError as exc:
                self._reject(conn, "bad_event", str(exc))
                continue
            if len(line) > _BOUNDED:
                # Legal but long (another client than ours): bounded as the
                # emitter bounds events, so what the hub holds and sends fits.
                event = bound_event(event)
            if event.training_id != tid:
                self._reject(
                    conn,
                    "wrong_training_id",
                    f"this connection reports run {tid!r}; "
                    f"an event of run {event.training_id!r} was dropped",
                    seq=event.seq,
                )
                continue
            jump = seq_refusal(event.seq, last_seq(tid))
            if jump is not None:
                self._reject(conn, "seq_out_of_range", jump, seq=event.seq)
                continue
            publish(event)
            count += 1
            if count & 63 == 0:
                # A fast producer's buffered lines never need to wait for data,
                # so yield now and then: other connections get their turn.
                await asyncio.sleep(0)

    def _reject(self, conn: Conn, code: str, message: str, **extra: Any) -> None:
        """Drop one producer line: log it, and answer with a non-fatal error."""
        conn.rejected += 1
        n = conn.rejected
        if sampled(n, BAD_LOG_EVERY, first=BAD_LOG_FIRST):
            log.warning(
                "pulse hub dropped a producer line",
                code=code,
                reason=message,
                rejected=n,
                **conn.logged,
            )
        if n <= _ERRORS_SENT:
            conn.send(error_line(code, message, **extra))
