"""The log tells the truth at its seams: a reused id, a deleted log, a foreign line.

Issue 13 items 8 (an ended run's id is refused with RunExists), 9 (a log or
folder deleted or replaced mid-run is recreated with the run restated) and 15
(a log's file name is its run's id; another run's lines are anomalies).
Where the behaviour is about processes the writers are real subprocesses.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import pulse_core
from pulse_core.codec import decode, encode
from pulse_core.emitter import TrainingRun
from pulse_core.errors import PulseError, RunExists
from pulse_core.events import (
    Dropped,
    Event,
    Metrics,
    Progress,
    RunMeta,
    StateCheckpoint,
    StatusChanged,
)
from pulse_transports.file import FileSink, lock_path, log_dir, log_path, writer_alive
from pulse_transports.follow import LogFollower, read_log
from pulse_transports.history import load_run, recover

WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pulse_core.emitter import TrainingRun
    from pulse_core.errors import RunExists
    from pulse_transports.file import FileSink

    home, tid, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    try:
        run = TrainingRun(
            tid, sinks=[FileSink(home=home, interval=0.0, fsync=False)], env={},
            total_epochs=3, heartbeat_interval=0.2,
        )
    except RunExists as exc:
        print("refused:", exc, flush=True)
        sys.exit(7)
    run.status("running", "training")
    for step in range(1, 11):
        run.progress(epoch=1, step=step, total_steps=10)
        run.metrics(loss=1.0 / step)
        time.sleep(0.02)  # paced: the writer thread writes each step's lines
    print("epoch 1", flush=True)
    deadline = time.monotonic() + 60
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    for step in range(1, 11):
        run.progress(epoch=2, step=step, total_steps=10)
        run.metrics(loss=0.05 / step)
    run.status("cooling_down", "saving")
    run.status("done", "finished")
    run.close()
    print("closed", flush=True)
    """
)


def events_of(path: Path) -> list[Event]:
    """The run's events in a log (its state_checkpoint lines are not events)."""
    events = [decode(line) for line in path.read_bytes().splitlines() if line.strip()]
    return [e for e in events if not isinstance(e, StateCheckpoint)]


