"""The v1 -> v2 bridge turns a legacy writer's training_status.json into honest v2 runs."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from compatkit import PULSE, child_env, pulse, start_v1_writer, start_v2_trainer, wait_for

from pulse_core.errors import ConfigError
from pulse_core.events import ErrorReported, Heartbeat, RunMeta, StatusChanged
from pulse_core.testing import RecordingSink
from pulse_transports.flows import FlowTrainer
from pulse_transports.follow import read_log
from pulse_transports.history import RunRecord, recover
from pulse_transports.v1 import (
    PATH_LABEL,
    SOURCE_LABEL,
    V1FileSource,
    lifecycle_path,
    training_id_for,
)

ID_RE = re.compile(r"v1-\d{8}-\d{6}-\d{3}-\d+")


def write(path: Path, **snapshot: Any) -> None:
    path.write_text(json.dumps(snapshot), "utf-8")


def oldest_first(home: Path) -> list[RunRecord]:
    return sorted(recover(home), key=lambda r: r.state.created_at or 0.0)


class Clock:
    """A settable wall clock for snapshots without timestamps."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestAgainstARealV1Writer:
    """A real, non-atomic v1 writer process, bridged live, gives four honest runs."""

    def run_writer(self, home: Path) -> tuple[V1FileSource, float]:
        path = home / "training_status.json"
        source = V1FileSource(home=home, interval=0.01)
        stop = threading.Event()
        thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
        thread.start()
        writer = start_v1_writer(path, hold=0.15, pause=0.05)
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        assert out.strip().endswith("END")
        t0 = float(out.split()[1])
        time.sleep(0.2)  # a few more polls after the last write
        stop.set()
        thread.join(timeout=10)
        assert not thread.is_alive()
        return source, t0

    def test_four_runs_with_boundaries_and_outcomes(self, tmp_home: Path) -> None:
        """done, error, lost (epoch went back to 1) and done, with their ids and values."""
        source, t0 = self.run_writer(tmp_home)
        runs = oldest_first(tmp_home)
        assert [r.state.status for r in runs] == ["done", "error", "running", "done"]
        assert [r.liveness for r in runs] == ["ended", "ended", "lost", "ended"]
        assert runs[0].training_id == training_id_for(t0, 1)
        assert all(ID_RE.fullmatch(r.training_id) for r in runs)
        first = runs[0].state
        assert first.created_at == pytest.approx(t0)
        # The message changed every epoch: each change is a restatement of running.
        assert [t.status for t in first.timeline] == [
            "preparing",
            "running",
            "running",
            "running",
            "done",
        ]
        assert (first.epoch, first.total_epochs, first.metrics["loss"]) == (3, 3, 0.25)
        assert first.message == "finished"
        second = runs[1].state
        assert second.message == "CUDA out of memory"
        assert [(e.error_code, e.message) for e in second.errors] == [
            ("V1_ERROR", "CUDA out of memory")
        ]
        assert second.created_at == pytest.approx(t0 + 15.0)
        third = runs[2].state
        assert (third.epoch, third.total_epochs, third.metrics["loss"]) == (3, 5, 1.2)
        assert third.created_at == pytest.approx(t0 + 36.0)
        assert [e.error_code for e in third.errors] == ["PROCESS_LOST"]
        fourth = runs[3].state
        assert fourth.created_at == pytest.approx(t0 + 66.0)
        assert (fourth.epoch, fourth.metrics["loss"], fourth.message) == (2, 0.35, "saved")
        assert source.runs_started == 4

    def test_torn_and_invalid_snapshots_are_skipped(self, tmp_home: Path) -> None:
        """Half-written, empty and garbage files are counted and never reach the logs."""
        source, _t0 = self.run_writer(tmp_home)
        assert source.invalid > 0
        for record in recover(tmp_home):
            assert record.bad_lines == 0
            assert record.state.anomaly_count == 0, record.state.anomalies
            meta = record.state.meta
            assert meta is not None
            assert meta.labels[SOURCE_LABEL] == "v1file"
            assert meta.labels[PATH_LABEL] == str((tmp_home / "training_status.json").resolve())

    def test_flow_history_and_cli_read_bridged_runs(self, tmp_home: Path) -> None:
        """``pulse ls``, ``pulse show`` and Flow History records work for v1 producers."""
        self.run_writer(tmp_home)
        listing = pulse(tmp_home, "ls", "--json")
        assert listing.returncode == 0, listing.stderr
        rows = json.loads(listing.stdout)["runs"]
        assert sorted(r["status"] for r in rows) == ["done", "done", "error", "running"]
        done = next(r for r in rows if r["status"] == "done")
        shown = pulse(tmp_home, "show", done["training_id"], "--json")
        assert shown.returncode == 0, shown.stderr
        record = FlowTrainer(tmp_home).record(done["training_id"])
        assert record["outcome"] == "success"
        assert record["key_metrics"]["final_loss"] in (0.25, 0.35)


