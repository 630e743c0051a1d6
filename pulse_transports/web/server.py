"""Serving the web view: uvicorn inside the hub's own asyncio event loop.

This module owns :class:`WebServer`: it binds the HTTP listener itself (so a
port 0 is resolved before the hub says it is ready), runs a uvicorn server
as a task of the running loop -- the hub and the web view share one loop and
one bus, no thread -- and stops it cleanly: the ``/events`` streams end first
(browsers then reconnect, to this hub or the next), then uvicorn waits a
short grace for responses in flight. uvicorn's own signal handling is left
out: the hub's command owns SIGTERM and SIGINT. Must not be imported by
:mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Final

import uvicorn

from pulse_core._log import get_logger
from pulse_transports.inprocess import Bus
from pulse_transports.web.app import WebApp, WebSettings
from pulse_transports.wire import is_loopback

log = get_logger("pulse.web")

#: Seconds uvicorn may take to finish responses in flight when stopping.
GRACE: Final = 3
#: Largest request head accepted (a long Last-Event-ID cursor fits).
MAX_HEAD: Final = 256 * 1024


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
        max_connections: HTTP connections beyond this are answered 503.

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
        self.max_connections = max_connections
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
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACE,
            h11_max_incomplete_event_size=MAX_HEAD,
            limit_concurrency=self.max_connections,
        )
        await self.app.start()
        self._server = server = _Server(config)
        self._task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._task.done():
                await self._task  # raises what stopped it
                raise OSError(f"the HTTP server stopped before it started on {host}:{port}")
            await asyncio.sleep(0.01)
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
