"""The ``socket`` sink: a training process's events, pushed live to the hub.

This module owns :class:`SocketSink`. Its promises to the training loop:

* ``write()`` never blocks on the network and never raises because of it:
  it puts the event in a bounded queue and returns. A background thread
  sends the queue to the hub (:mod:`pulse_transports.hub`).
* While the hub is slow, down or restarting, status, error, meta and
  dropped events wait in the queue (at most ``queue`` events; past that the
  oldest progress/metrics go first, then the oldest others, counted and
  logged), and progress, metrics and heartbeats are coalesced to the
  latest value. The thread reconnects with backoff and sends what waited;
  the hub drops anything it already has (by seq), so a resend is harmless.
* A hub that refuses the connection (wrong token) or a line (an error
  line) is logged through structlog, never raised.

``open()`` makes one quick connection attempt so it can return the seq the
hub already holds for the run (a continued run goes on after it); if the hub
is not there, the run starts anyway and the thread keeps trying.

The sink is on by default, so it is inert and nearly free when no hub
listens: while the hub's Unix socket file does not exist it makes no
connection attempt and logs nothing, and looks for the file again every
:data:`PROBE` seconds. Progress and metrics go out at most every
:data:`INTERVAL` (10 ms, a tenth of the hub's per-subscriber limit, which
stays the one UI rate cap), the latest value last; the queue also coalesces
samples while the connection is busy.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from pulse_core._log import get_logger
from pulse_core.codec import encode
from pulse_core.errors import ConfigError, DecodeError
from pulse_core.events import ErrorReported, Event
from pulse_core.policy import (
    BAD_LOG_EVERY,
    BAD_LOG_FIRST,
    CONNECT_BACKOFF,
    LIVE_INTERVAL,
    BoundedBuffer,
    Retry,
    sample_kind,
    sampled,
)
from pulse_transports._hubclient import handshake, hub_address
from pulse_transports._sender import BackgroundSender, shed_details
from pulse_transports.config import check_limits
from pulse_transports.hubtoken import client_token
from pulse_transports.wire import (
    ENV_TOKEN,
    MAX_FRAME,
    HandshakeError,
    HubError,
    LineReader,
    decode_message,
    hello_line,
)

log = get_logger("pulse.socket")

#: Events the sink may hold while the hub is unreachable.
QUEUE: Final = 10_000
#: Default least seconds between two progress (or metrics) events sent to the
#: hub: a tenth of the hub's own per-subscriber limit (LIVE_INTERVAL, the one
#: UI rate cap), so a producer at 50 Hz is not limited here at all, and the
#: value a subscriber gets is at most 10 ms older than with no limit. Without
#: one, a loop calling progress() on each of thousands of steps a second made
#: an event per call and kept the run's writer thread (which shares the GIL
#: with training) busy: 17 % more time for a loop of 100 us steps, 8 % with
#: it. The latest value always follows.
INTERVAL: Final = LIVE_INTERVAL / 10
#: Seconds between two looks for the socket file of a hub that is not there.
PROBE: Final = 2.0
#: Longest pause between two reconnection attempts (seconds): the cap of
#: :data:`pulse_core.policy.CONNECT_BACKOFF`.
RETRY_MAX: Final = CONNECT_BACKOFF.cap
#: Seconds one blocking send may take before the connection counts as dead.
SEND_TIMEOUT: Final = 5.0


class _NoHub(FileNotFoundError):
    """The hub's Unix socket file does not exist: no hub listens (not a failure)."""


@attrs.define
class _ProbeRetry(Retry):
    """The reconnection backoff, except while no hub socket exists: a look every PROBE s."""

    absent: bool = False

    def failed(self, now: float, u: float = 0.0) -> float:
        if self.absent:
            self.not_before = now + PROBE  # not a failure: no streak, no log
            return PROBE
        return super().failed(now, u)


