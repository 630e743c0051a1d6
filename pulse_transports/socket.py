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
connection attempt and logs nothing, and looks for the file again at most
every :data:`PROBE` seconds. Progress and metrics are not rate limited here
(``interval`` 0): the emitter hands every value over and the queue coalesces
samples only while the connection is busy; the hub's per-subscriber limit is
the one UI rate cap.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from pulse_core._log import get_logger
from pulse_core.codec import encode
from pulse_core.errors import ConfigError, DecodeError
from pulse_core.events import ErrorReported, Event
from pulse_core.policy import RETRY_FIRST, hold_event, trim_events
from pulse_transports.wire import (
    ENV_TOKEN,
    MAX_FRAME,
    Address,
    HandshakeError,
    HubError,
    LineReader,
    connect,
    decode_message,
    default_socket_path,
    hello_line,
    parse_hostport,
    parse_welcome,
)

log = get_logger("pulse.socket")

#: Events the sink may hold while the hub is unreachable.
QUEUE: Final = 10_000
#: Default least seconds between two progress (or metrics) events sent to the
#: hub: none. The hub limits every subscriber to LIVE_INTERVAL itself; the
#: sink's queue coalesces samples while a send is under way, which bounds
#: the hub's input to what the connection carries.
INTERVAL: Final = 0.0
#: Seconds between two looks for the socket file of a hub that is not there.
PROBE: Final = 2.0
#: Longest pause between two reconnection attempts (seconds).
RETRY_MAX: Final = 2.0
#: Seconds one blocking send may take before the connection counts as dead.
SEND_TIMEOUT: Final = 5.0
#: Events sent per write.
_BATCH: Final = 512


