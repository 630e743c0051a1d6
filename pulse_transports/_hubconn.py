"""One hub connection, and the handshake every connection goes through.

Private to :mod:`pulse_transports.hub`: :class:`Conn` (an accepted
connection: its peer, role and run, and a close that flushes within a
grace), and :class:`HubConnections`, the part of the hub that reads lines
under the frame limit, checks the hello and its token, and refuses a
connection with an ``error`` line. Must not be imported by :mod:`pulse_core`.

Lines are framed here, not by the stream reader, so that what a connection
may make the hub hold is bounded: a line is refused as soon as it passes the
frame limit (newline included), a line once begun must end within the line
timeout, and past the hub's budget of bytes held in unfinished lines, a
connection holding a large one is refused (``overloaded``).

Connections that may be hostile -- before their hello, or in the middle of
a long line -- are served at a lower priority than established ones: each
of their reads waits its turn in a :class:`Lane`, which lets a few through
per event-loop iteration, and listeners accept a few connections per
iteration (:func:`listen_wide`). A flood of such connections then makes
its own work slower, not an established subscriber's: what a loop iteration
runs stays bounded, so a subscriber's line waits at most about one.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hmac
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

from pulse_core._log import get_logger
from pulse_transports._hubsettings import HubSettings
from pulse_transports.inprocess import Bus
from pulse_transports.wire import HandshakeError, Hello, error_line, parse_hello

log = get_logger("pulse.hub")

T = TypeVar("T")

#: Seconds a closing connection may take to flush before it is cut: long
#: enough for a paused subscriber to still read its ``resync`` line.
_GRACE: Final = 10.0
#: Bytes read from a connection at a time.
CHUNK: Final = 16 * 1024
#: An unfinished line at most this long is never refused for the hub's budget;
#: past it, the connection's reads go through the :class:`Lane`.
_SMALL_LINE: Final = CHUNK
#: Connections accepted per listener per event-loop iteration; the kernel's
#: queue of connections waiting to be accepted stays :data:`BACKLOG` long.
ACCEPT_BATCH: Final = 8
BACKLOG: Final = 4096
#: Reads of low-priority connections let through per event-loop iteration.
LANE_PER_TICK: Final = 8


def listen_wide(sock: socket.socket | Any, backlog: int = BACKLOG) -> None:
    """Give a listening socket a kernel queue of *backlog*.

    asyncio accepts at most its ``backlog`` argument per iteration, so a
    server is started with :data:`ACCEPT_BATCH` and its queue widened here.
    *sock* may be asyncio's wrapper of the socket (a dup of it is used).
    """
    with socket.socket(fileno=os.dup(sock.fileno())) as dup:
        dup.listen(backlog)


class Lane:
    """Turns for low-priority work: at most *per_tick* per event-loop iteration.

    ``await lane.turn()`` returns at once while the iteration's turns last and
    nobody waits; otherwise the caller queues and is let through, first come
    first served, in a later iteration. A connection waiting here does not
    consume its stream, so its transport stops reading and the selector stops
    reporting it: thousands of such connections cost an iteration no more
    than *per_tick* reads.
    """

    def __init__(self, per_tick: int = LANE_PER_TICK) -> None:
        self.per_tick = per_tick
        self.waited = 0  # turns that had to wait (for statistics)
        self._given = 0
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ticking = False

    async def turn(self, transport: asyncio.BaseTransport | None = None) -> None:
        """Wait for a turn; *transport* (a reading one) stops reading meanwhile."""
        if not self._waiting and self._given < self.per_tick:
            self._given += 1
            self._tick_soon()
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self.waited += 1
        self._tick_soon()
        # Paused here only if reading: a transport its stream paused is left to the stream.
        paused = isinstance(transport, asyncio.ReadTransport) and transport.is_reading()
        if paused:
            transport.pause_reading()  # type: ignore[union-attr]
        try:
            await future  # a cancelled waiter is skipped by _tick
        finally:
            if paused and not transport.is_closing():  # type: ignore[union-attr]
                transport.resume_reading()  # type: ignore[union-attr]

    def _tick_soon(self) -> None:
        if not self._ticking:
            self._ticking = True
            asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        """A new iteration: give this one's turns to the first waiters."""
        self._ticking = False
        self._given = 0
        waiting = self._waiting
        while waiting and self._given < self.per_tick:
            future = waiting.popleft()
            if not future.done():
                future.set_result(None)
                self._given += 1
        if self._given:
            self._tick_soon()