class TestBoundaries:
    """When a new run starts, and when a run ends unseen."""

    def test_new_run_after_terminal(self, tmp_home: Path) -> None:
        """After done, a refreshed end is ignored and a running snapshot is a new run."""
        path = tmp_home / "training_status.json"
        with V1FileSource(home=tmp_home) as source:
            write(
                path,
                status="running",
                epoch=1,
                total_epochs=2,
                loss=1.0,
                message="",
                timestamp=10.0,
            )
            source.poll()
            write(
                path, status="done", epoch=2, total_epochs=2, loss=0.5, message="ok", timestamp=11.0
            )
            source.poll()
            write(
                path, status="done", epoch=2, total_epochs=2, loss=0.5, message="ok", timestamp=12.0
            )
            assert source.poll() == []
            write(
                path,
                status="running",
                epoch=5,
                total_epochs=9,
                loss=0.4,
                message="",
                timestamp=13.0,
            )
            events = source.poll()
        assert isinstance(events[0], RunMeta)
        assert [r.state.status for r in oldest_first(tmp_home)] == ["done", "running"]

    def test_idle_ends_a_run_unseen(self, tmp_home: Path) -> None:
        """A running run followed by idle is left lost, with a PROCESS_LOST error event."""
        path = tmp_home / "training_status.json"
        with V1FileSource(home=tmp_home) as source:
            write(
                path,
                status="running",
                epoch=2,
                total_epochs=3,
                loss=1.0,
                message="",
                timestamp=10.0,
            )
            source.poll()
            write(
                path, status="idle", epoch=0, total_epochs=0, loss=None, message="", timestamp=11.0
            )
            events = source.poll()
            assert source.training_id is None
        assert [type(e) for e in events] == [ErrorReported]
        (record,) = recover(tmp_home)
        assert (record.state.status, record.liveness) == ("running", "lost")

    def test_preparing_after_running_is_a_new_run(self, tmp_home: Path) -> None:
        """preparing after running means the old run ended unseen and a new one began."""
        path = tmp_home / "training_status.json"
        with V1FileSource(home=tmp_home) as source:
            write(
                path,
                status="running",
                epoch=3,
                total_epochs=3,
                loss=1.0,
                message="",
                timestamp=10.0,
            )
            source.poll()
            write(
                path,
                status="preparing",
                epoch=3,
                total_epochs=3,
                loss=1.0,
                message="",
                timestamp=20.0,
            )
            source.poll()
        runs = oldest_first(tmp_home)
        assert [(r.state.status, r.liveness) for r in runs] == [
            ("running", "lost"),
            ("preparing", "lost"),
        ]

    def test_idle_never_starts_a_run(self, tmp_home: Path) -> None:
        """An idle snapshot (or an unknown status word) alone writes nothing."""
        path = tmp_home / "training_status.json"
        with V1FileSource(home=tmp_home) as source:
            write(
                path, status="idle", epoch=0, total_epochs=0, loss=None, message="", timestamp=1.0
            )
            assert source.poll() == []
            write(
                path,
                status="thinking",
                epoch=1,
                total_epochs=2,
                loss=None,
                message="",
                timestamp=2.0,
            )
            assert source.poll() == []
        assert not (tmp_home / "logs").exists()

    def test_first_snapshot_already_done(self, tmp_home: Path) -> None:
        """A run first seen as done goes idle -> running -> done in one step."""
        path = tmp_home / "training_status.json"
        with V1FileSource(home=tmp_home) as source:
            write(
                path, status="done", epoch=4, total_epochs=4, loss=0.1, message="ok", timestamp=5.0
            )
            source.poll()
        (record,) = recover(tmp_home)
        assert [t.status for t in record.state.timeline] == ["running", "done"]
        assert record.state.anomaly_count == 0

    def test_lifecycle_path(self) -> None:
        """The bridge steps through running only when the lifecycle needs it."""
        assert lifecycle_path("idle", "running") == ["running"]
        assert lifecycle_path("preparing", "cooling_down") == ["running", "cooling_down"]
        assert lifecycle_path("idle", "done") == ["running", "done"]
        assert lifecycle_path("cooling_down", "running") == []
        assert lifecycle_path("running", "running") == []


