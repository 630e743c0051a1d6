"""Serving the web view: uvicorn inside the hub's own asyncio event loop.

This module owns :class:`WebServer`: it binds the HTTP listener itself (so a
port 0 is resolved before the hub says it is ready), runs a uvicorn server
as a task of the running loop -- the hub and the web view share one loop and
one bus, no thread -- and stops it cleanly: the ``/events`` streams end first
(browsers then reconnect, to this hub or the next), then uvicorn waits a
short grace for responses in flight. uvicorn's own signal handling is left
out: the hub's command owns SIGTERM and SIGINT. Must not be imported by
:mod:`pulse_core`.

Hostile clients are bounded here (:class:`_GuardedH11`): a request's head
must arrive within :data:`HEAD_TIMEOUT` seconds of the connection (or of the
previous response), an idle keep-alive connection is closed after
:data:`IDLE_TIMEOUT` seconds, and HTTP connections beyond the server's own
cap -- separate from the hub socket's -- first push out the oldest
connection still waiting for its head; when every connection is busy with a
real request, the new one is answered 503 and closed at once, with one
rate-limited warning rather than one per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator
from typing import Final

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from pulse_core._log import get_logger
from pulse_core.policy import sampled
from pulse_transports.inprocess import Bus
from pulse_transports.web.app import WebApp, WebSettings
from pulse_transports.wire import is_loopback

log = get_logger("pulse.web")

#: Seconds uvicorn may take to finish responses in flight when stopping.
GRACE: Final = 3
#: Largest request head accepted (a long Last-Event-ID cursor fits).
MAX_HEAD: Final = 256 * 1024
#: Seconds a request's head (request line and headers) has to arrive.
HEAD_TIMEOUT: Final = 10.0
#: Seconds an idle keep-alive connection stays open.
IDLE_TIMEOUT: Final = 5
#: Default most open HTTP connections (the hub socket's are counted apart).
MAX_HTTP_CONNECTIONS: Final = 256
#: Connections accepted per event-loop iteration, and the kernel's queue of them.
_ACCEPT_BATCH: Final = 8
_BACKLOG: Final = 4096
_BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: 82\r\n\r\n"
    b'{"error": {"code": "busy", "message": "too many HTTP connections; retry shortly"}}'
)


class _GuardedH11(H11Protocol):
    """uvicorn's h11 protocol with a head timeout and a connection cap.

    The cap is the class's ``cap`` (set per server by :func:`_guarded`).
    """

    cap: int = MAX_HTTP_CONNECTIONS
    refused = 0
    _head_timer: asyncio.TimerHandle | None = None
    _opened = 0.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._opened = time.monotonic()
        if len(self.connections) > self.cap and not self._evict_a_waiting_head():
            cls = type(self)
            cls.refused += 1
            if sampled(cls.refused, 1000, first=3):
                log.warning(
                    "pulse web view at its connection cap: refusing",
                    cap=self.cap,
                    refused=cls.refused,
                )
            transport.write(_BUSY)
            transport.close()
            return
        self._arm_head_timer()

    def _evict_a_waiting_head(self) -> bool:
        """Close the oldest other connection still waiting for a request head.

        At the cap, a client that never finishes its head must not keep a
        real request out: the longest waiting head gives way.
        """
        oldest: _GuardedH11 | None = None
        for other in self.connections:
            if (
                other is not self
                and isinstance(other, _GuardedH11)
                and other._head_timer is not None
                and (oldest is None or other._opened < oldest._opened)
            ):
                oldest = other
        if oldest is None:
            return False
        oldest._head_timeout()
        self.connections.discard(oldest)  # its descriptor is freed when the loop closes it
        return True

    def data_received(self, data: bytes) -> None:
        if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            self._arm_head_timer()  # the next request's head has begun
        super().data_received(data)

    def handle_events(self) -> None:
        cycle = self.cycle
        super().handle_events()
        if self.cycle is not cycle and self._head_timer is not None:
            self._head_timer.cancel()  # a request's head is complete
            self._head_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_timeout)

    def _head_timeout(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()  # no answer: the client never finished asking


class _Relay(logging.Handler):
    """uvicorn's warnings and errors as the library's short rate-limited lines."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        log.warning(
            "pulse web view: server error",
            message=record.getMessage(),
            error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
        )


def _relay_uvicorn_logs() -> None:
    """Route uvicorn's loggers through :class:`_Relay` (once per process)."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Relay) for h in logger.handlers):
            logger.addHandler(_Relay(logging.WARNING))
        logger.propagate = False


def _guarded(cap: int) -> type[_GuardedH11]:
    """A protocol class of :class:`_GuardedH11` with its own *cap* and counter."""
    return type("GuardedH11", (_GuardedH11,), {"cap": cap, "refused": 0})


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the hub's command has its own)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def http_url(host: str, port: int) -> str:
    """``http://host:port/`` (brackets around an IPv6 address)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


class WebServer:
    """The web view of a hub's bus, served over HTTP in the running event loop.

    Args:
        bus: the hub's bus.
        settings: home, token and timings of the app.
        host, port: where to listen (port 0: any free port).
        max_connections: HTTP connections beyond this are answered 503
            and closed (default :data:`MAX_HTTP_CONNECTIONS`).

    Raises:
        ValueError: a non-loopback *host* without a token in *settings*.
    """

    def __init__(
        self,
        bus: Bus,
        settings: WebSettings,
        host: str,
        port: int,
        *,
        max_connections: int | None = None,
    ) -> None:
        if not is_loopback(host) and not (settings.token or "").strip():
            raise ValueError(f"serving HTTP on non-loopback {host!r} needs a token")
        self.app = WebApp(bus, settings)
        self.host = host
        self.port = port
        self.max_connections = max_connections or MAX_HTTP_CONNECTIONS
        self.url: str | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    async def start(self) -> str:
        """Bind, start serving and return the page's URL.

        Raises:
            OSError: the address cannot be bound.
        """
        infos = socket.getaddrinfo(
            self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _name, address = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        host, port = sock.getsockname()[:2]
        config = uvicorn.Config(
            self.app,
            http=_guarded(self.max_connections),
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACE,
            h11_max_incomplete_event_size=MAX_HEAD,
            timeout_keep_alive=IDLE_TIMEOUT,
            backlog=_ACCEPT_BATCH,  # accepted per loop iteration: a flood waits its turn
        )
        _relay_uvicorn_logs()
        await self.app.start()
        self._server = server = _Server(config)
        self.app.connections = server.server_state.connections  # to cut stuck streams
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise OSError(f"the HTTP server stopped before it started on {host}:{port}")
            await asyncio.sleep(0.01)
        sock.listen(_BACKLOG)  # the kernel's queue stays long (asyncio set it to the batch)
        self.url = http_url(host, port)
        log.info("pulse web view serving", url=self.url)
        return self.url

    async def stop(self) -> None:
        """End the streams, stop uvicorn (within its grace) and the liveness checks."""
        await self.app.close()
        server, task = self._server, self._task
        if server is not None and task is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), GRACE + 2)
            except TimeoutError:
                server.force_exit = True
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