class Conn:
    """One accepted connection."""

    __slots__ = (
        "begun",
        "buffer",
        "kind",
        "peer",
        "rejected",
        "role",
        "task",
        "training_id",
        "writer",
    )

    def __init__(self, writer: asyncio.StreamWriter, kind: str) -> None:
        self.writer = writer
        self.kind = kind
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self.role: str | None = None
        self.training_id: str | None = None
        self.rejected = 0
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self.buffer = bytearray()  # received bytes not yet taken as lines
        self.begun = 0.0  # when the unfinished line in the buffer began (monotonic)

    @property
    def logged(self) -> dict[str, str | None]:
        """The connection as the hub's log lines name it: peer, listener, role and run."""
        return {
            "peer": self.peer,
            "via": self.kind,
            "role": self.role,
            "training_id": self.training_id,
        }

    def send(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def close(self) -> None:
        """Close after flushing; cut it if the peer does not read within the grace."""
        transport = self.writer.transport
        if transport.is_closing():
            return
        transport.close()
        if transport.get_write_buffer_size():
            asyncio.get_running_loop().call_later(_GRACE, transport.abort)


class HubConnections:
    """Line reading, handshake and refusals (a base of :class:`~pulse_transports.hub.Hub`)."""

    settings: HubSettings
    bus: Bus
    refused: int
    #: Low-priority reads (before the hello, inside a long line).
    lane: Lane
    #: Bytes held in every connection's buffer (unfinished lines, mostly).
    held: int
    #: The hub's own worker threads: a flood of web requests on the loop's
    #: default executor never delays a producer's welcome.
    _pool: ThreadPoolExecutor

    async def _blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking call in the hub's worker threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(func, *args))

    def _refuse(self, conn: Conn, code: str, message: str) -> None:
        """Send a fatal error line and close."""
        self.refused += 1
        log.warning("pulse hub refused a connection", code=code, reason=message, **conn.logged)
        conn.send(error_line(code, message))
        conn.close()

    async def _readline(self, conn: Conn, reader: asyncio.StreamReader) -> bytes | None:
        """The next whole line, or None if the connection is over (or refused).

        Refused: a line over the frame limit, a line not ended within the
        line timeout, a large unfinished line while the hub holds too much.
        """
        s = self.settings
        buffer = conn.buffer
        start = 0  # bytes of the buffer already searched for a newline
        while True:
            end = buffer.find(b"\n", start)
            if end >= 0:
                if end + 1 > s.max_frame:
                    self._too_large(conn)
                    return None
                line = bytes(memoryview(buffer)[: end + 1])
                del buffer[: end + 1]
                self.held -= end + 1
                conn.begun = time.monotonic()  # what is left is a line just begun
                return line
            start = len(buffer)  # search only what comes next: a long line costs O(n)
            if start >= s.max_frame:
                self._too_large(conn)
                return None
            if buffer:
                left = conn.begun + s.line_timeout - time.monotonic()
                try:
                    async with asyncio.timeout(max(left, 0.0)):
                        chunk = await reader.read(CHUNK)
                except TimeoutError:
                    self._refuse(
                        conn, "line_timeout", f"a line did not end within {s.line_timeout:g} s"
                    )
                    return None
            else:
                chunk = await reader.read(CHUNK)
                conn.begun = time.monotonic()
            if not chunk:
                if buffer:
                    log.info("pulse hub connection closed mid-line", **conn.logged)
                return None
            if conn.role is None or start > _SMALL_LINE:
                # not yet welcomed, or inside a long line: after the others
                await self.lane.turn(conn.writer.transport)
            buffer += chunk
            self.held += len(chunk)
            if self.held > s.max_held and len(buffer) > _SMALL_LINE:
                self._refuse(
                    conn,
                    "overloaded",
                    f"the hub holds over {s.max_held} bytes of unfinished lines",
                )
                return None

    def _too_large(self, conn: Conn) -> None:
        self._refuse(
            conn,
            "frame_too_large",
            f"a line is longer than the limit of {self.settings.max_frame} bytes",
        )

    def _release(self, conn: Conn) -> None:
        """Forget what a finished connection held."""
        self.held -= len(conn.buffer)
        conn.buffer = bytearray()

    async def _handshake(self, conn: Conn, reader: asyncio.StreamReader) -> Hello | None:
        s = self.settings

        async def first_line() -> bytes | None:
            # Blank lines are ignored everywhere (hub-protocol.md section 1),
            # before the hello too; the timeout covers them all.
            while True:
                line = await self._readline(conn, reader)
                if line is None or line.strip():
                    return line

        try:
            line = await asyncio.wait_for(first_line(), s.handshake_timeout)
        except TimeoutError:
            self._refuse(
                conn, "handshake_timeout", f"no hello line within {s.handshake_timeout:g} s"
            )
            return None
        if line is None:
            return None
        try:
            hello = parse_hello(line)
        except HandshakeError as exc:
            self._refuse(conn, exc.code, exc.message)
            return None
        conn.role, conn.training_id = hello.role, hello.training_id
        if s.token and conn.kind == "tcp":
            given = (hello.token or "").encode()
            if not hmac.compare_digest(given, s.token.encode()):
                why = "the token is wrong" if hello.token else "this hub needs a token"
                self._refuse(conn, "unauthorized", why)
                return None
        return hello
