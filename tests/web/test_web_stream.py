"""An /events stream lives exactly as long as its client: no subscription outlives it.

These tests run the web server in the test's own event loop on a bare
:class:`~pulse_transports.inprocess.Bus`, so the bus's subscriber count can be read.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from pulse_core.events import Progress, RunMeta, StatusChanged
from pulse_transports.inprocess import Bus
from pulse_transports.web import WebServer, WebSettings


async def open_events(
    port: int, path: str = "/events"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    writer.write(head.encode())
    await writer.drain()
    return reader, writer


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def run(test: Callable[[Bus, WebServer, int], Awaitable[None]], home: Path) -> None:
    async def main() -> None:
        bus = Bus(timer=False)
        server = WebServer(bus, WebSettings(home=home, liveness_tick=0.05), "127.0.0.1", 0)
        url = await server.start()
        try:
            await test(bus, server, int(url.rstrip("/").rsplit(":", 1)[1]))
        finally:
            await server.stop()
            bus.close()

    # In a thread of its own: Playwright's sync API may hold this thread's event loop.
    failures: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failures.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "the test's event loop did not finish"
    if failures:
        raise failures[0]


class TestStreamLifecycle:
    """Leaving clients detach from the bus; stopping the server ends open streams."""

    def test_client_leaving_detaches(self, tmp_path: Path) -> None:
        async def test(bus: Bus, server: WebServer, port: int) -> None:
            clients = [await open_events(port) for _ in range(3)]
            for reader, _ in clients:
                assert b"200 OK" in await reader.readline()
            await until(lambda: bus.subscribers() == 3)
            for _, writer in clients:
                writer.close()
            await until(lambda: bus.subscribers() == 0)
            await until(lambda: not server.app.streams)

        run(test, tmp_path)

    def test_stream_asked_for_while_stopping_is_refused(self, tmp_path: Path) -> None:
        async def test(bus: Bus, server: WebServer, port: int) -> None:
            await server.app.close()
            reader, writer = await open_events(port)
            head = await asyncio.wait_for(reader.read(), 10)
            writer.close()
            assert head.startswith(b"HTTP/1.1 503")
            assert b'"hub_closing"' in head
            assert bus.subscribers() == 0

        run(test, tmp_path)

    def test_stop_ends_streams(self, tmp_path: Path) -> None:
        async def test(bus: Bus, server: WebServer, port: int) -> None:
            reader, writer = await open_events(port, "/events?rate=5")
            while b"hello" not in await reader.readline():
                pass
            bus.publish(RunMeta("mem-1", 1, time.time(), name="<b>x</b>"))
            bus.publish(StatusChanged("mem-1", 2, time.time(), "running", "go"))
            bus.publish(Progress("mem-1", 3, time.time(), epoch=1, step=2, total_steps=4))
            seen = b""
            while b'"seq":3' not in seen:
                seen += await asyncio.wait_for(reader.readline(), 10)
            await server.stop()
            body = seen + await asyncio.wait_for(reader.read(), 10)  # the server ended it
            writer.close()
            assert body.endswith(b"\r\n0\r\n\r\n")  # the last, empty chunk: a clean end
            datas = [
                orjson.loads(line[6:])
                for line in body.replace(b"\r\n", b"\n").split(b"\n")
                if line.startswith(b"data: ")
            ]
            events = [i for items in datas for i in items if "type" in i]
            assert [e["seq"] for e in events] == [1, 2, 3]
            assert bus.subscribers() == 0

        run(test, tmp_path)
