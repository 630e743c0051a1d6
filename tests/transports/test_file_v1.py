"""The v1 snapshot: exactly the v1 keys, atomic rewrites, one slot shared by parallel runs."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from pulse_core.emitter import TrainingRun
from pulse_core.projections import V1_KEYS
from pulse_core.testing import FakeClock
from pulse_transports.file import write_json_atomic
from pulse_transports.v1 import V1SnapshotSink


def read_v1(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "training_status.json").read_text("utf-8"))
    return data


def sync_run(
    tid: str, home: Path, clock: FakeClock, **kw: Any
) -> tuple[TrainingRun, V1SnapshotSink]:
    sink = V1SnapshotSink(home=home, background=False, clock=clock.monotonic, **kw)
    run = TrainingRun(
        tid,
        sinks=[sink],
        clock=clock.monotonic,
        wall=clock.time,
        background=False,
        env={},
        strict=True,
        heartbeat_interval=5.0,
    )
    return run, sink


class TestSnapshot:
    """The file holds exactly the six v1 keys of the run's state."""

    def test_keys_and_values(self, tmp_home: Path) -> None:
        """A finished run's snapshot: done, epochs, last loss, message, ISO timestamp."""
        clock = FakeClock(1_800_000_000.0)
        run, _ = sync_run("v1-a", tmp_home, clock)
        with run:
            run.progress(epoch=3, total_epochs=5, step=2)
            run.metrics(loss=0.125)
            clock.advance(1.0)
            run.status("cooling_down", "saving")
        data = read_v1(tmp_home)
        assert tuple(data) == V1_KEYS
        assert data == {
            "status": "done",
            "epoch": 3,
            "total_epochs": 5,
            "loss": 0.125,
            "message": "finished",
            "timestamp": "2027-01-15T08:00:01.000Z",
        }

    def test_before_any_loss(self, tmp_home: Path) -> None:
        """While preparing: epoch 0, loss null."""
        clock = FakeClock()
        run, sink = sync_run("v1-b", tmp_home, clock)
        sink.flush(True)
        data = read_v1(tmp_home)
        assert (data["status"], data["epoch"], data["total_epochs"], data["loss"]) == (
            "preparing",
            0,
            0,
            None,
        )
        run.close()

    def test_relative_path_is_under_home(self, tmp_home: Path) -> None:
        """The path option is relative to the home folder."""
        sink = V1SnapshotSink(home=tmp_home, path="ui/status.json")
        assert sink.path == tmp_home / "ui" / "status.json"


class TestRate:
    """With background=False the caller's thread writes at most once per interval."""

    def test_sync_writes_are_throttled(self, tmp_home: Path) -> None:
        """10 s of progress at 100 calls/s: about 100 file writes at the default 0.1 s."""
        clock = FakeClock()
        run, sink = sync_run("v1-c", tmp_home, clock)
        for step in range(1000):
            run.progress(epoch=1, step=step)
            run.metrics(loss=1.0 / (step + 1))
            clock.advance(0.01)
            if step % 5 == 0:
                run.tick()
        assert 90 <= sink.writes <= 110
        run.close()
        assert read_v1(tmp_home)["status"] == "done"
        assert read_v1(tmp_home)["loss"] == 1.0 / 1000


READER = """
import json, sys, time
path = sys.argv[1]
keys = ("status", "epoch", "total_epochs", "loss", "message", "timestamp")
reads = 0
seen = set()
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except FileNotFoundError:
        continue
    assert tuple(data) == keys, data
    reads += 1
    seen.add(data["status"])
    if data["status"] == "done":
        break
print(reads, sorted(seen))
"""