class SocketSink(BackgroundSender[Event]):
    """Sends a run's events to a PULSE hub (the ``socket`` transport).

    Args:
        home: the PULSE home; the default socket is ``<home>/pulse.sock``.
        path: the hub's Unix socket (default ``$PULSE_HUB_SOCKET``, then
            ``<home>/pulse.sock``).
        tcp: ``HOST:PORT`` of a hub reached over TCP instead.
        token: the hub's shared secret (default ``$PULSE_HUB_TOKEN``; over
            TCP then the token of ``<home>/hub.token``).
        interval: the least seconds between forwarded progress/metrics
            (default 0: the hub limits each subscriber to 10/s itself).
        queue: the most events held while the hub is unreachable.
        connect_timeout: seconds one connection attempt may take.
        close_timeout: seconds ``close()`` waits for queued events to go out
            while connected.
        hub: the ``[tool.pulse.socket.hub]`` table: settings of ``pulse
            serve``, kept beside the sink's so both ends share ``path`` and
            ``token``; the sink ignores it.

    Raises:
        ConfigError: if *tcp* is not ``HOST:PORT`` or *queue* is below 16.
    """

    name = "socket"
    failures_are = (OSError, HandshakeError, EOFError, ValueError)
    boundaries = False
    OPTIONS: Final = {
        "path": str,
        "tcp": str,
        "token": str,
        "interval": float,
        "queue": int,
        "connect_timeout": float,
        "close_timeout": float,
        "hub": dict,
    }

    def __init__(
        self,
        *,
        home: Path | str,
        path: str | None = None,
        tcp: str | None = None,
        token: str | None = None,
        interval: float = INTERVAL,
        queue: int = QUEUE,
        connect_timeout: float = 1.0,
        close_timeout: float = 2.0,
        hub: Mapping[str, Any] | None = None,
    ) -> None:
        try:
            self.address = hub_address(home, path, tcp)
        except ValueError as exc:
            raise ConfigError(f"option 'tcp' of transport 'socket': {exc}") from None
        check_limits("transport 'socket'", {"queue": (queue, 16)})
        super().__init__(
            log=log,
            buffer=BoundedBuffer(queue, key=sample_kind),
            close_timeout=close_timeout,
            label="socket sink",
        )
        self.home = home  # over TCP without a token: <home>/hub.token's, read at each connect
        self.token = token if token is not None else (os.environ.get(ENV_TOKEN) or None)
        self.interval = interval
        self.connect_timeout = connect_timeout
        #: the seq the hub held for the run at the last (re)connection.
        self.hub_last_seq: int | None = None
        self.max_frame = MAX_FRAME
        self.rejected = 0
        self._sock: socket.socket | None = None
        self._reader: LineReader | None = None
        self._probe = _ProbeRetry(CONNECT_BACKOFF)
        self.retry = self._probe

    # -- the Sink protocol ---------------------------------------------------------

    def open(self, training_id: str) -> int | None:
        """Try the hub once (briefly) and start the sender thread.

        Returns:
            The highest seq the hub holds for this run, or None if it holds
            none or could not be reached now.
        """
        self.start(training_id)
        return self.hub_last_seq

    def close(self) -> None:
        """Send what is queued (bounded by ``close_timeout``), then disconnect."""
        lost = self.stop()
        if not self.connects and not self.retry.failures:
            return  # no hub ever listened: nobody expected these events
        if lost or self.dropped:
            log.warning(
                "pulse socket sink closed with events the hub never got",
                training_id=self.training_id,
                hub=str(self.address),
                unsent=lost,
                dropped=self.dropped,
            )

    @property
    def connected(self) -> bool:
        """True while the sink holds a welcomed connection to the hub."""
        return self._sock is not None

    # -- the sender hooks ----------------------------------------------------------

    def describe_down(self, exc: BaseException) -> None:
        """Log the first failure of a streak (an absent hub is none)."""
        if isinstance(exc, _NoHub):
            return
        log.warning(
            "pulse hub unreachable; the socket sink keeps events and retries",
            training_id=self.training_id,
            hub=str(self.address),
            error=f"{type(exc).__name__}: {exc}",
        )

    def prepare(self, event: Event) -> Event:
        """The event itself is queued (encoded when sent, to the hub's frame limit)."""
        return event

    def connect(self) -> None:
        """Connect to the hub, say hello and read its welcome."""
        path = self.address.path
        self._probe.absent = path is not None and not os.path.exists(path)
        if self._probe.absent:
            raise _NoHub(f"no hub socket at {path}")
        token = self.token or (client_token(self.home) if self.address.path is None else None)
        hello = hello_line("producer", training_id=self.training_id, token=token)
        reader, welcome = handshake(self.address, hello, self.connect_timeout)
        sock = reader.sock
        sock.settimeout(SEND_TIMEOUT)
        last = welcome.get("last_seq")
        self.hub_last_seq = last if isinstance(last, int) else None
        frame = welcome.get("max_frame")
        self.max_frame = frame if isinstance(frame, int) and frame >= 1024 else MAX_FRAME
        if self.hub_last_seq is not None:
            self.drop_through(self.hub_last_seq)  # the hub has these already (e.g. its log)
        self._sock, self._reader = sock, reader

    def disconnect(self) -> None:
        """Close the connection, if any."""
        sock, self._sock, self._reader = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def send(self, batch: list[Event]) -> None:
        """Write *batch* as one frame sequence."""
        sock = self._sock
        if sock is None:
            raise EOFError("not connected")
        data = b"".join([self._encode(event) for event in batch])
        sock.sendall(data)
        self.sent += len(batch)

    def _encode(self, event: Event) -> bytes:
        line = encode(event)
        if len(line) <= self.max_frame:
            return line
        if isinstance(event, ErrorReported):
            # An error is never dropped: shed its details to fit the frame.
            line = encode(shed_details(event, len(line)))
            if len(line) <= self.max_frame:
                return line
        self.dropped += 1
        log.warning(
            "pulse socket sink dropped an event larger than the hub's frame limit",
            training_id=self.training_id,
            seq=event.seq,
            size=len(line),
            max_frame=self.max_frame,
        )
        return b""

    def poll(self) -> None:
        """Read what the hub said without waiting; raise if it hung up."""
        sock, reader = self._sock, self._reader
        if sock is None or reader is None:
            raise EOFError("not connected")
        while reader.pending() or select.select([sock], [], [], 0)[0]:
            line = reader.readline(SEND_TIMEOUT)
            if line is None:
                return
            try:
                message = decode_message(line)
            except DecodeError:
                continue
            if isinstance(message, HubError):
                self.rejected += 1
                if message.fatal:
                    raise HandshakeError(message.code, message.message)
                if sampled(self.rejected, BAD_LOG_EVERY, first=BAD_LOG_FIRST):
                    log.warning(
                        "pulse hub rejected an event",
                        training_id=self.training_id,
                        code=message.code,
                        reason=message.message,
                        rejected=self.rejected,
                    )
