"""Helpers of the hub tests: a real ``pulse serve`` process, raw clients, events.

Every hub runs as its own process (``python -m pulse_transports.cli serve``)
on a Unix socket in the test's tmp_path and on loopback TCP, and is stopped
(SIGTERM, then SIGKILL) when the test ends, whatever happened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pulse_core.codec import encode
from pulse_core.events import ErrorReported, Event, Metrics, Progress, RunMeta, StatusChanged
from pulse_transports.wire import Address, LineReader, connect, hello_line

#: Generous: waits end as soon as their condition holds.
WAIT = 15.0
_WITH_NOFILE = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


class HubProcess:
    """A ``pulse serve`` subprocess and where it listens."""

    def __init__(
        self,
        home: Path,
        args: list[str],
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        nofile: int | None = None,
    ) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        stamp = f"{time.monotonic_ns()}"
        self.out_path = home.parent / f"hub-{stamp}.out"
        self.err_path = home.parent / f"hub-{stamp}.err"
        cmd = [sys.executable, "-m", "pulse_transports.cli", "serve", "--home", str(home), *args]
        if nofile is not None:
            # The hub under a small open-file limit (set in the child, then exec'd).
            cmd = [sys.executable, "-c", _WITH_NOFILE, str(nofile), *cmd]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
            )
        self.socket_path: Path | None = None
        self.tcp: tuple[str, int] | None = None

    def wait_ready(self, timeout: float = WAIT) -> HubProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text()
            if "listening on" in text:
                for word in text.split("listening on", 1)[1].split():
                    if word.startswith("unix:"):
                        self.socket_path = Path(word[5:])
                    elif word.startswith("tcp:"):
                        host, _, port = word[4:].rpartition(":")
                        self.tcp = (host, int(port))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"the hub exited ({self.proc.returncode}): {self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"the hub did not start: {self.log()}")

    @property
    def unix(self) -> Address:
        assert self.socket_path is not None
        return Address(path=self.socket_path)

    @property
    def tcp_address(self) -> Address:
        assert self.tcp is not None
        return Address(host=self.tcp[0], port=self.tcp[1])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log(self) -> str:
        """What the hub wrote to stderr (its structlog output)."""
        return self.err_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    def pid_stats(self) -> dict[str, int]:
        """The hub's open file descriptors and resident memory (from /proc)."""
        fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        rss = 0
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        return {"fds": fds, "rss": rss}


class RawClient:
    """A plain socket speaking the hub protocol by hand."""

    def __init__(self, address: Address, timeout: float = WAIT) -> None:
        self.sock = connect(address, timeout)
        self.reader = LineReader(self.sock, limit=64 * 1024 * 1024)
        self.timeout = timeout

    def send(self, data: bytes | dict[str, Any]) -> None:
        if isinstance(data, dict):
            data = orjson.dumps(data) + b"\n"
        self.sock.sendall(data)

    def send_events(self, *events: Event) -> None:
        self.sock.sendall(b"".join(encode(e) for e in events))

    def line(self, timeout: float | None = None) -> dict[str, Any]:
        """The next line as a dict; AssertionError on timeout, EOFError on close."""
        raw = self.reader.readline(self.timeout if timeout is None else timeout)
        if raw is None:
            raise AssertionError("no line from the hub in time")
        obj = orjson.loads(raw)
        assert isinstance(obj, dict)
        return obj

    def hello(self, role: str, **fields: Any) -> dict[str, Any]:
        self.send(hello_line(role, **fields))  # type: ignore[arg-type]
        return self.line()

    def until(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT
    ) -> list[dict[str, Any]]:
        """Read lines until one satisfies *predicate*; return all read."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"condition not met; got {seen[-5:]}")
            obj = self.line(left)
            seen.append(obj)
            if predicate(obj):
                return seen

    def drain(self, quiet: float = 0.5) -> list[dict[str, Any]]:
        """Read lines until none comes for *quiet* seconds."""
        seen: list[dict[str, Any]] = []
        while True:
            raw = self.reader.readline(quiet)
            if raw is None:
                return seen
            seen.append(orjson.loads(raw))

    def closed_by_peer(self, timeout: float = WAIT) -> bool:
        """True once the hub closes the connection (after any lines)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.reader.readline(max(0.01, deadline - time.monotonic())) is None:
                    continue
            except (EOFError, ConnectionError):
                return True
        return False

    def close(self) -> None:
        self.sock.close()


def meta(tid: str, seq: int = 1, **fields: Any) -> RunMeta:
    return RunMeta(tid, seq, time.time(), **fields)


def status(tid: str, seq: int, value: str, message: str = "") -> StatusChanged:
    return StatusChanged(tid, seq, time.time(), value, message)


def progress(tid: str, seq: int, **fields: Any) -> Progress:
    return Progress(tid, seq, time.time(), **fields)


def metrics(tid: str, seq: int, **fields: Any) -> Metrics:
    return Metrics(tid, seq, time.time(), **fields)


def error(
    tid: str, seq: int, code: str = "CUDA_OOM", message: str = "out of memory"
) -> ErrorReported:
    return ErrorReported(tid, seq, time.time(), code, message, is_retryable=True)


def events_of(lines: list[dict[str, Any]], tid: str | None = None) -> list[dict[str, Any]]:
    """The event lines among hub lines (those with a ``type``), optionally of one run."""
    return [o for o in lines if "type" in o and (tid is None or o["training_id"] == tid)]


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_applied(address: Address, tid: str, seq: int, timeout: float = WAIT) -> dict[str, Any]:
    """Wait until the hub's state of run *tid* has applied seq *seq*; return its view."""
    deadline = time.monotonic() + timeout
    while True:
        client = RawClient(address)
        try:
            client.hello("subscriber", training_id=tid)
            lines = client.until(lambda o: "live" in o)
        finally:
            client.close()
        views = [o["snapshot"][tid] for o in lines if "snapshot" in o]
        if views and views[0]["stats"]["last_seq"] >= seq:
            return views[0]  # type: ignore[no-any-return]
        if time.monotonic() > deadline:
            raise AssertionError(f"the hub never applied seq {seq} of {tid}: {views}")
        time.sleep(0.02)


def write_log(home: Path, events: list[Event]) -> Path:
    """Write *events* as a run's log, as its file sink would have."""
    from pulse_transports.file import log_path

    path = log_path(home, events[0].training_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(encode(e) for e in events))
    return path
