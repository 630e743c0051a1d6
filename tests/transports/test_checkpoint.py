"""State checkpoints in a run's log: written by the file writer, used by readers."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from pulse_core.codec import decode, encode
from pulse_core.errors import RunExists
from pulse_core.events import Metrics, Progress, RunMeta, StateCheckpoint, StatusChanged
from pulse_core.reducer import replay
from pulse_core.statecodec import state_from_obj
from pulse_transports import _checkpoint
from pulse_transports._checkpoint import fold_log, last_checkpoint
from pulse_transports.file import FileSink, log_path
from pulse_transports.follow import read_events, read_log
from pulse_transports.history import load_run, recover

TID = "ckpt-run"


def write_run(home: Path, steps: int, *, end: bool = False, max_bytes: int = 8 << 20) -> FileSink:
    """A run of *steps* progress + metrics pairs written through a FileSink."""
    sink = FileSink(home=home, interval=0.0, fsync=False, max_bytes=max_bytes)
    sink.open(TID)
    sink.write(RunMeta(TID, 1, 1.0, total_steps=steps))
    sink.write(StatusChanged(TID, 2, 1.0, "running", "go"))
    seq = 2
    for i in range(steps):
        seq += 1
        sink.write(Progress(TID, seq, 2.0 + i, epoch=1, step=i))
        seq += 1
        sink.write(Metrics(TID, seq, 2.0 + i, loss=1.0 / (i + 1), extra={"acc": i / steps}))
    if end:
        sink.write(StatusChanged(TID, seq + 1, 3.0 + steps, "done", "finished"))
    sink.close()
    return sink


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines()


def checkpoints(path: Path) -> list[StateCheckpoint]:
    found = []
    for line in lines_of(path):
        event = decode(line)
        if isinstance(event, StateCheckpoint):
            found.append(event)
    return found


class TestWriter:
    """The file writer appends checkpoints of its true state."""

    def test_checkpoints_every_so_often_and_each_is_the_fold_before_it(
        self, tmp_home: Path
    ) -> None:
        """Each checkpoint holds the fold of every line before it, and lines counts them."""
        write_run(tmp_home, 3000)
        path = log_path(tmp_home, TID)
        lines = lines_of(path)
        events = [decode(line) for line in lines]
        marks = [i for i, e in enumerate(events) if isinstance(e, StateCheckpoint)]
        assert len(marks) >= 3
        for index in marks:
            mark = events[index]
            assert isinstance(mark, StateCheckpoint)
            assert mark.lines == index
            assert state_from_obj(mark.state) == replay(events[:index])
        # Spaced by at least SPACING times their own size, at most EVERY_BYTES apart + spacing.
        for a, b in itertools.pairwise(marks):
            between = sum(len(line) + 1 for line in lines[a + 1 : b])
            assert between >= _checkpoint.EVERY_BYTES or b - a - 1 >= _checkpoint.EVERY_LINES
        # Checkpoints stay a modest part of the log.
        size = sum(len(lines[i]) + 1 for i in marks)
        assert size < path.stat().st_size / 3

    def test_an_ended_run_ends_with_a_checkpoint(self, tmp_home: Path) -> None:
        """The terminal status is followed by a checkpoint: readers fold no tail."""
        write_run(tmp_home, 3000, end=True)
        path = log_path(tmp_home, TID)
        events = [decode(line) for line in lines_of(path)]
        last = events[-1]
        assert isinstance(last, StateCheckpoint)
        assert isinstance(events[-2], StatusChanged)
        assert last.lines == len(events) - 1
        assert state_from_obj(last.state) == replay(events[:-1])
        found = last_checkpoint(path, TID)
        assert found is not None
        assert found.position.offset == path.stat().st_size
        state, lines, tail = fold_log(path, TID)
        assert (state.status, lines, tail) == ("done", len(events), 0)

    def test_a_short_ended_run_gets_no_checkpoint(self, tmp_home: Path) -> None:
        """Under END_BYTES since the last checkpoint, the end adds none (the tail is cheap)."""
        write_run(tmp_home, 20, end=True)
        path = log_path(tmp_home, TID)
        assert path.stat().st_size < _checkpoint.END_BYTES
        assert checkpoints(path) == []

    def test_no_end_checkpoint_over_lines_of_others(self, tmp_home: Path) -> None:
        """Garbage appended by another process is folded and counted, not hidden by the end."""
        sink = FileSink(home=tmp_home, interval=0.0, fsync=False)
        sink.open(TID)
        sink.write(StatusChanged(TID, 1, 1.0, "running"))
        path = log_path(tmp_home, TID)
        with path.open("ab") as other:
            other.write(b"garbage\n")
        for i in range(300):
            sink.write(Progress(TID, 2 + i, 2.0 + i, step=i))
        assert path.stat().st_size >= _checkpoint.END_BYTES
        sink.write(StatusChanged(TID, 302, 400.0, "done"))
        sink.close()
        assert not [line for line in lines_of(path) if line.startswith(_checkpoint.MARK)]
        [record] = recover(tmp_home, use_index=False)
        assert (record.summary["status"], record.bad_lines) == ("done", 1)

    def test_compaction_writes_the_true_state(self, tmp_home: Path) -> None:
        """After compaction the last checkpoint has every event, not the downsampled fold."""
        sink = write_run(tmp_home, 6000, max_bytes=1024 * 1024)
        assert sink.compactions >= 1
        path = log_path(tmp_home, TID)
        found = last_checkpoint(path, TID)
        assert found is not None
        state, _, _ = fold_log(path, TID)
        assert state.event_count == 2 + 2 * 6000
        assert state.missing == 0
        downsampled = read_log(path, training_id=TID).state
        assert downsampled.missing > 0  # what a full fold of the compacted file says

    def test_reopen_refuses_an_ended_run_from_the_checkpoint(self, tmp_home: Path) -> None:
        """FileSink.open reads only the tail after the last checkpoint and still refuses."""
        write_run(tmp_home, 3000, end=True)
        with pytest.raises(RunExists, match="done"):
            FileSink(home=tmp_home).open(TID)

    def test_reopen_continues_a_lost_run(self, tmp_home: Path) -> None:
        """A lost run's writer continues from the checkpointed state and returns the last seq."""
        write_run(tmp_home, 1500)
        sink = FileSink(home=tmp_home, interval=0.0, fsync=False)
        assert sink.open(TID) == 2 + 2 * 1500
        sink.write(StatusChanged(TID, 3003, 9999.0, "done", "finished"))
        sink.close()
        record = load_run(tmp_home, TID, use_index=False)
        assert record.state.status == "done"
        assert record.state.event_count == 3003


