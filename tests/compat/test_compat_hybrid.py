"""Hybrid mode: v2 data wins for a run, the v1 snapshot fills in, no run is shown twice."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from compatkit import start_v2_trainer, wait_for

from pulse_core.emitter import TrainingRun
from pulse_core.events import Metrics, Progress, RunMeta, StatusChanged
from pulse_core.testing import FakeClock
from pulse_transports.file import FileSink
from pulse_transports.history import recover
from pulse_transports.v1 import (
    V1_ONLY_ID,
    HybridReader,
    InvalidSnapshot,
    V1FileSource,
    V1SnapshotSink,
    find_owner,
    heal_v1_snapshot,
    map_status,
    parse_snapshot,
    parse_timestamp,
    read_snapshot,
)


def write(path: Path, **snapshot: Any) -> None:
    path.write_text(json.dumps(snapshot), "utf-8")


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def finished_run(home: Path, tid: str, start: float, *, end: bool = True) -> TrainingRun:
    """A v2 run with the default pair of sinks (log + v1 file), on a fake clock."""
    clock = FakeClock(start)
    v1 = V1SnapshotSink(home=home, background=False, clock=clock.monotonic)
    run = TrainingRun(
        tid,
        sinks=[FileSink(home=home), v1],
        clock=clock.monotonic,
        wall=clock.time,
        background=False,
        env={},
        total_epochs=3,
    )
    run.status("running", "training")
    for epoch in (1, 2, 3):
        clock.advance(2.0)
        run.progress(epoch=epoch)
        run.metrics(loss=1.0 / epoch)
    clock.advance(1.0)
    if end:
        run.close()
    else:
        v1.flush(True)
    return run


class TestSameRun:
    """A run with a v2 log and a v1 snapshot is shown once, from its v2 data."""

    def test_finished_run(self, tmp_home: Path) -> None:
        """A finished v2 run owns the snapshot it wrote: one run, source v2."""
        finished_run(tmp_home, "run-a", 1_800_000_000.0)
        runs = HybridReader(tmp_home).runs(now=1_800_000_100.0)
        assert [(r.training_id, r.source, r.in_v1_file) for r in runs] == [("run-a", "v2", True)]
        assert runs[0].snapshot is not None
        assert runs[0].snapshot.status == "done"
        assert runs[0].view(now=1_800_000_100.0)["status"] == "done"

    def test_live_run_from_a_real_process(self, tmp_home: Path) -> None:
        """While a real training process runs, the reader never shows it twice."""
        process = start_v2_trainer(tmp_home, "complete", epochs=3, steps=20, pause=0.02)
        seen: set[tuple[str, str]] = set()
        reader = HybridReader(tmp_home)
        try:
            wait_for((tmp_home / "training_status.json").exists, timeout=30)
            while process.poll() is None:
                runs = reader.runs()
                assert len(runs) == 1, [(r.training_id, r.source) for r in runs]
                seen.add((runs[0].source, runs[0].summary["status"]))
                time.sleep(0.02)
        finally:
            assert process.wait(timeout=60) == 0
        (final,) = reader.runs()
        assert (final.source, final.in_v1_file, final.liveness) == ("v2", True, "ended")
        assert ("v2", "running") in seen
        assert {source for source, _ in seen} == {"v2"}

    def test_older_v2_run_and_newer_v1_only_snapshot(self, tmp_home: Path) -> None:
        """A snapshot from after every v2 run is one more run, source v1."""
        finished_run(tmp_home, "run-a", 1_800_000_000.0)
        write(
            tmp_home / "training_status.json",
            status="training",
            epoch=1,
            total_epochs=9,
            loss=2.0,
            message="legacy",
            timestamp=iso(1_800_000_500.0),
        )
        runs = HybridReader(tmp_home).runs(now=1_800_000_505.0)
        assert [(r.training_id, r.source, r.in_v1_file) for r in runs] == [
            (V1_ONLY_ID, "v1", True),
            ("run-a", "v2", False),
        ]
        only = runs[0]
        assert only.liveness == "alive"
        assert only.v1["status"] == "training"  # a v1 run's own words, as it wrote them
        assert only.summary["status"] == "running"
        assert only.summary["source"] == "v1"
        assert only.view(now=1_800_000_505.0)["progress"]["total_epochs"] == 9

    def test_bridged_run_owns_its_snapshot(self, tmp_home: Path) -> None:
        """A bridged v1 run is the v2 run of the snapshot it came from."""
        path = tmp_home / "training_status.json"
        write(path, status="running", epoch=2, total_epochs=5, loss=0.5, message="", timestamp=1e9)
        with V1FileSource(home=tmp_home) as source:
            source.poll()
            runs = HybridReader(tmp_home).runs(now=1e9 + 1)
            assert [(r.source, r.in_v1_file) for r in runs] == [("v2", True)]
            assert runs[0].training_id == source.training_id

    def test_parallel_runs_pick_the_exact_one(self, tmp_home: Path) -> None:
        """Of two runs alive at the snapshot's time, the one whose v1 view equals it wins."""
        a = finished_run(tmp_home, "run-a", 1_800_000_000.0, end=False)
        b = finished_run(tmp_home, "run-b", 1_800_000_000.5, end=False)
        snapshot = read_snapshot(tmp_home / "training_status.json")
        assert snapshot is not None
        owner = find_owner(snapshot, recover(tmp_home, now=1_800_000_008.0), now=1_800_000_008.0)
        assert owner is not None
        assert owner.training_id == "run-b"
        a.close()
        b.close()


