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
"""

from __future__ import annotations

import asyncio
import functools
import hmac
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
#: An unfinished line at most this long is never refused for the hub's budget.
_SMALL_LINE: Final = CHUNK


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
        log.warning(
            "pulse hub refused a connection",
            code=code,
            reason=message,
            peer=conn.peer,
            via=conn.kind,
            role=conn.role,
            training_id=conn.training_id,
        )
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
                    chunk = await asyncio.wait_for(reader.read(CHUNK), max(left, 0.0))
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
                    log.info("pulse hub connection closed mid-line", peer=conn.peer, role=conn.role)
                return None
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
