"""Helpers of the web tests: a real ``pulse serve --http`` process, producers, SSE reading.

Every hub is its own process (``python -m pulse_transports.cli serve --http``)
in a short temporary home; every producer is a real training process
(``web_producer.py``, a ``TrainingRun`` with the ``file`` and ``socket`` sinks).
Both are stopped when the test ends, whatever happened. The bench
(tests/bench/bench_web.py) uses the same helpers.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from pulse_transports.hubtoken import read_token

#: Generous: waits end as soon as their condition holds.
WAIT = 15.0
PRODUCER = Path(__file__).with_name("web_producer.py")
#: Debian's Chromium, started headless by Playwright (no downloaded browser).
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
_HUB_ENV = ("PULSE_HUB_TOKEN", "PULSE_HUB_SOCKET", "PULSE_HUB_TCP", "PULSE_HUB_HTTP")


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without hub settings or a PULSE home, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if k not in _HUB_ENV and k != "PULSE_HOME"}
    env.update(extra)
    return env


class WebHub:
    """A ``pulse serve --http`` process.

    Args:
        home: the PULSE home.
        http: the ``--http`` value (default: a free loopback port).
        args: more ``pulse serve`` arguments.
        env: more environment variables (e.g. ``PULSE_STALE_AFTER``).
    """

    def __init__(
        self,
        home: Path,
        http: str | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.http = http or f"127.0.0.1:{free_port()}"
        stamp = time.monotonic_ns()
        self.out_path = home.parent / f"hub-{stamp}.out"
        self.err_path = home.parent / f"hub-{stamp}.err"
        cmd = [
            sys.executable,
            "-m",
            "pulse_transports.cli",
            "serve",
            "--home",
            str(home),
            "--http",
            self.http,
            *args,
        ]
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, env=clean_env(**(env or {})), start_new_session=True
            )
        #: the page's URL as the hub printed it (with ``?token=``: open it once).
        self.url = ""
        #: the same without the token.
        self.base = ""

    def wait_ready(self, timeout: float = WAIT) -> WebHub:
        """Wait for the ready line; note the page's URL."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text()
            if "listening on" in text:
                words = text.split("listening on", 1)[1].split()
                self.url = next(w for w in words if w.startswith("http://"))
                self.base = self.url.split("?", 1)[0]
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"the hub exited ({self.proc.returncode}): {self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"the hub did not start: {self.log()}")

    @property
    def port(self) -> int:
        return int(self.base.rstrip("/").rsplit(":", 1)[1])

    @property
    def token(self) -> str | None:
        """The hub's token, read from its home as a local client would."""
        return read_token(self.home)

    def auth(self, headers: dict[str, str] | None = None) -> dict[str, str]:
        """*headers* plus the hub's token as a Bearer (unless they carry one)."""
        out = dict(headers or {})
        token = self.token
        if token and not any(k.lower() == "authorization" for k in out):
            out["Authorization"] = f"Bearer {token}"
        return out

    def log(self) -> str:
        """What the hub wrote to stderr."""
        return self.err_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the hub with *sig* (SIGKILL: a crash) and wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        return self.proc.returncode

    # -- plain HTTP ------------------------------------------------------------------

    def request(
        self, path: str, headers: dict[str, str] | None = None, *, auth: bool = True
    ) -> tuple[int, dict[str, str], bytes]:
        """GET *path* (with the token unless not *auth*); status, headers (lower-case), body."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            conn.request("GET", path, headers=self.auth(headers) if auth else headers or {})
            response = conn.getresponse()
            body = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, body
        finally:
            conn.close()

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> Any:
        """GET *path* expecting 200 and JSON."""
        status, _, body = self.request(path, headers)
        assert status == 200, (status, body[:300])
        return orjson.loads(body)

    def view(self, tid: str) -> dict[str, Any]:
        """The v2 view of a run."""
        view = self.get_json(f"/api/runs/{tid}")
        assert isinstance(view, dict)
        return view


class Producer:
    """A training process running a ``web_producer.py`` scenario.

    Args:
        scenario: the scenario name.
        tid: the training id.
        home: the PULSE home (the hub's).
        control: the folder of gate files.
        args: the scenario's arguments.
    """

    def __init__(self, scenario: str, tid: str, home: Path, control: Path, *args: str) -> None:
        self.tid = tid
        self.control = control
        control.mkdir(parents=True, exist_ok=True)
        self.log_path = control / f"{tid}.err"
        env = clean_env(
            PULSE_HOME=str(home), PULSE_TRANSPORTS="file,socket", PULSE_HEARTBEAT_INTERVAL="5"
        )
        with self.log_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(PRODUCER), scenario, tid, str(control), *args],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                start_new_session=True,
            )

    def open_gate(self, n: int) -> None:
        """Let the scenario pass its gate *n*."""
        (self.control / str(n)).touch()

    def wait(self, timeout: float = WAIT) -> int:
        """Wait for the process to end; its exit code."""
        return self.proc.wait(timeout)

    def signal(self, sig: int) -> None:
        """Send *sig* to the process."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL it (a crash: nothing is reported) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class SseReader:
    """A raw ``/events`` client: parses SSE messages as they come.

    Args:
        hub: the hub (its port, and its token, sent as a Bearer).
        path: the request path (with query).
        headers: request headers (e.g. ``Last-Event-ID``).
    """

    def __init__(
        self, hub: WebHub, path: str = "/events", headers: dict[str, str] | None = None
    ) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", hub.port, timeout=WAIT)
        self.conn.request("GET", path, headers=hub.auth(headers))
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = {k.lower(): v for k, v in self.response.getheaders()}
        self.last_id: str | None = None
        #: True once the server ended the stream (not a timeout).
        self.ended = False

    def messages(self, timeout: float = WAIT) -> Iterator[tuple[str | None, list[Any]]]:
        """Yield ``(id, items)`` per message until the stream ends or *timeout* passes."""
        deadline = time.monotonic() + timeout
        event_id: str | None = None
        data: list[bytes] = []
        while time.monotonic() < deadline:
            self.conn.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                line = self.response.readline()
            except TimeoutError:
                return
            if not line:
                self.ended = True
                return
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    if event_id is not None:
                        self.last_id = event_id
                    yield event_id, orjson.loads(b"\n".join(data))
                event_id, data = None, []
            elif line.startswith(b"data: "):
                data.append(line[6:])
            elif line.startswith(b"id: "):
                event_id = line[4:].decode()

    def items_until(
        self, predicate: Any, timeout: float = WAIT
    ) -> list[tuple[str | None, list[Any]]]:
        """Read messages until one holds an item satisfying *predicate*; return all read."""
        seen = []
        for message in self.messages(timeout):
            seen.append(message)
            if any(predicate(item) for item in message[1]):
                return seen
        raise AssertionError(f"condition not met; last messages: {seen[-3:]}")

    def close(self) -> None:
        self.conn.close()


def events_in(messages: list[tuple[str | None, list[Any]]], tid: str) -> list[dict[str, Any]]:
    """The events of run *tid* among SSE messages, in order."""
    return [
        item
        for _, items in messages
        for item in items
        if isinstance(item, dict) and "type" in item and item["training_id"] == tid
    ]