class TestV1Only:
    """A snapshot no v2 run wrote is shown as one v1-only run with honest liveness."""

    def test_fresh_snapshot_is_alive(self, tmp_home: Path) -> None:
        """No logs at all: the snapshot alone is a run."""
        write(
            tmp_home / "training_status.json",
            status="running",
            epoch=1,
            total_epochs=2,
            loss=None,
            message="",
            timestamp=1000.0,
        )
        (run,) = HybridReader(tmp_home).runs(now=1001.0)
        assert (run.training_id, run.source, run.liveness) == (V1_ONLY_ID, "v1", "alive")
        assert run.record is None
        assert run.state.status == "running"

    def test_silent_snapshot_is_stale_then_lost(self, tmp_home: Path) -> None:
        """A running snapshot goes stale after 15 s, lost after 600 s -- then shows error."""
        write(
            tmp_home / "training_status.json",
            status="running",
            epoch=1,
            total_epochs=2,
            loss=None,
            message="",
            timestamp=1000.0,
        )
        reader = HybridReader(tmp_home)
        assert reader.runs(now=1020.0)[0].liveness == "stale"
        (lost,) = reader.runs(now=1700.0)
        assert lost.liveness == "lost"
        assert lost.v1["status"] == "error"
        assert lost.v1["message"].startswith("training process lost")
        assert heal_v1_snapshot(tmp_home, now=1700.0) is False  # v1 writers are never overwritten

    def test_no_snapshot_no_home(self, tmp_path: Path) -> None:
        """A missing home and file give no runs and no v1 slot."""
        reader = HybridReader(tmp_path / "missing")
        assert reader.runs() == []
        assert reader.v1() is None

    def test_invalid_snapshot_is_ignored(self, tmp_home: Path) -> None:
        """A torn snapshot file adds nothing."""
        (tmp_home / "training_status.json").write_text('{"status": "runn')
        assert HybridReader(tmp_home).runs() == []