def pulse(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``pulse`` command line with ``--home``."""
    return subprocess.run(
        [sys.executable, "-m", "pulse_transports.cli", *args, "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


class Writer:
    """A real training process that pauses after epoch 1 until told to go on."""

    def __init__(self, tmp_path: Path, home: Path, tid: str) -> None:
        script = tmp_path / "writer.py"
        script.write_text(WRITER)
        self.go = tmp_path / f"go-{tid}"
        self.go.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(home), tid, str(self.go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_line(self, expected: str) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith(expected), (line, self.proc.stderr and self.proc.stderr.read())

    def release(self) -> None:
        self.go.write_text("go")

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def writers(tmp_path: Path) -> Callable[[Path, str], Writer]:
    made: list[Writer] = []

    def start(home: Path, tid: str) -> Writer:
        writer = Writer(tmp_path, home, tid)
        made.append(writer)
        return writer

    yield start  # type: ignore[misc]
    for writer in made:
        writer.kill()


def ended_log(home: Path, tid: str, status: str = "done") -> Path:
    path = log_path(home, tid)
    path.parent.mkdir(parents=True, exist_ok=True)
    events: list[Event] = [
        RunMeta(tid, 1, 100.0, name="first"),
        StatusChanged(tid, 2, 101.0, "running", "go"),
        Progress(tid, 3, 102.0, epoch=1, step=1),
        StatusChanged(tid, 4, 103.0, status, "the end"),
    ]
    path.write_bytes(b"".join(encode(e) for e in events))
    return path


class TestRunExists:
    """Opening the id of a run that already ended is refused; a lost run may go on."""

    def test_second_process_with_a_finished_id_is_refused(
        self, tmp_home: Path, writers: Callable[[Path, str], Writer]
    ) -> None:
        """Two sequential processes, one id: the second is refused and writes nothing."""
        first = writers(tmp_home, "reused-id")
        first.wait_line("epoch 1")
        first.release()
        code, _, err = first.finish()
        assert code == 0, err
        path = log_path(tmp_home, "reused-id")
        before = path.read_bytes()
        second = writers(tmp_home, "reused-id")
        second.release()
        code, out, err = second.finish()
        assert code == 7, (out, err)
        for part in ("'reused-id'", "done: finished", "new training_id", str(path)):
            assert part in out
        assert path.read_bytes() == before  # nothing no reader would show
        assert not lock_path(tmp_home, "reused-id").exists()
        shown = orjson.loads(pulse(tmp_home, "show", "reused-id", "--json").stdout)
        assert shown["view"]["anomaly_count"] == 0
        assert shown["view"]["status"] == "done"

    @pytest.mark.parametrize("status", ["done", "error", "cancelled"])
    def test_error_names_id_end_and_remedy(self, tmp_home: Path, status: str) -> None:
        """RunExists is a PulseError naming the id, how it ended and what to do."""
        path = ended_log(tmp_home, "ended-run", status)
        sink = FileSink(home=tmp_home)
        with pytest.raises(RunExists) as caught:
            sink.open("ended-run")
        error = caught.value
        assert isinstance(error, PulseError)
        assert (error.training_id, error.status, error.path) == ("ended-run", status, str(path))
        text = str(error)
        for part in (f"({status}: the end)", "delete", "new training_id"):
            assert part in text
        assert writer_alive(tmp_home, "ended-run") is False  # the lock was let go
        sink.close()

    def test_emitter_refuses_at_construction(self, tmp_home: Path) -> None:
        """A TrainingRun on an ended id raises RunExists before writing anything."""
        path = ended_log(tmp_home, "ended-run")
        before = path.read_bytes()
        with pytest.raises(RunExists):
            TrainingRun("ended-run", sinks=[FileSink(home=tmp_home)], env={}, background=False)
        assert path.read_bytes() == before

    def test_exported_from_pulse_core(self) -> None:
        """``from pulse_core import RunExists`` works and is listed in __all__."""
        assert pulse_core.RunExists is RunExists
        assert "RunExists" in pulse_core.__all__

    def test_lost_run_continues(self, tmp_home: Path) -> None:
        """A log without a terminal status (its writer gone) may be continued."""
        path = ended_log(tmp_home, "lost-run")
        lines = path.read_bytes().splitlines()
        path.write_bytes(b"\n".join(lines[:-1]) + b"\n")  # no end: lost
        sink = FileSink(home=tmp_home)
        assert sink.open("lost-run") == 3
        sink.close()

    def test_reopen_ended_for_a_supervisor(self, tmp_home: Path) -> None:
        """reopen_ended=True opens an ended run's log (a supervisor reading its verdict)."""
        ended_log(tmp_home, "ended-run")
        sink = FileSink(home=tmp_home, reopen_ended=True)
        assert sink.open("ended-run") == 4
        sink.close()

    def test_foreign_end_does_not_count(self, tmp_home: Path) -> None:
        """Another run's ``done`` line in the log does not make this run ended."""
        path = log_path(tmp_home, "mine")
        path.parent.mkdir(parents=True)
        path.write_bytes(
            encode(RunMeta("mine", 1, 1.0))
            + encode(StatusChanged("mine", 2, 2.0, "running", ""))
            + encode(StatusChanged("other", 3, 3.0, "done", ""))
        )
        sink = FileSink(home=tmp_home)
        assert sink.open("mine") == 3
        sink.close()


class TestDeletedLog:
    """A log (or its folder) deleted mid-run is recreated with the run restated."""

    @pytest.mark.parametrize("what", ["file", "folder"])
    def test_deleted_mid_run_ends_done(
        self, tmp_home: Path, writers: Callable[[Path, str], Writer], what: str
    ) -> None:
        """The final done, meta, latest state and a dropped note survive; pulse show agrees."""
        tid = f"deleted-{what}"
        writer = writers(tmp_home, tid)
        writer.wait_line("epoch 1")
        if what == "file":
            log_path(tmp_home, tid).unlink()
        else:
            shutil.rmtree(log_dir(tmp_home))
        writer.release()
        code, out, err = writer.finish()
        assert code == 0, err
        assert (out + err).count("was deleted or replaced") == 1  # warned once
        events = events_of(log_path(tmp_home, tid))
        assert isinstance(events[0], RunMeta)
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs))
        dropped = [e for e in events if isinstance(e, Dropped)]
        assert len(dropped) == 1
        assert dropped[0].count > 0
        shown = pulse(tmp_home, "show", tid, "--json")
        assert shown.returncode == 0, shown.stderr
        document = orjson.loads(shown.stdout)
        view = document["view"]
        assert (view["status"], document["liveness"]) == ("done", "ended")
        assert view["message"] == "finished"
        assert view["progress"]["epoch"] == 2
        assert view["stats"]["dropped"] == dropped[0].count
        assert view["anomaly_count"] == 0
        assert [t["status"] for t in view["timeline"]] == [
            "preparing",
            "running",
            "cooling_down",
            "done",
        ]

    def test_lock_and_log_come_back_while_idle(
        self, tmp_home: Path, writers: Callable[[Path, str], Writer]
    ) -> None:
        """A paused writer (heartbeats only) recreates its folder, log and lock within ~1 s."""
        tid = "relocked"
        writer = writers(tmp_home, tid)
        writer.wait_line("epoch 1")
        shutil.rmtree(log_dir(tmp_home))
        assert writer_alive(tmp_home, tid) is False  # readers would call it lost
        wait_for(lambda: writer_alive(tmp_home, tid) is True, "the lock to be taken again")
        wait_for(lambda: log_path(tmp_home, tid).exists(), "the log to be recreated")
        (row,) = orjson.loads(pulse(tmp_home, "ls", "--json").stdout)["runs"]
        assert (row["training_id"], row["status"], row["liveness"]) == (tid, "running", "alive")
        assert row["epoch"] == 1
        writer.release()
        code, _, err = writer.finish()
        assert code == 0, err
        assert writer_alive(tmp_home, tid) is False  # let go at close

    def test_recreated_in_process(self, tmp_home: Path) -> None:
        """The sink restates meta, statuses, latest progress and metrics, then a dropped note."""
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("r")
        sink.write(RunMeta("r", 1, 1.0, name="x"))
        sink.write(StatusChanged("r", 2, 2.0, "preparing", ""))
        sink.write(StatusChanged("r", 3, 3.0, "running", ""))
        for i in range(4, 14, 2):
            sink.write(Progress("r", i, float(i), epoch=1, step=i))
            sink.write(Metrics("r", i + 1, float(i), loss=1.0 / i))
        log_path(tmp_home, "r").unlink()
        sink.write(StatusChanged("r", 14, 14.0, "done", "ok"))
        sink.close()
        events = events_of(log_path(tmp_home, "r"))
        assert [(type(e).__name__, e.seq) for e in events] == [
            ("RunMeta", 1),
            ("StatusChanged", 2),
            ("StatusChanged", 3),
            ("Dropped", 11),
            ("Progress", 12),
            ("Metrics", 13),
            ("StatusChanged", 14),
        ]
        assert isinstance(events[3], Dropped)
        assert events[3].count == 8
        state = read_log(log_path(tmp_home, "r"), training_id="r").state
        assert (state.status, state.step, state.metrics["loss"]) == ("done", 12, 1.0 / 12)
        assert state.anomaly_count == 0
        assert sink.recreations == 1

    def test_replaced_by_a_directory(self, tmp_home: Path) -> None:
        """A directory at the path fails writes (kept by the emitter) until it is gone."""
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("d")
        sink.write(RunMeta("d", 1, 1.0))
        path = log_path(tmp_home, "d")
        path.unlink()
        path.mkdir()
        with pytest.raises(IsADirectoryError):
            sink.write(StatusChanged("d", 2, 2.0, "running", ""))
        with pytest.raises(IsADirectoryError):
            sink.write(Progress("d", 3, 3.0, epoch=1))
        assert path.is_dir()
        assert not any(path.iterdir())  # nothing written into it
        path.rmdir()
        sink.write(StatusChanged("d", 2, 2.0, "running", ""))  # the emitter's retry
        sink.close()
        state = read_log(path, training_id="d").state
        assert (state.status, state.meta is not None) == ("running", True)

    def test_emitter_keeps_events_while_a_directory_blocks(self, tmp_home: Path) -> None:
        """Through the emitter: events held while a directory sits there reach the new log."""
        sink = FileSink(home=tmp_home, fsync=False, interval=0.0)
        run = TrainingRun("e", sinks=[sink], env={}, background=False)
        run.status("running")
        path = log_path(tmp_home, "e")
        path.unlink()
        path.mkdir()
        run.status("cooling_down")
        path.rmdir()
        run.close()
        state = read_log(path, training_id="e").state
        assert state.status == "done"
        assert "cooling_down" in [t.status for t in state.timeline]


