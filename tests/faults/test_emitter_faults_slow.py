"""A real training process whose disk is slow, or which floods, forks or loses its thread.

Each test runs ``emitter_trainer.py`` as a subprocess: the fault (``os.write`` or
``os.fsync`` sleeping, slow compaction) is injected inside that process, the
loop reports its own call timings as JSON, and the log is read back with
``pulse_core`` replay or ``pulse show --json``. Bounds are generous (this is
about what runs on the training thread, not about speed): the old emitter,
which wrote on the training thread, took seconds per call here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from pulse_core.codec import decode
from pulse_core.events import ErrorReported, Event, Progress, StatusChanged
from pulse_core.reducer import replay

TRAINER = Path(__file__).with_name("emitter_trainer.py")


def train(home: Path, scenario: str, *opts: str, env: dict[str, str] | None = None) -> Any:
    """Run one scenario of the trainer to its end; its JSON report."""
    proc = subprocess.run(
        [sys.executable, str(TRAINER), scenario, str(home), *opts],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def read_log(home: Path, training_id: str) -> list[Event]:
    path = home / "logs" / "training" / f"{training_id}.jsonl"
    return [decode(line) for line in path.read_bytes().splitlines()]


def statuses(events: list[Event]) -> list[str]:
    return [e.status for e in events if isinstance(e, StatusChanged)]


def pulse(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``pulse`` command line on *home*."""
    script = Path(sys.executable).with_name("pulse")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from pulse_transports.cli import main; main()"]
    )
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PULSE_HOME": str(home)},
        check=False,
    )


def worst(report: Any, method: str) -> float:
    return float(report["calls"][method]["worst_s"])


class TestSlowDisk:
    """A disk that sleeps in write(2) or fsync(2) never stalls the training thread."""

    def test_write_sleeping_2s(self, tmp_path: Path) -> None:
        """With os.write sleeping 2 s, no progress/metrics/status/error call takes 0.5 s."""
        report = train(
            tmp_path, "loop", "slow=write", "delay=2", "steps=300",
            env={"PULSE_CLOSE_TIMEOUT": "1"},
        )  # fmt: skip
        for method in ("progress", "metrics", "status", "error"):
            assert worst(report, method) < 0.5, (method, report["calls"])
        assert report["loop_s"] < 5.0
        assert worst(report, "close") < 3.0  # gives up after close_timeout, never hangs
        assert "MainThread" not in report["io_threads"]["fsync"]

    def test_write_sleeping_200ms(self, tmp_path: Path) -> None:
        """With os.write sleeping 0.2 s, every call returns in well under 0.1 s."""
        report = train(
            tmp_path, "loop", "slow=write", "delay=0.2", "steps=500",
            env={"PULSE_CLOSE_TIMEOUT": "2"},
        )  # fmt: skip
        for method in ("progress", "metrics", "status", "error"):
            assert worst(report, method) < 0.1, (method, report["calls"])

    def test_fsync_sleeping_2s(self, tmp_path: Path) -> None:
        """With os.fsync sleeping 2 s, status()/error() return at once; close() is bounded."""
        report = train(
            tmp_path, "loop", "slow=fsync", "delay=2", "steps=300",
            env={"PULSE_CLOSE_TIMEOUT": "1"},
        )  # fmt: skip
        for method in ("progress", "metrics", "status", "error"):
            assert worst(report, method) < 0.5, (method, report["calls"])
        assert worst(report, "close") < 3.0  # the old emitter took 6 s here
        assert report["io_threads"]["fsync"] == ["pulse-run-slow-run"]

    def test_compaction_off_the_training_thread(self, tmp_path: Path) -> None:
        """Compaction (slowed to 0.3 s each) runs on the writer; no loop call stalls 0.1 s."""
        report = train(
            tmp_path, "compact", "delay=0.3", "steps=2000", "work_us=300",
            "max_bytes=16384", "note_every=0", "error_every=0",
        )  # fmt: skip
        # A cap small enough to be reached even when the busy loop starves the writer of the
        # GIL and values coalesce (a writer 256 events behind takes the latest only).
        assert report["compactions"] >= 1
        assert report["training_thread"] not in report["io_threads"]["compact"]
        assert report["io_threads"]["compact"] == ["pulse-run-compact-run"]
        for method in ("progress", "metrics"):
            assert worst(report, method) < 0.1, (method, report["calls"])
        events = read_log(tmp_path, "compact-run")
        assert statuses(events)[-1] == "done"
        assert os.path.getsize(tmp_path / "logs" / "training" / "compact-run.jsonl") <= 16384