class TestEvents:
    """What each change of the file becomes."""

    def test_message_restated_and_heartbeat(self, tmp_home: Path) -> None:
        """Same status, new message: a restatement; only a newer timestamp: a heartbeat."""
        path = tmp_home / "training_status.json"
        with V1FileSource(home=tmp_home) as source:
            write(
                path,
                status="running",
                epoch=1,
                total_epochs=2,
                loss=1.0,
                message="a",
                timestamp=100.0,
            )
            source.poll()
            write(
                path,
                status="running",
                epoch=1,
                total_epochs=2,
                loss=1.0,
                message="b",
                timestamp=101.0,
            )
            restated = source.poll()
            write(
                path,
                status="running",
                epoch=1,
                total_epochs=2,
                loss=1.0,
                message="b",
                timestamp=110.0,
            )
            beat = source.poll()
            write(
                path,
                status="running",
                epoch=1,
                total_epochs=2,
                loss=1.0,
                message="b",
                timestamp=111.0,
            )
            too_soon = source.poll()
        assert [(type(e), getattr(e, "message", None)) for e in restated] == [(StatusChanged, "b")]
        assert [type(e) for e in beat] == [Heartbeat]
        assert too_soon == []

    def test_snapshot_without_timestamp_uses_the_clock(self, tmp_home: Path) -> None:
        """No timestamp: the bridge's clock stamps the events, never going back."""
        path = tmp_home / "training_status.json"
        clock = Clock(2_000_000_000.0)
        with V1FileSource(home=tmp_home, clock=clock) as source:
            write(path, status="running", epoch=1, total_epochs=2, loss=None, message="")
            first = source.poll()
            clock.now -= 50
            write(path, status="running", epoch=2, total_epochs=2, loss=None, message="")
            second = source.poll()
        assert {e.timestamp for e in first} == {2_000_000_000.0}
        assert {e.timestamp for e in second} == {2_000_000_000.0}
        assert first[0].training_id == training_id_for(2_000_000_000.0, 1)

    def test_extra_sinks_get_the_same_events(self, tmp_home: Path) -> None:
        """Sinks from factories get every bridged event, one sink per run."""
        path = tmp_home / "training_status.json"
        made: list[RecordingSink] = []

        def factory() -> RecordingSink:
            made.append(RecordingSink())
            return made[-1]

        with V1FileSource(home=tmp_home, sinks=[factory]) as source:
            write(
                path, status="running", epoch=1, total_epochs=1, loss=1.0, message="", timestamp=1.0
            )
            first = source.poll()
            write(path, status="done", epoch=1, total_epochs=1, loss=0.5, message="", timestamp=2.0)
            second = source.poll()
        assert len(made) == 1
        assert made[0].events == first + second
        assert made[0].closed
        log = read_log(recover(tmp_home)[0].path)
        assert log.state.last_seq == made[0].events[-1].seq

    def test_v1_transport_is_refused(self, tmp_home: Path) -> None:
        """The bridge refuses to also write the v1 file it reads."""
        result = pulse(tmp_home, "bridge", "--once", "--transport", "v1")
        assert result.returncode == 2
        assert "v1" in result.stderr


class TestRestart:
    """A restarted bridge continues its run instead of bridging it twice."""

    def test_continue_open_run(self, tmp_home: Path) -> None:
        """Same file, new bridge: the open run goes on in the same log."""
        path = tmp_home / "training_status.json"
        write(path, status="running", epoch=1, total_epochs=2, loss=1.0, message="", timestamp=10.0)
        with V1FileSource(home=tmp_home) as source:
            source.poll()
            first_id = source.training_id
        with V1FileSource(home=tmp_home) as source:
            assert source.poll() == []
            assert source.training_id == first_id
            write(
                path, status="done", epoch=2, total_epochs=2, loss=0.5, message="", timestamp=11.0
            )
            events = source.poll()
        assert events[0].seq > 1
        (record,) = recover(tmp_home)
        assert record.state.status == "done"
        assert record.state.duplicates == 0

    def test_finished_run_is_not_bridged_again(self, tmp_home: Path) -> None:
        """A file still showing an already bridged end starts nothing."""
        path = tmp_home / "training_status.json"
        write(path, status="done", epoch=2, total_epochs=2, loss=0.5, message="ok", timestamp=11.0)
        with V1FileSource(home=tmp_home) as source:
            source.poll()
        with V1FileSource(home=tmp_home) as source:
            assert source.poll() == []
        assert len(recover(tmp_home)) == 1