class TestOwnerIsTheFileName:
    """A log's file name is its run's id; another run's lines, even the first, are anomalies."""

    @staticmethod
    def foreign_first(home: Path) -> Path:
        path = log_path(home, "mine")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            encode(RunMeta("intruder", 1, 50.0, name="not me"))
            + encode(StatusChanged("intruder", 2, 51.0, "running", ""))
            + encode(RunMeta("mine", 1, 100.0, name="me"))
            + encode(StatusChanged("mine", 2, 101.0, "running", "mine runs"))
            + encode(StatusChanged("intruder", 3, 102.0, "done", ""))
        )
        return path

    def test_follower(self, tmp_home: Path) -> None:
        """A follower told the id folds only that run and returns only its events."""
        path = self.foreign_first(tmp_home)
        with LogFollower(path, training_id="mine") as follower:
            events = follower.poll()
        assert {e.training_id for e in events} == {"mine"}
        state = follower.state
        assert (state.training_id, state.status, state.message) == ("mine", "running", "mine runs")
        assert state.meta is not None
        assert state.meta.name == "me"
        assert [a.kind for a in state.anomalies] == ["foreign_event"] * 3

    def test_recover_and_load_run(self, tmp_home: Path) -> None:
        """ls rows and show's record describe the file's run, however the log starts."""
        self.foreign_first(tmp_home)
        (record,) = recover(tmp_home, use_index=False)
        assert record.summary["training_id"] == "mine"
        assert (record.summary["name"], record.summary["status"]) == ("me", "running")
        one = load_run(tmp_home, "mine")
        assert one.state.training_id == "mine"
        assert one.state.meta is not None
        assert one.state.meta.name == "me"

    def test_cli(self, tmp_home: Path) -> None:
        """pulse ls and pulse show report the file's run, with the foreign lines as anomalies."""
        self.foreign_first(tmp_home)
        (row,) = orjson.loads(pulse(tmp_home, "ls", "--json").stdout)["runs"]
        assert (row["training_id"], row["name"], row["status"]) == ("mine", "me", "running")
        shown = orjson.loads(pulse(tmp_home, "show", "mine", "--json").stdout)
        assert shown["view"]["training_id"] == "mine"
        assert shown["view"]["run"]["name"] == "me"
        assert shown["view"]["anomaly_count"] == 3
