"""Helpers of the compatibility tests: real subprocesses, a v1 poller, waiting.

The v1 poller is a consumer written only against the PULSE v1 contract: it
polls ``training_status.json``, parses it as JSON and keeps every reading.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
V2_TRAINER = str(HERE / "v2_trainer.py")
V1_WRITER = str(HERE / "v1_writer.py")
#: The ``pulse`` command, run by this interpreter.
PULSE = (sys.executable, "-c", "from pulse_transports.cli import main; main(prog_name='pulse')")
V1_KEYS = ("status", "epoch", "total_epochs", "loss", "message", "timestamp")
#: The v1 contract's lifecycle order: a status never goes back to an earlier rank.
RANK = {
    "idle": 0,
    "preparing": 1,
    "running": 2,
    "cooling_down": 3,
    "done": 4,
    "error": 4,
    "cancelled": 4,
}


def child_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a child process: PULSE_HOME set, no inherited PULSE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    env["PULSE_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def start_v2_trainer(
    home: Path, mode: str, epochs: int = 4, steps: int = 20, pause: float = 0.02
) -> subprocess.Popen[str]:
    """Start the real v2 training script (TrainingRun with default sinks)."""
    return subprocess.Popen(
        [sys.executable, V2_TRAINER, mode, str(epochs), str(steps), str(pause)],
        env=child_env(home),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_v1_writer(path: Path, hold: float = 0.15, pause: float = 0.05) -> subprocess.Popen[str]:
    """Start the legacy v1-only writer (non-atomic, torn writes, invalid JSON)."""
    return subprocess.Popen(
        [sys.executable, V1_WRITER, str(path), str(hold), str(pause)],
        env=child_env(path.parent),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pulse(home: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the ``pulse`` command line in a subprocess."""
    return subprocess.run(
        [*PULSE, *args, "--home", str(home)],
        env=child_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, every: float = 0.01) -> Any:
    """Poll *predicate* until it returns something truthy; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(every)


class V1Poller:
    """A v1-only consumer: polls the snapshot file in a thread and keeps every reading.

    Attributes:
        readings: every parsed snapshot, in order (consecutive duplicates kept once).
        failures: readings that did not parse (each is a broken contract).
        reads: how many times the file was read.
    """

    def __init__(self, path: Path, every: float = 0.002) -> None:
        self.path = path
        self.every = every
        self.readings: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> V1Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop polling (after one last reading)."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.read_once()

    def read_once(self) -> None:
        """Read and parse the file once, as a v1 consumer does."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return  # no file yet: a v1 consumer shows "idle"
        self.reads += 1
        try:
            value = json.loads(data)
        except ValueError as exc:
            self.failures.append(f"{exc}: {data[:80]!r}")
            return
        if not self.readings or self.readings[-1] != value:
            self.readings.append(value)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.read_once()
            time.sleep(self.every)


def assert_v1_contract(readings: list[dict[str, Any]]) -> None:
    """Every reading has exactly the six keys; status and epoch never go back."""
    assert readings, "the consumer saw no snapshot at all"
    for value in readings:
        assert isinstance(value, dict)
        assert sorted(value) == sorted(V1_KEYS), value
        assert value["status"] in RANK, value
        assert isinstance(value["epoch"], int)
        assert not isinstance(value["epoch"], bool)
        assert isinstance(value["total_epochs"], int)
        assert value["loss"] is None or isinstance(value["loss"], float)
        assert isinstance(value["message"], str)
        assert value["timestamp"] is None or isinstance(value["timestamp"], str)
    for before, after in itertools.pairwise(readings):
        assert RANK[after["status"]] >= RANK[before["status"]], (before, after)
        assert after["epoch"] >= before["epoch"], (before, after)
        if before["timestamp"] is not None:
            assert after["timestamp"] >= before["timestamp"], (before, after)
    ended = [i for i, v in enumerate(readings) if RANK[v["status"]] == 4]
    if ended:
        assert all(v == readings[ended[0]] for v in readings[ended[0] :]), "changed after its end"