class TestReaders:
    """Readers start from the last checkpoint and fold the same state."""

    def test_recovery_from_the_checkpoint_equals_the_full_fold(self, tmp_home: Path) -> None:
        """Cold recovery (no index) gives the state a full fold gives."""
        write_run(tmp_home, 3000, end=True)
        path = log_path(tmp_home, TID)
        full = read_log(path, training_id=TID).state
        [record] = recover(tmp_home, use_index=False)
        assert record.state == full
        assert record.summary["status"] == "done"

    def test_followers_never_return_checkpoints(self, tmp_home: Path) -> None:
        """The events of a run (hub history, pulse show) hold no checkpoint line."""
        write_run(tmp_home, 3000)
        path = log_path(tmp_home, TID)
        assert checkpoints(path)
        events = read_events(path, TID)
        assert events is not None
        assert not any(isinstance(e, StateCheckpoint) for e in events)
        assert len(events) == 2 + 2 * 3000

    def test_unusable_checkpoints_are_passed_over(self, tmp_home: Path) -> None:
        """Another format, another run or a torn checkpoint line: the reader looks further back."""
        write_run(tmp_home, 3000)
        path = log_path(tmp_home, TID)
        good = last_checkpoint(path, TID)
        assert good is not None
        base = {
            "type": "state_checkpoint",
            "v": 2,
            "training_id": TID,
            "seq": 1,
            "timestamp": 1.0,
            "state": {},
        }
        with path.open("ab") as handle:
            handle.write(orjson.dumps({**base, "format": "1:old"}) + b"\n")
            handle.write(orjson.dumps({**base, "training_id": "other", "format": "x"}) + b"\n")
            handle.write(b'{"type":"state_checkpoint","v":2,"training_id":"ckpt-run","se')
        assert last_checkpoint(path, TID) == good

    def test_a_log_without_checkpoints_is_folded_whole(self, tmp_home: Path) -> None:
        """Logs of older writers have none: the reader folds them from the start."""
        path = log_path(tmp_home, TID)
        path.parent.mkdir(parents=True)
        events = [RunMeta(TID, 1, 1.0), StatusChanged(TID, 2, 1.0, "running")]
        path.write_bytes(b"".join(encode(e) for e in events))
        assert last_checkpoint(path, TID) is None
        state, lines, tail = fold_log(path, TID)
        assert (state.status, lines, tail) == ("running", 2, path.stat().st_size)


class TestCommands:
    """The commands that read a log whole treat checkpoints as what they are."""

    def test_validate_accepts_a_log_with_checkpoints(self, tmp_home: Path) -> None:
        """``pulse validate`` finds nothing wrong with a FileSink log full of checkpoints."""
        write_run(tmp_home, 3000, end=True)
        path = log_path(tmp_home, TID)
        assert len(checkpoints(path)) >= 3
        done = subprocess.run(
            [sys.executable, "-m", "pulse_transports.cli", "validate", str(path)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 errors" in done.stdout
