"""Run ownership: another local process may not end or corrupt a run someone else writes.

Real processes on a real ``pulse serve``: producer processes driven over
stdin (``owner_producer.py``), a subscriber reading what the hub holds.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hubkit import HubProcess, RawClient

from pulse_transports._hubowner import TAKEOVER_QUIET
from pulse_transports.wire import Address

SCRIPT = Path(__file__).with_name("owner_producer.py")


class Driven:
    """A producer process answering one JSON line per command."""

    def __init__(self, home: Path, tid: str, *, lock: bool = False) -> None:
        args = [sys.executable, str(SCRIPT), str(home), tid] + (["lock"] if lock else [])
        self.proc = subprocess.Popen(
            args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.ask("")["ready"]

    def ask(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        if command:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else "no answer"
        reply = orjson.loads(line)
        assert isinstance(reply, dict)
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def drive(hub: HubProcess) -> Iterator[Callable[..., Driven]]:
    started: list[Driven] = []

    def start(tid: str, *, lock: bool = False) -> Driven:
        producer = Driven(hub.home, tid, lock=lock)
        started.append(producer)
        return producer

    yield start
    for producer in started:
        producer.stop()


def snapshot_of(
    hub: HubProcess, clients: Callable[[Address], RawClient], tid: str
) -> dict[str, Any]:
    sub = clients(hub.unix)
    sub.hello("subscriber", training_id=tid)
    lines = sub.until(lambda o: "live" in o)
    view = next(o["snapshot"][tid] for o in lines if "snapshot" in o and tid in o["snapshot"])
    assert isinstance(view, dict)
    return view


class TestLockedRun:
    """While a process holds a run's lock, only it (or its process tree) reports the run."""

    def test_another_process_is_refused_and_cannot_end_the_run(
        self,
        hub: HubProcess,
        drive: Callable[..., Driven],
        clients: Callable[[Address], RawClient],
    ) -> None:
        writer = drive("owned-1", lock=True)
        assert "welcome" in writer.ask("connect a unix")
        writer.ask("send a 1 running")
        writer.ask("send a 2")
        intruder = drive("owned-1")
        refused = intruder.ask("connect x unix")
        assert refused["error"]["code"] == "run_owned", refused
        assert "holds its lock" in refused["error"]["message"]
        assert refused["error"]["fatal"] is True
        # Over TCP (no pid known) a connected writer keeps its run too.
        assert hub.tcp is not None
        refused_tcp = intruder.ask(f"connect y tcp:{hub.tcp[1]}")
        assert refused_tcp["error"]["code"] == "run_owned", refused_tcp
        # The writer goes on, unharmed.
        writer.ask("send a 3")
        view = snapshot_of(hub, clients, "owned-1")
        assert view["status"] == "running"
        assert view["stats"]["last_seq"] == 3
        assert "run_owned" in hub.log()

    def test_the_writer_reconnecting_gets_in_at_once(
        self,
        hub: HubProcess,
        drive: Callable[..., Driven],
        clients: Callable[[Address], RawClient],
    ) -> None:
        """A blip: the writer's old connection still looks open; its new one is let in."""
        writer = drive("owned-2", lock=True)
        assert "welcome" in writer.ask("connect a unix")
        writer.ask("send a 1 running")
        started = time.monotonic()
        welcome = writer.ask("connect b unix")
        assert welcome["welcome"]["last_seq"] == 1
        assert time.monotonic() - started < 2.0
        assert writer.ask("read a")["error"]["code"] == "superseded"
        writer.ask("send b 2")
        view = snapshot_of(hub, clients, "owned-2")
        assert view["stats"]["last_seq"] == 2


class TestUnlockedRun:
    """Without a lock the reporting connection keeps its run while it speaks."""

    def test_a_silent_owner_yields_within_seconds(
        self, hub: HubProcess, drive: Callable[..., Driven]
    ) -> None:
        first = drive("free-1")
        assert "welcome" in first.ask("connect a unix")
        first.ask("send a 1 running")
        second = drive("free-1")
        assert second.ask("connect b unix")["error"]["code"] == "run_owned"
        # The first goes silent (as a writer whose connection broke unseen does).
        started = time.monotonic()
        while True:
            reply = second.ask("connect b unix")
            if "welcome" in reply:
                break
            assert reply["error"]["code"] == "run_owned"
            assert time.monotonic() - started < TAKEOVER_QUIET + 5
            time.sleep(0.5)
        assert time.monotonic() - started <= TAKEOVER_QUIET + 1.5
        assert first.ask("read a")["error"]["code"] == "superseded"


class TestSeq:
    """Absurd seq jumps are refused with a clear error; the run goes on."""

    def test_seq_jump_refused(
        self,
        hub: HubProcess,
        drive: Callable[..., Driven],
        clients: Callable[[Address], RawClient],
    ) -> None:
        producer = drive("seq-1")
        assert "welcome" in producer.ask("connect a unix")
        producer.ask("send a 1 running")
        producer.ask(f"send a {2**63 - 2} error")
        error = producer.ask("read a")["error"]
        assert error["code"] == "seq_out_of_range"
        assert error["fatal"] is False
        assert error["seq"] == 2**63 - 2
        producer.ask(f"send a {2**40} error")
        assert producer.ask("read a")["error"]["code"] == "seq_out_of_range"
        producer.ask("send a 2")
        producer.ask("send a 3 done")
        view = snapshot_of(hub, clients, "seq-1")
        assert view["status"] == "done"
        assert view["stats"]["last_seq"] == 3
