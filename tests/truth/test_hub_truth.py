"""The hub tells the truth about a writer's death: pushed at once, and the v1 file healed.

Each test runs a real ``pulse serve --http`` process and a real producer
process (``scenario.py sigkill``: file, v1 and socket transports) that is
killed with a real SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import orjson
import pytest
from truthkit import (
    SCENARIO,
    TRANSPORTS,
    HubServer,
    HubWatch,
    matrix_root,
    training_id_for,
)

from pulse_transports.subscribe import Snapshot, Subscriber

#: Generous bound for one wait; the waits end as soon as their condition holds.
WAIT = 10.0


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with matrix_root() as (_root, server):
        yield server


class Producer:
    """``scenario.py sigkill`` reporting into the hub's own home."""

    def __init__(self, hub: HubServer) -> None:
        self.training_id = training_id_for("hub")
        self.out = hub.home.parent / f"{self.training_id}.out"
        env = {
            **os.environ,
            "PULSE_HOME": str(hub.home),
            "PULSE_TRAINING_ID": self.training_id,
            "PULSE_TRANSPORTS": TRANSPORTS,
            "PULSE_HUB_SOCKET": str(hub.socket_path),
        }
        with self.out.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(SCENARIO), "sigkill"],
                stdout=out,
                stderr=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        until(lambda: b"READY" in self.out.read_bytes(), "the producer's READY")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def producer(hub: HubServer) -> Iterator[Producer]:
    started = Producer(hub)
    yield started
    started.kill()


def until(predicate: object, what: str, wait: float = WAIT) -> float:
    """Poll *predicate* until true; return the seconds it took (AssertionError on timeout)."""
    assert callable(predicate)
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > wait:
            raise AssertionError(f"timed out after {wait} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def api_row(hub: HubServer, training_id: str) -> dict[str, object]:
    return next((r for r in hub.api_runs() if r.get("training_id") == training_id), {})


def late_snapshot(hub: HubServer, training_id: str) -> dict[str, object]:
    """The view a subscriber connecting now gets first."""
    with Subscriber(path=hub.socket_path, training_id=training_id) as sub:
        sub.connect()
        while True:
            message = sub.recv(timeout=WAIT)
            assert message is not None, "no snapshot from the hub"
            if isinstance(message, Snapshot):
                return dict(message.view)


class TestHubLiveness:
    """A writer's death reaches hub subscribers and /api/runs as lost within seconds."""

    def test_connected_subscriber_is_told(self, hub: HubServer, producer: Producer) -> None:
        """A subscriber connected before the SIGKILL gets a pushed snapshot saying lost."""
        watch = HubWatch(hub.socket_path, producer.training_id)
        try:
            until(lambda: watch.read().get("liveness") == "alive", "the run alive")
            producer.kill()
            took = until(lambda: watch.read().get("liveness") == "lost", "lost pushed", 5.0)
            assert watch.read()["status"] == "running"  # the last known status, kept
            assert took < 5.0
        finally:
            watch.close()

    def test_late_subscriber_and_api(self, hub: HubServer, producer: Producer) -> None:
        """After the SIGKILL a new subscriber's snapshot and /api/runs both say lost."""
        producer.kill()
        until(lambda: api_row(hub, producer.training_id).get("liveness") == "lost", "api lost")
        until(
            lambda: late_snapshot(hub, producer.training_id).get("liveness") == "lost",
            "a late subscriber's snapshot to say lost",
            5.0,
        )

    def test_live_writer_is_never_lost(self, hub: HubServer, producer: Producer) -> None:
        """Over several liveness ticks a live writer's run stays alive for subscribers."""
        watch = HubWatch(hub.socket_path, producer.training_id)
        try:
            until(lambda: watch.read().get("liveness") == "alive", "the run alive")
            time.sleep(3.5)  # three ticks of the hub's writer check
            assert producer.proc.poll() is None
            assert {c[1].get("liveness") for c in watch.changes} == {"alive"}
            assert late_snapshot(hub, producer.training_id)["liveness"] == "alive"
        finally:
            watch.close()


class TestHubHealsV1:
    """The hub rewrites the home's v1 snapshot of a run it sees lost."""

    def test_sigkill_heals_training_status(self, hub: HubServer, producer: Producer) -> None:
        """No CLI reader runs, yet training_status.json turns from running to the lost error."""
        path = hub.home / "training_status.json"

        def v1() -> dict[str, object]:
            try:
                data = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                return {}
            assert isinstance(data, dict)
            return data

        until(lambda: v1().get("status") == "running", "the v1 file to say running")
        producer.kill()
        until(lambda: v1().get("status") == "error", "the hub to heal the v1 file", 5.0)
        assert str(v1()["message"]).startswith("training process lost")