class TestV2Snapshots:
    """Snapshots written by v2 runs are not bridged."""

    def test_native_run_is_not_bridged(self, tmp_home: Path) -> None:
        """A real v2 training run writing the same file leaves exactly one run in the home."""
        source = V1FileSource(home=tmp_home, interval=0.01)
        stop = threading.Event()
        thread = threading.Thread(target=source.run, args=(stop,), daemon=True)
        thread.start()
        trainer = start_v2_trainer(tmp_home, "complete", epochs=2, steps=10, pause=0.02)
        assert trainer.wait(timeout=60) == 0
        time.sleep(0.1)
        stop.set()
        thread.join(timeout=10)
        runs = recover(tmp_home)
        assert len(runs) == 1
        assert not runs[0].training_id.startswith("v1-")
        assert source.runs_started == 0
        assert source.skipped_v2 > 0


class TestCommand:
    """``pulse bridge`` runs until SIGTERM and reports runs on stderr."""

    def test_bridge_command_with_real_writer(self, tmp_home: Path) -> None:
        """The command bridges the legacy writer's runs and exits 0 on SIGTERM."""
        path = tmp_home / "training_status.json"
        bridge = subprocess.Popen(
            [*PULSE, "bridge", "--home", str(tmp_home), "--interval", "0.01"],
            env=child_env(tmp_home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # The bridge must be polling before the writer starts, and each state must stay
            # longer than a loaded machine may starve the bridge, or it misses whole runs.
            assert bridge.stderr is not None
            first = ""
            while not first.endswith(f"-> {tmp_home}\n"):
                line = bridge.stderr.readline()
                assert line, first
                first += line
            writer = start_v1_writer(path, hold=0.4, pause=0.05)
            assert writer.wait(timeout=120) == 0
            wait_for(lambda: len(recover(tmp_home)) == 4 and recover(tmp_home)[0].terminal)
        finally:
            bridge.send_signal(signal.SIGTERM)
            _out, rest = bridge.communicate(timeout=30)
        err = first + rest
        assert bridge.returncode == 0, err
        assert err.count("started") == 4
        assert "ended done" in err
        assert "ended error" in err
        assert "lost" in err

    def test_once_without_file(self, tmp_home: Path) -> None:
        """``--once`` with no v1 file exits 3 (not found)."""
        result = pulse(tmp_home, "bridge", "--once")
        assert result.returncode == 3
        assert "no v1 snapshot" in result.stderr

    def test_once_bridges_the_current_snapshot(self, tmp_home: Path) -> None:
        """``--once`` bridges what the file shows now; the open run is then lost."""
        at = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
        write(
            tmp_home / "training_status.json",
            status="running",
            epoch=2,
            total_epochs=4,
            loss=0.5,
            message="",
            timestamp="2026-01-01T00:00:00Z",
        )
        result = pulse(tmp_home, "bridge", "--once")
        assert result.returncode == 0, result.stderr
        (record,) = recover(tmp_home)
        assert record.training_id == training_id_for(at, 1)
        assert record.liveness == "lost"


class TestRegistration:
    """The bridge is found by name and builds its extra sinks from transport names."""

    def test_entry_point(self) -> None:
        """``v1file`` in the ``pulse.sources`` group is V1FileSource."""
        from importlib.metadata import entry_points

        (found,) = [ep for ep in entry_points(group="pulse.sources") if ep.name == "v1file"]
        assert found.load() is V1FileSource

    def test_from_transports(self, tmp_home: Path) -> None:
        """Named transports become per-run sinks; unknown names fail at once."""
        path = tmp_home / "training_status.json"
        write(path, status="done", epoch=1, total_epochs=1, loss=0.1, message="", timestamp=5.0)
        with V1FileSource.from_transports(home=tmp_home, transports=["file", "memory"]) as source:
            events = source.poll()
        assert [type(e).__name__ for e in events][-1] == "StatusChanged"
        with pytest.raises(ConfigError, match="unknown transport"):
            V1FileSource.from_transports(home=tmp_home, transports=["nope"])