class TestAtomicity:
    """A poller never sees a partial or torn file, whatever the timing."""

    def test_concurrent_reader_thread_and_process(self, tmp_path: Path, tmp_home: Path) -> None:
        """A thread and a process parse the file in a tight loop while a run rewrites it."""
        path = tmp_home / "training_status.json"
        script = tmp_path / "reader.py"
        script.write_text(textwrap.dedent(READER), encoding="utf-8")
        reader = subprocess.Popen(
            [sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True
        )
        problems: list[str] = []
        reads = [0]
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                try:
                    data = json.loads(path.read_bytes())
                except FileNotFoundError:
                    continue
                except ValueError as exc:
                    problems.append(str(exc))
                    continue
                if tuple(data) != V1_KEYS:
                    problems.append(repr(data))
                reads[0] += 1

        thread = threading.Thread(target=poll)
        thread.start()
        sink = V1SnapshotSink(home=tmp_home, interval=0.0, fsync=False)
        try:
            with TrainingRun("v1-d", sinks=[sink], env={}, heartbeat_interval=5.0) as run:
                run.status("running", "x" * 3000)  # a long message: a torn write would show
                # The loop no longer pays for the writes (the run's writer thread
                # does them), so it may end before 100 rewrites: go on until then.
                step, deadline = 0, time.monotonic() + 60
                while step < 200_000 or (sink.writes <= 150 and time.monotonic() < deadline):
                    run.progress(epoch=1 + step // 1000, total_epochs=200, step=step)
                    run.metrics(loss=1.0 / (step + 1))
                    if step % 50_000 == 0:
                        run.status("running", "y" * (step % 7000))
                    step += 1
        finally:
            stop.set()
            thread.join()
            out, _ = reader.communicate(timeout=90)
        assert problems == []
        assert reads[0] > 100
        assert sink.writes > 100
        assert reader.returncode == 0
        count, seen = out.split(" ", 1)
        assert int(count) > 10
        assert "done" in seen
        assert list(tmp_home.glob(".*.tmp")) == []

    def test_write_json_atomic_leaves_no_tmp_on_failure(self, tmp_home: Path) -> None:
        """A value that cannot be encoded leaves the old file and no temp file."""
        target = tmp_home / "x.json"
        write_json_atomic(target, {"a": 1})
        with contextlib.suppress(TypeError):
            write_json_atomic(target, {"a": object()})
        assert json.loads(target.read_text("utf-8")) == {"a": 1}
        assert list(tmp_home.glob(".*.tmp")) == []


class TestParallelRuns:
    """One v1 slot, several runs: the file shows the run that wrote last (most recently active)."""

    def test_last_writer_wins(self, tmp_home: Path) -> None:
        """A and B alternate; the file follows the last to report; a live run reclaims it."""
        clock = FakeClock()
        run_a, _ = sync_run("v1-run-a", tmp_home, clock)
        run_a.status("running")
        clock.advance(1.0)
        run_b, _ = sync_run("v1-run-b", tmp_home, clock)
        run_b.status("running")
        clock.advance(1.0)
        run_a.progress(epoch=7, total_epochs=9)
        assert read_v1(tmp_home)["epoch"] == 7
        clock.advance(1.0)
        run_b.progress(epoch=2, total_epochs=4)
        assert read_v1(tmp_home)["epoch"] == 2
        clock.advance(1.0)
        run_a.close()  # A ends: its final state is the newest write
        assert read_v1(tmp_home)["status"] == "done"
        assert read_v1(tmp_home)["epoch"] == 7
        clock.advance(1.0)
        run_b.progress(epoch=3)  # B is still going: its next report takes the slot back
        assert read_v1(tmp_home)["status"] == "running"
        assert read_v1(tmp_home)["epoch"] == 3
        run_b.close()
        assert read_v1(tmp_home)["total_epochs"] == 4

    def test_background_threads_parallel(self, tmp_home: Path) -> None:
        """With real writer threads the slot ends on the run that finished last."""
        first = V1SnapshotSink(home=tmp_home, interval=0.01)
        second = V1SnapshotSink(home=tmp_home, interval=0.01)
        with TrainingRun("v1-par-1", sinks=[first], env={}, heartbeat_interval=5.0) as run_1:
            with TrainingRun("v1-par-2", sinks=[second], env={}, heartbeat_interval=5.0) as run_2:
                for step in range(2000):
                    run_1.progress(epoch=1, total_epochs=1, step=step)
                    run_2.progress(epoch=2, total_epochs=2, step=step)
            run_1.progress(epoch=1, total_epochs=1, step=9999)
        data = read_v1(tmp_home)
        assert data["status"] == "done"
        assert data["total_epochs"] == 1  # run 1 closed last


class TestShutdown:
    """close() stops the writer thread promptly and writes the final state."""

    def test_close_stops_thread(self, tmp_home: Path) -> None:
        """After close the thread is gone and the file has the end; close is idempotent."""
        sink = V1SnapshotSink(home=tmp_home, interval=30.0)  # a long pause to interrupt
        run = TrainingRun("v1-e", sinks=[sink], env={}, heartbeat_interval=5.0)
        run.progress(epoch=1)
        thread = sink._thread
        assert thread is not None
        assert thread.is_alive()
        run.close()
        assert not thread.is_alive()
        assert read_v1(tmp_home)["status"] == "done"
        sink.close()
        assert sink.writes >= 1

    def test_close_unopened(self, tmp_home: Path) -> None:
        """A sink that was never opened closes without writing anything."""
        sink = V1SnapshotSink(home=tmp_home)
        sink.close()
        assert not (tmp_home / "training_status.json").exists()