class TestStatusFlood:
    """A status note and a non-fatal error on every step keep the log within its cap."""

    def test_flood_stays_within_cap_and_counts_errors(self, tmp_path: Path) -> None:
        """30k steps with a note and an error each: log <= 256 KiB cap, every error counted."""
        cap = 256 * 1024
        report = train(tmp_path, "flood", "steps=30000", f"max_bytes={cap}")
        assert report["log_bytes"] <= cap
        events = read_log(tmp_path, "flood-run")
        errors = [e for e in events if isinstance(e, ErrorReported)]
        assert errors
        counted = sum(int((e.details or {}).get("count", 1)) for e in errors)
        assert counted == 30_000  # coalesced, not lost
        state = replay(events)
        assert state.status == "done"
        assert state.anomalies == ()


class TestEpochBoundaries:
    """With the default sinks (file + v1) the log keeps the last progress of every epoch."""

    def test_every_epoch_end_in_the_log(self, tmp_path: Path) -> None:
        """20 fast epochs of 3 steps: epoch e's step 3 is in the durable log for every e."""
        train(tmp_path, "epochs", "epochs=20", "per_epoch=3")
        ends = {
            e.epoch
            for e in read_log(tmp_path, "epochs-run")
            if isinstance(e, Progress) and e.step == 3
        }
        assert ends == set(range(1, 21))


class TestTrainingThreadDeath:
    """The thread that opened a run dying of an exception ends the run error at once."""

    def test_thread_death_ends_error(self, tmp_path: Path) -> None:
        """FileNotFoundError kills the trainer thread; the process lives; the log says error."""
        proc = subprocess.Popen(
            [sys.executable, str(TRAINER), "thread_death", str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:  # structlog may still print to stdout before it
                if line.strip() == "ready":
                    break
            deadline = time.monotonic() + 10
            state = None
            while time.monotonic() < deadline:
                state = replay(read_log(tmp_path, "thread-death-run"))
                if state.status == "error":
                    break
                time.sleep(0.05)
            assert proc.poll() is None  # the process lives on
            shown = pulse(tmp_path, "show", "thread-death-run", "--json")
            assert shown.returncode == 0, shown.stderr
            view = orjson.loads(shown.stdout)["view"]
            assert view["status"] == "error"
            assert state is not None
            assert state.errors[-1].error_code == "DATASET_NOT_FOUND"
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)


class TestFork:
    """A forked child's copy of the run is inert: it never touches the parent's run."""

    def _check(self, tmp_path: Path, scenario: str, child_status: int) -> None:
        report = train(tmp_path, scenario)
        assert os.waitstatus_to_exitcode(report["child_status"]) == child_status
        assert report["writer_alive_after_child"] is True  # the child did not unlock it
        events = read_log(tmp_path, "fork-run")
        assert not any(isinstance(e, Progress) and e.epoch == 99 for e in events)
        assert not any(
            isinstance(e, StatusChanged) and e.message == "from the child" for e in events
        )
        state = replay(events)
        assert state.status == "done"
        assert state.anomalies == ()
        assert state.errors == ()

    def test_child_exits(self, tmp_path: Path) -> None:
        """A child that reports, then exits 0: the parent's run still ends done."""
        self._check(tmp_path, "fork_exit", 0)

    def test_child_raises(self, tmp_path: Path) -> None:
        """A child that reports, then raises: the parent's run still ends done, no error."""
        self._check(tmp_path, "fork_raise", 1)
