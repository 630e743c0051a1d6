"""One hub connection, and the handshake every connection goes through.

Private to :mod:`pulse_transports.hub`: :class:`Conn` (an accepted
connection: its peer, role and run, and a close that flushes within a
grace), and :class:`HubConnections`, the part of the hub that reads lines
under the frame limit, checks the hello and its token, and refuses a
connection with an ``error`` line. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any, Final

from pulse_core._log import get_logger
from pulse_transports._hubsettings import HubSettings
from pulse_transports.inprocess import Bus
from pulse_transports.wire import HandshakeError, Hello, error_line, parse_hello

log = get_logger("pulse.hub")

#: Seconds a closing connection may take to flush before it is cut: long
#: enough for a paused subscriber to still read its ``resync`` line.
_GRACE: Final = 10.0


class Conn:
    """One accepted connection."""

    __slots__ = ("kind", "peer", "rejected", "role", "task", "training_id", "writer")

    def __init__(self, writer: asyncio.StreamWriter, kind: str) -> None:
        self.writer = writer
        self.kind = kind
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "unix"
        self.role: str | None = None
        self.training_id: str | None = None
        self.rejected = 0
        self.task: asyncio.Task[Any] | None = asyncio.current_task()

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
        """The next whole line, or None if the connection is over (refused if too long)."""
        try:
            line = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            self._refuse(
                conn,
                "frame_too_large",
                f"a line is longer than the limit of {self.settings.max_frame} bytes",
            )
            return None
        if not line.endswith(b"\n"):
            if line:
                log.info("pulse hub connection closed mid-line", peer=conn.peer, role=conn.role)
            return None
        return line

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
