"""FileSink: one whole-line JSONL log per run, durable where it matters, one writer at a time."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pulse_core.codec import decode
from pulse_core.emitter import TrainingRun
from pulse_core.errors import RunLocked
from pulse_core.events import (
    Dropped,
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_core.reducer import replay
from pulse_transports import file as file_module
from pulse_transports.file import FileSink, last_seq, lock_path, log_path, writer_alive

TID = "file-run-1"


def events_of(path: Path) -> list[Event]:
    return [decode(line) for line in path.read_bytes().splitlines()]


def sample_events(tid: str = TID) -> list[Event]:
    return [
        RunMeta(tid, 1, 1.0, name="x"),
        StatusChanged(tid, 2, 2.0, "running", "go"),
        Progress(tid, 3, 3.0, epoch=1, step=1),
        Metrics(tid, 4, 4.0, loss=0.5),
        Heartbeat(tid, 5, 5.0),
        ErrorReported(tid, 6, 6.0, "CUDA_OOM", "oom"),
        Dropped(tid, 7, 7.0, count=3),
        StatusChanged(tid, 8, 8.0, "error", "oom"),
    ]


class TestLayout:
    """The log lives at <home>/logs/training/<id>.jsonl, one whole JSON line per event."""

    def test_path_and_lines(self, tmp_home: Path) -> None:
        """Every event is one line that decodes back to it; the file ends with a newline."""
        sink = FileSink(home=tmp_home)
        assert sink.open(TID) is None
        for event in sample_events():
            sink.write(event)
        sink.close()
        path = tmp_home / "logs" / "training" / f"{TID}.jsonl"
        assert sink.path == path == log_path(tmp_home, TID)
        assert events_of(path) == sample_events()
        assert path.read_bytes().endswith(b"\n")

    def test_lock_held_while_open(self, tmp_home: Path) -> None:
        """The lock file exists and is held while open; it is gone after close."""
        sink = FileSink(home=tmp_home)
        sink.open(TID)
        assert writer_alive(tmp_home, TID) is True
        sink.close()
        assert not lock_path(tmp_home, TID).exists()
        assert writer_alive(tmp_home, TID) is False
        sink.close()  # idempotent

    def test_bad_arguments(self, tmp_home: Path) -> None:
        """A cap below 4 KiB or a negative interval is refused at construction."""
        with pytest.raises(ValueError, match="max_bytes"):
            FileSink(home=tmp_home, max_bytes=100)
        with pytest.raises(ValueError, match="interval"):
            FileSink(home=tmp_home, interval=-1.0)


class TestDurability:
    """meta/status/error/dropped lines are fsync'ed; progress/metrics/heartbeat are not."""

    def test_fsync_per_kind(self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """fsync follows exactly the durable kinds."""
        calls: list[int] = []
        real = os.fsync

        def counting_fsync(fd: int) -> None:
            calls.append(fd)
            real(fd)

        monkeypatch.setattr(os, "fsync", counting_fsync)
        sink = FileSink(home=tmp_home)
        sink.open(TID)
        synced = []
        for event in sample_events():
            before = len(calls)
            sink.write(event)
            if len(calls) > before:
                synced.append(type(event).__name__)
        sink.close()
        assert synced == ["RunMeta", "StatusChanged", "ErrorReported", "Dropped", "StatusChanged"]

    def test_fsync_off(self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """fsync=False (benchmarks) never fsyncs."""
        calls: list[int] = []
        monkeypatch.setattr(os, "fsync", calls.append)
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open(TID)
        for event in sample_events():
            sink.write(event)
        sink.flush(True)
        sink.close()
        assert calls == []


HOLDER = """
import sys, time
from pulse_transports.file import FileSink
sink = FileSink(home=sys.argv[1])
sink.open(sys.argv[2])
print("ready", flush=True)
sys.stdin.readline()
sink.close()
"""


class TestLock:
    """Two writers for one training_id are refused with a clear RunLocked error."""

    def test_same_process(self, tmp_home: Path) -> None:
        """A second sink in the same process is refused; after close the id is free."""
        first = FileSink(home=tmp_home)
        first.open(TID)
        second = FileSink(home=tmp_home)
        with pytest.raises(RunLocked) as caught:
            second.open(TID)
        message = str(caught.value)
        assert TID in message
        assert f"pid {os.getpid()}" in message
        assert str(log_path(tmp_home, TID)) in message
        first.close()
        second.open(TID)
        second.close()

    def test_across_processes(self, tmp_path: Path, tmp_home: Path) -> None:
        """A live writer in another process fails TrainingRun at start; its death frees the id."""
        holder = tmp_path / "holder.py"
        holder.write_text(textwrap.dedent(HOLDER), encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, str(holder), str(tmp_home), TID],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            assert writer_alive(tmp_home, TID) is True
            with pytest.raises(RunLocked, match=f"pid {proc.pid}"):
                TrainingRun(TID, sinks=[FileSink(home=tmp_home)], env={}, background=False)
            proc.send_signal(signal.SIGKILL)  # the OS releases the lock, whatever the process did
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert writer_alive(tmp_home, TID) is False
        with TrainingRun(TID, sinks=[FileSink(home=tmp_home)], env={}, background=False):
            pass
        assert replay(events_of(log_path(tmp_home, TID))).status == "cancelled"

    def test_lock_file_replaced_between_open_and_flock(
        self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The lock replaced between our open and flock (holder left, a third came): refused."""
        folder = tmp_home / "logs" / "training"
        folder.mkdir(parents=True)
        lock = lock_path(tmp_home, TID)
        lock.write_text("{}", encoding="utf-8")
        real_flock = fcntl.flock
        others: list[int] = []

        def racing_flock(fd: int, op: int) -> Any:
            if not others:
                lock.unlink()  # the old holder lets go ...
                other = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)  # ... a new writer arrives
                real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                others.append(other)
            return real_flock(fd, op)

        monkeypatch.setattr(fcntl, "flock", racing_flock)
        try:
            with pytest.raises(RunLocked):
                FileSink(home=tmp_home).open(TID)
        finally:
            for fd in others:
                os.close(fd)


class TestContinuedLog:
    """A log that already has events is continued after its last seq."""

    def test_open_returns_last_seq_and_run_continues(self, tmp_home: Path) -> None:
        """A second run on a lost run's id starts at last seq + 1; the log replays cleanly."""
        sink = FileSink(home=tmp_home)
        sink.open(TID)
        for event in sample_events()[:5]:  # no terminal status: the writer was lost
            sink.write(event)
        sink.close()
        first = events_of(log_path(tmp_home, TID))
        sink = FileSink(home=tmp_home)
        assert sink.open(TID) == first[-1].seq
        sink.close()
        with TrainingRun(TID, sinks=[FileSink(home=tmp_home)], env={}, background=False):
            pass
        everything = events_of(log_path(tmp_home, TID))
        seqs = [e.seq for e in everything]
        assert seqs == list(range(1, len(everything) + 1))
        assert everything[len(first)].seq == first[-1].seq + 1
        assert isinstance(everything[len(first)], RunMeta)

    def test_torn_tail_from_a_crash(self, tmp_home: Path) -> None:
        """A log ending in half a line: last seq ignores it, the next line starts fresh."""
        sink = FileSink(home=tmp_home)
        sink.open(TID)
        for event in sample_events()[:4]:
            sink.write(event)
        sink.close()
        path = log_path(tmp_home, TID)
        with path.open("ab") as handle:
            handle.write(b'{"type":"progress","training_id":"file-run-1","seq":5,"timest')
        assert last_seq(path) == 4
        sink = FileSink(home=tmp_home)
        assert sink.open(TID) == 4
        sink.write(StatusChanged(TID, 5, 9.0, "done", ""))
        sink.close()
        lines = path.read_bytes().splitlines()
        assert lines[-1].startswith(b'{"type":"status"')
        assert decode(lines[-1]).seq == 5
        good = []
        for line in lines:
            try:
                good.append(decode(line))
            except Exception:  # noqa: BLE001 - the one torn line
                continue
        assert len(good) == 5

    def test_leftover_compaction_tmp_is_removed(self, tmp_home: Path) -> None:
        """A <id>.jsonl.tmp left by a crash during compaction is removed by the next writer."""
        folder = tmp_home / "logs" / "training"
        folder.mkdir(parents=True)
        tmp = folder / f"{TID}.jsonl.tmp"
        tmp.write_bytes(b'{"half": ')
        sink = FileSink(home=tmp_home)
        sink.open(TID)
        sink.close()
        assert not tmp.exists()

    def test_open_twice_is_refused(self, tmp_home: Path) -> None:
        """One FileSink serves one run."""
        sink = FileSink(home=tmp_home)
        sink.open(TID)
        try:
            with pytest.raises(RuntimeError, match="already open"):
                sink.open("other-run")
        finally:
            sink.close()


class TestWritesAfterClose:
    """Writing to a closed sink raises an OSError (the emitter contains it)."""

    def test_write_after_close(self, tmp_home: Path) -> None:
        """EBADF-style OSError, not a crash on a recycled descriptor."""
        sink = FileSink(home=tmp_home)
        sink.open(TID)
        sink.close()
        with pytest.raises(OSError, match="not open"):
            sink.write(sample_events()[0])
        assert file_module.FileSink.name == "file"
