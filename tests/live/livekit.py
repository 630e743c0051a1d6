"""Helpers of the live tests: a fresh home with no configuration, a real hub, producers.

Every process runs with the environment stripped of ``PULSE_*`` variables
(what a new user has), in the parent folder of the default home ``.pulse``,
and is stopped (SIGTERM, then SIGKILL) when the test ends, whatever happened.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pulse_transports.wire import Address, LineReader, connect, hello_line

WAIT = 15.0
PRODUCER = Path(__file__).with_name("live_producer.py")


def zero_env(**extra: str) -> dict[str, str]:
    """The environment without any ``PULSE_*`` variable, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env.update(extra)
    return env


class Proc:
    """A subprocess in its own session, its output in files beside the home."""

    def __init__(self, cmd: list[str], cwd: Path, env: dict[str, str], tag: str) -> None:
        stamp = time.monotonic_ns()
        self.out_path = cwd / f"{tag}-{stamp}.out"
        self.err_path = cwd / f"{tag}-{stamp}.err"
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class LiveHub(Proc):
    """``pulse serve`` (default home, default socket) started in *cwd*."""

    def __init__(self, cwd: Path, *args: str) -> None:
        cmd = [sys.executable, "-m", "pulse_transports.cli", "serve", *args]
        super().__init__(cmd, cwd, zero_env(), "hub")
        self.cwd = cwd
        self.url = ""

    def wait_ready(self, timeout: float = WAIT) -> LiveHub:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.out_path.read_text()
            if "listening on" in text:
                words = text.split("listening on", 1)[1].split()
                self.url = next((w for w in words if w.startswith("http://")), "")
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"the hub exited ({self.proc.returncode}): {self.log()}")
            time.sleep(0.02)
        raise AssertionError(f"the hub did not start: {self.log()}")

    @property
    def address(self) -> Address:
        return Address(path=self.cwd / ".pulse" / "pulse.sock")

    def pid_stats(self) -> dict[str, int]:
        """The hub's CPU ticks (user+system) and resident memory, from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        return {"ticks": int(fields[11]) + int(fields[12]), "rss": rss}


def producer(cwd: Path, scenario: str, tid: str, *args: str, **env: str) -> Proc:
    """Start ``live_producer.py`` with the default configuration (plus *env*)."""
    cmd = [sys.executable, str(PRODUCER), scenario, tid, *args]
    return Proc(cmd, cwd, zero_env(**env), f"producer-{tid}")


class Subscriber:
    """A hub subscriber speaking the protocol by hand; every line is timestamped."""

    def __init__(self, address: Address, **hello: Any) -> None:
        self.sock = connect(address, WAIT)
        self.reader = LineReader(self.sock, limit=64 * 1024 * 1024)
        self.sock.sendall(hello_line("subscriber", **hello))
        self.seen: list[tuple[float, dict[str, Any]]] = []
        welcome = self.line(WAIT)
        assert welcome is not None
        assert "welcome" in welcome, welcome

    def line(self, timeout: float) -> dict[str, Any] | None:
        raw = self.reader.readline(timeout)
        if raw is None:
            return None
        obj = orjson.loads(raw)
        assert isinstance(obj, dict)
        self.seen.append((time.time(), obj))
        return obj

    def until(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = WAIT,
        past: bool = False,
    ) -> float:
        """Read until a line satisfies *predicate*; the wall time it arrived.

        With *past*, a line already read counts too.
        """
        if past:
            for at, obj in self.seen:
                if predicate(obj):
                    return at
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                tail = [obj for _, obj in self.seen[-5:]]
                raise AssertionError(f"condition not met in {timeout} s; last lines {tail}")
            obj = self.line(left)
            if obj is not None and predicate(obj):
                return self.seen[-1][0]

    def drain(self, quiet: float = 0.3) -> None:
        while self.line(quiet) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


def snapshot_of(obj: dict[str, Any], tid: str) -> dict[str, Any] | None:
    """The v2 view of run *tid* if *obj* is a snapshot line holding it."""
    snap = obj.get("snapshot")
    if isinstance(snap, dict) and isinstance(snap.get(tid), dict):
        return snap[tid]  # type: ignore[no-any-return]
    return None


def lost(tid: str) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        view = snapshot_of(obj, tid)
        return view is not None and view.get("liveness") == "lost"

    return check


def event_of(tid: str, kind: str) -> Callable[[dict[str, Any]], bool]:
    def check(obj: dict[str, Any]) -> bool:
        return obj.get("training_id") == tid and obj.get("type") == kind

    return check


def wait_file(path: Path, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.01)