class TestV1Slot:
    """The v1 slot shows the most recently active live run, honestly."""

    def test_live_v1_only_beats_ended_v2(self, tmp_home: Path) -> None:
        """A live v1 writer is preferred to a v2 run that ended before it."""
        finished_run(tmp_home, "run-a", 1_800_000_000.0)
        write(
            tmp_home / "training_status.json",
            status="running",
            epoch=1,
            total_epochs=2,
            loss=None,
            message="",
            timestamp=1_800_000_100.0,
        )
        slot = HybridReader(tmp_home).v1(now=1_800_000_101.0)
        assert slot is not None
        assert slot["status"] == "running"

    def test_lost_v2_run_is_error(self, tmp_home: Path) -> None:
        """A v2 run whose writer is gone is shown as error in the slot and healed in the file."""
        events = [
            RunMeta("run-a", 1, 1000.0, total_epochs=3),
            StatusChanged("run-a", 2, 1001.0, status="running", message="training"),
            Progress("run-a", 3, 1002.0, epoch=3, total_epochs=3),
            Metrics("run-a", 4, 1003.0, loss=0.25),
        ]
        sinks = [FileSink(home=tmp_home), V1SnapshotSink(home=tmp_home, background=False)]
        for sink in sinks:
            sink.open("run-a")
            for event in events:
                sink.write(event)
            sink.close()  # the writer is gone without an end: its lock is free
        now = 1010.0
        slot = HybridReader(tmp_home).v1(now=now)
        assert slot is not None
        assert slot["status"] == "error"
        raw = json.loads((tmp_home / "training_status.json").read_text())
        assert raw["status"] == "running"
        assert HybridReader(tmp_home).heal(now=now) is True
        healed = json.loads((tmp_home / "training_status.json").read_text())
        assert healed == {**raw, "status": "error", "message": healed["message"]}
        assert healed["message"].startswith("training process lost")


class TestParsing:
    """What the reader accepts in a v1 snapshot."""

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2026-01-01T00:00:00Z", 1767225600.0),
            ("2026-01-01T00:00:00.250Z", 1767225600.25),
            ("2026-01-01T01:00:00+01:00", 1767225600.0),
            (1767225600, 1767225600.0),
            (1767225600.5, 1767225600.5),
            (1767225600500, 1767225600.5),
            ("1767225600.5", 1767225600.5),
            (None, None),
            (True, None),
            ("yesterday", None),
            (-5, None),
            (float("nan"), None),
            ([], None),
        ],
    )
    def test_timestamps(self, value: object, expected: float | None) -> None:
        """ISO text (Z, offsets), seconds, milliseconds and numeric text are read."""
        assert parse_timestamp(value) == expected

    def test_naive_iso_is_local_time(self) -> None:
        """An ISO string without offset is this machine's local time."""
        moment = datetime(2026, 1, 1, 12, 0, 0)
        assert parse_timestamp(moment.isoformat()) == moment.timestamp()

    @pytest.mark.parametrize(
        ("word", "status"),
        [
            ("completed", "done"),
            ("Failed", "error"),
            ("in-progress", "running"),
            ("canceled", "cancelled"),
            ("cooling down", "cooling_down"),
            ("running", "running"),
            ("thinking", None),
        ],
    )
    def test_status_words(self, word: str, status: str | None) -> None:
        """Old status words map to the v2 lifecycle; unknown ones to None."""
        assert map_status(word) == status

    @pytest.mark.parametrize(
        "data", [b"", b"{", b"[1, 2]", b'{"epoch": 1}', b'{"status": 3}', b'{"status": " "}']
    )
    def test_unusable(self, data: bytes) -> None:
        """Not JSON, not an object, or no status string: InvalidSnapshot."""
        with pytest.raises(InvalidSnapshot):
            parse_snapshot(data)

    def test_lenient_fields(self) -> None:
        """Odd field values are dropped, not fatal."""
        snap = parse_snapshot(
            b'{"status": "running", "epoch": "3", "total_epochs": 2.0, "loss": "nan", '
            b'"message": null, "extra": 1}'
        )
        assert (snap.epoch, snap.total_epochs, snap.loss, snap.message) == (3, 2, None, "")
        assert snap.timestamp is None
        assert set(snap.data) == {"status", "epoch", "total_epochs", "loss", "message", "timestamp"}
