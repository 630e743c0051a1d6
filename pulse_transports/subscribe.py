"""Python clients of the hub: subscribe to live runs, blocking or with asyncio.

This module owns :class:`Subscriber` (blocking, for scripts and threads) and
:class:`AsyncSubscriber` (asyncio). Both send the subscriber hello, decode
what the hub sends into :mod:`pulse_transports.wire` messages and
:mod:`pulse_core.events` events, remember the last seq seen per run, and --
with ``reconnect=True`` -- reconnect after a lost connection or a
``resync``, resuming from those seqs so nothing is missed or repeated.
Every reconnection waits a backoff (never zero: a hub that drops a client
at once is not hammered), reset only by a connection that lasted. A line
longer than the frame limit is skipped with a warning, never a reason to
reconnect.

Usage::

    with Subscriber(home=".pulse") as sub:
        for message in sub:
            ...  # Snapshot, Live, events, Resync, HubError
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

from pulse_core._log import get_logger
from pulse_core.closing import AsyncClosesOnExit, ClosesOnExit
from pulse_core.errors import DecodeError, PulseError
from pulse_core.events import Event
from pulse_core.policy import Backoff
from pulse_transports._hubclient import handshake, hub_address
from pulse_transports.hubtoken import client_token
from pulse_transports.wire import (
    MAX_FRAME,
    FrameTooLarge,
    HubError,
    LineReader,
    Live,
    Message,
    Resync,
    Snapshot,
    decode_message,
    hello_line,
    parse_welcome,
)

__all__ = [
    "AsyncSubscriber",
    "HubDisconnected",
    "HubError",
    "Live",
    "Message",
    "Resync",
    "Snapshot",
    "Subscriber",
]

log = get_logger("pulse.subscribe")

#: Reconnection backoff of hub clients: 100 ms doubling to 2 s, jittered.
_BACKOFF: Final = Backoff(0.1, 2.0, jitter=0.5)
#: Seconds a connection must have lasted for its loss to restart the backoff.
_STABLE: Final = 5.0


class HubDisconnected(PulseError):
    """The connection to the hub ended (and ``reconnect`` is off)."""


class _Client:
    """What both subscribers share: the address, the hello, the seqs seen."""

    def __init__(
        self,
        *,
        home: Path | str | None = None,
        path: Path | str | None = None,
        tcp: str | None = None,
        token: str | None = None,
        training_id: str | None = None,
        resume: Mapping[str, int] | None = None,
        rate: float | None = None,
        timeout: float = 10.0,
        reconnect: bool = False,
    ) -> None:
        self.address = hub_address(home if home is not None else ".pulse", path, tcp)
        self.token = token
        self.home = home  # over TCP without a token: <home>/hub.token's, at each connect
        self.training_id = training_id
        self.rate = rate
        self.timeout = timeout
        self.reconnect = reconnect
        #: the highest seq received per run (snapshots count): resume from here.
        self.last_seq: dict[str, int] = dict(resume or {})
        self.welcome: dict[str, Any] = {}
        self.connects = 0
        self.skipped = 0  # lines over the frame limit, skipped
        self._failures = 0
        self._up_since: float | None = None
        self._retry_at = 0.0  # monotonic time before which no connection is tried

    def _hello(self) -> bytes:
        tcp_token = client_token(self.home) if self.address.path is None else None
        return hello_line(
            "subscriber",
            training_id=self.training_id,
            token=self.token or tcp_token,
            resume=self.last_seq,
            rate=self.rate,
        )

    if TYPE_CHECKING:  # each client closes its own kind of connection

        def _drop(self) -> None: ...

    def _received(self, line: bytes) -> Message | None:
        """Decode and take note of one line; None for a line this client does not understand."""
        try:
            message = decode_message(line)
        except DecodeError:
            return None
        self._note(message)
        if isinstance(message, Resync) or (isinstance(message, HubError) and message.fatal):
            self._drop()
        return message

    def _lost(self, exc: BaseException) -> None:
        """The connection ended: drop it; without reconnect that ends the subscriber."""
        self._drop()
        if not self.reconnect:
            raise HubDisconnected(f"connection to the hub {self.address} ended: {exc}") from None

    def _note(self, message: Message) -> None:
        if isinstance(message, Snapshot):
            stats = message.view.get("stats") if isinstance(message.view, Mapping) else None
            seq = stats.get("last_seq") if isinstance(stats, Mapping) else None
            if isinstance(seq, int):
                self.last_seq[message.training_id] = seq
        elif isinstance(message, Event) and message.seq > self.last_seq.get(message.training_id, 0):
            self.last_seq[message.training_id] = message.seq

    def _backoff(self) -> None:
        """Count a failure (or a loss): the next connection waits its delay."""
        self._failures += 1
        delay = _BACKOFF.delay(self._failures, random.random())  # noqa: S311 - jitter
        self._retry_at = time.monotonic() + delay

    def _up(self) -> None:
        """A connection was welcomed."""
        self.connects += 1
        self._up_since = time.monotonic()

    def _down(self) -> None:
        """A connection ended: only one that lasted restarts the backoff."""
        if self._up_since is not None and time.monotonic() - self._up_since >= _STABLE:
            self._failures = 0
        self._up_since = None
        self._backoff()

    def _skip(self, exc: FrameTooLarge) -> None:
        self.skipped += 1
        log.warning(
            "pulse subscriber skipped a line over the frame limit",
            size=exc.size,
            limit=exc.limit,
            hub=str(self.address),
            skipped=self.skipped,
        )


class Subscriber(ClosesOnExit, _Client):
    """A blocking hub subscriber.

    Args:
        home: the PULSE home (the socket is ``<home>/pulse.sock``).
        path: the hub's Unix socket, instead of the home's.
        tcp: ``HOST:PORT`` of the hub, instead of a Unix socket.
        token: the hub's shared secret, needed over TCP (default
            ``$PULSE_HUB_TOKEN``, then the token of ``<home>/hub.token``).
        training_id: only this run (default: every run).
        resume: last seq seen per run; those runs get what they missed.
        rate: at most this many updates per second per run (the hub's
            default, 10, if None or higher).
        timeout: seconds to connect and to wait for the welcome.
        reconnect: on a lost connection or a resync, reconnect (with
            backoff) and resume instead of ending.
    """

    # The connection, set by connect(); the constructor is _Client's.
    _reader: LineReader | None = None
    _closed = False

    def connect(self) -> dict[str, Any]:
        """Connect and say hello (resuming from :attr:`last_seq`).

        Returns:
            The hub's welcome.

        Raises:
            OSError: the hub cannot be reached.
            HubRefused: the hub answered with an error (e.g. unauthorized).
        """
        self._drop()
        self._reader, self.welcome = handshake(self.address, self._hello(), self.timeout)
        self._up()
        return self.welcome

    def recv(self, timeout: float | None = None) -> Message | None:
        """The next message, or None if none came within *timeout* seconds.

        Raises:
            HubDisconnected: the connection ended and ``reconnect`` is off.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._closed:
                raise HubDisconnected("the subscriber is closed")
            if self._reader is None:
                if not self._reconnect(deadline):
                    return None
                continue
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                line = self._reader.readline(left)
            except FrameTooLarge as exc:
                self._skip(exc)
                continue
            except (EOFError, OSError, ValueError) as exc:
                self._lost(exc)
                continue
            if line is None:
                return None
            message = self._received(line)
            if message is not None:
                return message

    def _reconnect(self, deadline: float | None) -> bool:
        if not self.reconnect and self.connects:
            raise HubDisconnected(f"not connected to the hub {self.address}")
        while True:
            now = time.monotonic()
            if deadline is not None and self._retry_at > deadline:
                time.sleep(max(0.0, deadline - now))
                return False
            time.sleep(max(0.0, self._retry_at - now))
            try:
                self.connect()
                return True
            except (OSError, PulseError, EOFError, ValueError):
                if not self.reconnect:
                    raise
                self._backoff()

    def __iter__(self) -> Iterator[Message]:
        while True:
            try:
                message = self.recv()
            except HubDisconnected:
                return
            if message is not None:
                yield message

    def _drop(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.sock.close()
            self._down()

    def close(self) -> None:
        """Disconnect; iteration ends."""
        self._closed = True
        self._drop()

    def __enter__(self) -> Subscriber:
        if self._reader is None:
            if self.reconnect:
                self._reconnect(None)
            else:
                self.connect()
        return self


class AsyncSubscriber(AsyncClosesOnExit, _Client):
    """An asyncio hub subscriber; the same arguments as :class:`Subscriber`."""

    # The connection, set by connect(); the constructor is _Client's.
    _reader: asyncio.StreamReader | None = None
    _writer: asyncio.StreamWriter | None = None
    _closed = False

    async def connect(self) -> dict[str, Any]:
        """Connect and say hello; see :meth:`Subscriber.connect`."""
        self._drop()
        address = self.address
        if address.path is not None:
            opening = asyncio.open_unix_connection(str(address.path), limit=MAX_FRAME)
        else:
            opening = asyncio.open_connection(address.host, address.port, limit=MAX_FRAME)
        reader, writer = await asyncio.wait_for(opening, self.timeout)
        try:
            writer.write(self._hello())
            line = await asyncio.wait_for(reader.readline(), self.timeout)
            if not line:
                raise EOFError("the hub closed the connection before its welcome")
            self.welcome = parse_welcome(line)
        except BaseException:
            writer.close()
            raise
        self._reader, self._writer = reader, writer
        self._up()
        return self.welcome

    async def recv(self, timeout: float | None = None) -> Message | None:
        """The next message, or None after *timeout* seconds; see :meth:`Subscriber.recv`."""
        try:
            return await asyncio.wait_for(self._next(), timeout)
        except TimeoutError:
            return None

    async def _next(self) -> Message:
        while True:
            if self._closed:
                raise HubDisconnected("the subscriber is closed")
            if self._reader is None:
                await self._reconnect()
                continue
            try:
                line = await _read_line(self._reader)
            except FrameTooLarge as exc:
                self._skip(exc)
                continue
            except (OSError, ValueError) as exc:
                self._lost(exc)
                continue
            if not line.endswith(b"\n"):
                self._lost(EOFError("the hub closed the connection"))
                continue
            message = self._received(line)
            if message is not None:
                return message

    async def _reconnect(self) -> None:
        if not self.reconnect and self.connects:
            raise HubDisconnected(f"not connected to the hub {self.address}")
        while True:
            await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
            try:
                await self.connect()
                return
            except (OSError, PulseError, EOFError, ValueError, TimeoutError):
                if not self.reconnect:
                    raise
                self._backoff()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self._next()
            except HubDisconnected:
                return

    def _drop(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            self._down()

    async def aclose(self) -> None:
        """Disconnect; iteration ends."""
        self._closed = True
        self._drop()

    async def __aenter__(self) -> Self:
        if self._reader is None:
            if self.reconnect:
                await self._reconnect()
            else:
                await self.connect()
        return self


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """The next line (b"" or a partial line at the end of the stream).

    A line over :data:`MAX_FRAME` (newline included) is dropped as it comes,
    never held whole.

    Raises:
        FrameTooLarge: such a line was skipped; the stream is past it.
    """
    skipped = 0
    while True:
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)
            skipped += exc.consumed
            continue
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        size = skipped + len(line)
        if size > MAX_FRAME:
            raise FrameTooLarge(size, MAX_FRAME)
        return line