class SocketSink:
    """Sends a run's events to a PULSE hub (the ``socket`` transport).

    Args:
        home: the PULSE home; the default socket is ``<home>/pulse.sock``.
        path: the hub's Unix socket (default ``$PULSE_HUB_SOCKET``, then
            ``<home>/pulse.sock``).
        tcp: ``HOST:PORT`` of a hub reached over TCP instead.
        token: the hub's shared secret (default ``$PULSE_HUB_TOKEN``).
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
        if tcp:
            try:
                host, port = parse_hostport(tcp)
            except ValueError as exc:
                raise ConfigError(f"option 'tcp' of transport 'socket': {exc}") from None
            self.address = Address(host=host, port=port)
        else:
            self.address = Address(path=Path(path) if path else default_socket_path(home))
        if queue < 16:
            raise ConfigError(
                f"option 'queue' of transport 'socket' must be at least 16, got {queue}"
            )
        self.token = token if token is not None else (os.environ.get(ENV_TOKEN) or None)
        self.interval = interval
        self.queue_limit = queue
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self.training_id: str | None = None
        #: the seq the hub held for the run at the last (re)connection.
        self.hub_last_seq: int | None = None
        self.max_frame = MAX_FRAME
        # counters, for tests and ``sink_stats``-style reporting
        self.sent = 0
        self.coalesced = 0
        self.dropped = 0
        self.connects = 0
        self.rejected = 0
        self._queue: deque[Event] = deque()
        self._cond = threading.Condition()
        self._busy = False  # a batch is out of the queue, being sent
        self._closing = False
        self._deadline = float("inf")
        self._sock: socket.socket | None = None
        self._reader: LineReader | None = None
        self._failures = 0
        self._thread: threading.Thread | None = None

    # -- the Sink protocol ---------------------------------------------------------

    def open(self, training_id: str) -> int | None:
        """Try the hub once (briefly) and start the sender thread.

        Returns:
            The highest seq the hub holds for this run, or None if it holds
            none or could not be reached now.
        """
        self.training_id = training_id
        if self._hub_present():
            try:
                self._connect()
            except (OSError, HandshakeError, EOFError, ValueError) as exc:
                self._down(exc)
        self._thread = threading.Thread(
            target=self._run, name=f"pulse-socket-{training_id}", daemon=True
        )
        self._thread.start()
        return self.hub_last_seq

    def write(self, event: Event) -> None:
        """Queue *event* for the sender thread; never blocks on the network."""
        with self._cond:
            self._hold(event)
            if self._sock is not None:  # else the thread is waiting out a retry delay
                self._cond.notify()

    def flush(self, durable: bool) -> None:
        """With *durable*, wait (up to ``close_timeout``) for the queue to be sent.

        Returns at once while the hub is unreachable: events then stay queued.
        """
        if not durable:
            return
        deadline = time.monotonic() + self.close_timeout
        with self._cond:
            while (self._queue or self._busy) and self._sock is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def close(self) -> None:
        """Send what is queued (bounded by ``close_timeout``), then disconnect."""
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + self.close_timeout
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.close_timeout + 1.0)
        self._disconnect()
        with self._cond:
            lost = len(self._queue)
        if not self.connects and not self._failures:
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

    def queued(self) -> int:
        """Events waiting to be sent."""
        with self._cond:
            return len(self._queue)

    # -- the queue -----------------------------------------------------------------

    def _hold(self, event: Event) -> None:
        """Append within the bound, coalescing samples (see ``hold_event``)."""
        held = hold_event(self._queue, event, self.queue_limit)
        self.coalesced += held.coalesced
        for _ in held.dropped:
            self._count_drop()

    def _trim(self, excess: int) -> None:
        """Drop *excess* events: the oldest progress/metrics first."""
        for _ in trim_events(self._queue, excess):
            self._count_drop()

    def _count_drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "pulse socket sink queue full; dropping the oldest events",
                training_id=self.training_id,
                dropped=self.dropped,
                limit=self.queue_limit,
            )

    # -- the sender thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except Exception:  # the reporter thread must never take training down
            log.exception("pulse socket sink thread failed", training_id=self.training_id)
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def _loop(self) -> None:
        cond = self._cond
        while True:
            if self._sock is None:
                with cond:
                    closing, empty = self._closing, not self._queue
                if closing and (empty or time.monotonic() >= self._deadline):
                    return
                if not self._hub_present():
                    if closing:
                        return  # no hub to hand the rest to
                    with cond:
                        end = time.monotonic() + PROBE
                        while not self._closing and (left := end - time.monotonic()) > 0:
                            cond.wait(left)
                    continue
                try:
                    self._connect()
                except (OSError, HandshakeError, EOFError, ValueError) as exc:
                    self._down(exc)
                    if closing:
                        return  # one last try at close, no waiting on a hub that is down
                    delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(self._failures - 1, 10))
                    with cond:
                        if not self._closing:
                            cond.wait(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                    continue
            with cond:
                if not self._queue and not self._closing:
                    cond.wait(0.5)
                batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
                closing = self._closing
                self._busy = bool(batch)
            try:
                self._poll()
                if batch:
                    self._send(batch)
            except (OSError, EOFError, ValueError, HandshakeError) as exc:
                with cond:
                    self._queue.extendleft(reversed(batch))
                    self._trim(len(self._queue) - self.queue_limit)
                    self._busy = False
                self._disconnect()
                self._down(exc)
                continue
            with cond:
                self._busy = False
                cond.notify_all()
                if closing and not self._queue:
                    return
                if closing and time.monotonic() >= self._deadline:
                    return

    def _hub_present(self) -> bool:
        """False while the hub's Unix socket file is absent (no connection attempt then)."""
        path = self.address.path
        return path is None or os.path.exists(path)

    def _connect(self) -> None:
        sock = connect(self.address, self.connect_timeout)
        try:
            sock.sendall(hello_line("producer", training_id=self.training_id, token=self.token))
            reader = LineReader(sock)
            line = reader.readline(self.connect_timeout)
            if line is None:
                raise TimeoutError(f"no answer from the hub within {self.connect_timeout:g} s")
            welcome = parse_welcome(line)
            sock.settimeout(SEND_TIMEOUT)
        except BaseException:
            sock.close()
            raise
        last = welcome.get("last_seq")
        self.hub_last_seq = last if isinstance(last, int) else None
        frame = welcome.get("max_frame")
        self.max_frame = frame if isinstance(frame, int) and frame >= 1024 else MAX_FRAME
        if self.hub_last_seq is not None:
            with self._cond:  # the hub has these already (e.g. from the run's log)
                while self._queue and self._queue[0].seq <= self.hub_last_seq:
                    self._queue.popleft()
        self._sock, self._reader = sock, reader
        self.connects += 1
        if self._failures:
            log.info(
                "pulse hub reachable again; sending queued events",
                training_id=self.training_id,
                hub=str(self.address),
                attempts=self._failures,
                queued=len(self._queue),
            )
        self._failures = 0

    def _down(self, exc: BaseException) -> None:
        self._failures += 1
        if self._failures == 1:
            log.warning(
                "pulse hub unreachable; the socket sink keeps events and retries",
                training_id=self.training_id,
                hub=str(self.address),
                error=f"{type(exc).__name__}: {exc}",
            )

    def _disconnect(self) -> None:
        sock, self._sock, self._reader = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _send(self, batch: list[Event]) -> None:
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
            line = encode(
                attrs.evolve(
                    event,
                    message=event.message[:1000],
                    details={"pulse_truncated": f"details were {len(line)} bytes; too large"},
                )
            )
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

    def _poll(self) -> None:
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
                if self.rejected <= 10 or self.rejected % 1000 == 0:
                    log.warning(
                        "pulse hub rejected an event",
                        training_id=self.training_id,
                        code=message.code,
                        reason=message.message,
                        rejected=self.rejected,
                    )
