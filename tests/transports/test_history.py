"""Tests of restart recovery: the index, liveness and the state codec."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from strategies import run_events

from pulse_core.codec import encode
from pulse_core.errors import InvalidTrainingId, RunNotFound
from pulse_core.events import (
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_core.projections import to_view
from pulse_core.reducer import replay
from pulse_core.statecodec import decode_state, encode_state
from pulse_transports.file import FileSink, lock_path, log_dir, log_path
from pulse_transports.follow import LogFollower
from pulse_transports.history import (
    WRITE_BATCH,
    HomeNotFound,
    checkpoint_from_bytes,
    checkpoint_to_bytes,
    load_run,
    recover,
    v1_choice,
)
from pulse_transports.index import INDEX_FILE, RunIndex
from pulse_transports.liveness import check_writer, run_liveness
from pulse_transports.position import Checkpoint

T0 = 1_800_000_000.0


def run(tid: str, start: float, *, end: str | None = "done", epochs: int = 3) -> list[Event]:
    """A run's events: meta with a flow link, running, progress+metrics, maybe an end."""
    out: list[Event] = [
        RunMeta(
            training_id=tid,
            seq=1,
            timestamp=start,
            name=f"name of {tid}",
            total_epochs=epochs,
            flow_id="flow",
            flow_run_id=f"fr-{tid}",
            pid=os.getpid(),
            host=socket.gethostname(),
        ),
        StatusChanged(training_id=tid, seq=2, timestamp=start + 1, status="running"),
    ]
    seq = 2
    for epoch in range(1, epochs + 1):
        seq += 1
        out.append(Progress(training_id=tid, seq=seq, timestamp=start + 1 + epoch, epoch=epoch))
        seq += 1
        out.append(Metrics(training_id=tid, seq=seq, timestamp=start + 1 + epoch, loss=1 / epoch))
    if end == "error":
        seq += 1
        out.append(
            ErrorReported(
                training_id=tid,
                seq=seq,
                timestamp=start + 10,
                error_code="CUDA_OOM",
                message="oom",
                is_retryable=True,
            )
        )
    if end is not None:
        seq += 1
        out.append(StatusChanged(training_id=tid, seq=seq, timestamp=start + 10, status=end))
    return out


def write(home: Path, evs: list[Event], mode: str = "wb") -> Path:
    path = log_path(home, evs[0].training_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode) as handle:
        handle.write(b"".join(encode(e) for e in evs))
    return path


class TestRecover:
    """recover() returns every run, newest first, with the right state."""

    def test_never_started_run_has_the_views_duration(self, tmp_home: Path) -> None:
        """A run that never left idle has no duration in its ls row, as in the v2 view."""
        write(tmp_home, run("idle-run", T0, end=None)[:1])
        (record,) = recover(tmp_home, now=T0 + 60.0)
        assert record.state.started_at is None
        assert record.summary["duration"] is None
        view = to_view(record.state, now=T0 + 60.0, liveness=record.liveness)
        assert view["timings"]["duration"] is None

    def test_runs_newest_first_with_states(self, tmp_home: Path) -> None:
        runs = {f"r{i}": run(f"r{i}", T0 + 100 * i) for i in range(5)}
        for evs in runs.values():
            write(tmp_home, evs)
        records = recover(tmp_home, now=T0 + 1000)
        assert [r.training_id for r in records] == ["r4", "r3", "r2", "r1", "r0"]
        for record in records:
            assert record.state == replay(runs[record.training_id])
            assert record.liveness == "ended"
            assert record.summary["status"] == "done"
            assert record.summary["flow"]["flow_run_id"] == f"fr-{record.training_id}"
        assert len(recover(tmp_home, now=T0, limit=2)) == 2

    def test_many_new_logs_are_indexed_in_batches_and_ended_states_kept_encoded(
        self, tmp_home: Path
    ) -> None:
        """More new logs than one batch: every row is written, ended states decode on use."""
        count = WRITE_BATCH * 2 + 3
        runs = {
            f"b{i:03d}": run(f"b{i:03d}", T0 + i, end=None if i == 0 else "done")
            for i in range(count)
        }
        for evs in runs.values():
            write(tmp_home, evs)
        cold = recover(tmp_home, now=T0 + 1000)
        index = RunIndex(tmp_home)
        assert index.open()
        try:
            assert set(index.rows()) == set(runs)
        finally:
            index.close()
        for record in cold:
            # An ended run holds its state encoded, at its own size, until asked for it.
            assert (record._state is None) == (record.liveness == "ended")
            assert record.state == replay(runs[record.training_id])
        warm = recover(tmp_home, now=T0 + 1000)
        assert [r.summary for r in warm] == [r.summary for r in cold]

    def test_warm_index_gives_the_same_answer(self, tmp_home: Path) -> None:
        for i in range(4):
            write(tmp_home, run(f"r{i}", T0 + i, end=None if i == 0 else "done"))
        cold = recover(tmp_home, now=T0 + 20)
        assert (tmp_home / INDEX_FILE).is_file()
        warm = recover(tmp_home, now=T0 + 20)
        assert [r.summary for r in warm] == [r.summary for r in cold]
        assert [r.state for r in warm] == [r.state for r in cold]
        assert [r.position for r in warm] == [r.position for r in cold]

    def test_unchanged_log_uses_the_index_and_a_changed_one_never_does(
        self, tmp_home: Path
    ) -> None:
        evs = run("r1", T0, end=None)
        write(tmp_home, evs)
        recover(tmp_home, now=T0)
        with sqlite3.connect(tmp_home / INDEX_FILE) as db:
            db.execute("UPDATE runs SET summary = replace(summary, 'name of r1', 'marked')")
            db.execute("UPDATE runs SET terminal = 1")
        assert recover(tmp_home, now=T0)[0].summary["name"] == "marked"
        more = [Heartbeat(training_id="r1", seq=len(evs) + 1, timestamp=T0 + 50)]
        write(tmp_home, more, mode="ab")
        record = recover(tmp_home, now=T0 + 50)[0]
        assert record.summary["name"] == "name of r1"
        assert record.state == replay(evs + more)

    def test_grown_log_is_continued(self, tmp_home: Path) -> None:
        evs = run("r1", T0)
        write(tmp_home, evs[:4])
        first = recover(tmp_home, now=T0)[0]
        write(tmp_home, evs[4:], mode="ab")
        second = recover(tmp_home, now=T0)[0]
        assert second.state == replay(evs)
        assert second.position.offset > first.position.offset

    def test_replaced_log_is_rebuilt_from_scratch(self, tmp_home: Path) -> None:
        evs = run("r1", T0, epochs=6)
        path = write(tmp_home, evs)
        recover(tmp_home, now=T0)
        kept = [e for e in evs if e.seq % 3 or not isinstance(e, Progress | Metrics)]
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(encode(e) for e in kept))
        os.replace(tmp, path)
        record = recover(tmp_home, now=T0)[0]
        assert record.state == replay(kept)

    def test_corrupt_index_is_deleted_and_rebuilt(self, tmp_home: Path) -> None:
        write(tmp_home, run("r1", T0))
        (tmp_home / INDEX_FILE).write_bytes(b"this is not a database" * 100)
        records = recover(tmp_home, now=T0)
        assert records[0].state.status == "done"
        with sqlite3.connect(tmp_home / INDEX_FILE) as db:
            assert db.execute("SELECT count(*) FROM runs").fetchone() == (1,)

    def test_index_of_another_format_is_emptied(self, tmp_home: Path) -> None:
        write(tmp_home, run("r1", T0))
        recover(tmp_home, now=T0)
        with sqlite3.connect(tmp_home / INDEX_FILE) as db:
            db.execute("UPDATE info SET value = 'old' WHERE key = 'format'")
            db.execute("UPDATE runs SET state = 'garbage'")
        index = RunIndex(tmp_home)
        assert index.open()
        assert index.rebuilt
        assert index.rows() == {}
        index.close()
        assert recover(tmp_home, now=T0)[0].state == replay(run("r1", T0))

    def test_unreadable_row_is_rebuilt(self, tmp_home: Path) -> None:
        write(tmp_home, run("r1", T0, end=None))
        recover(tmp_home, now=T0)
        with sqlite3.connect(tmp_home / INDEX_FILE) as db:
            db.execute("UPDATE runs SET state = 'garbage'")
        assert recover(tmp_home, now=T0)[0].state == replay(run("r1", T0, end=None))

    def test_unusable_index_still_answers(self, tmp_home: Path) -> None:
        write(tmp_home, run("r1", T0))
        (tmp_home / INDEX_FILE).mkdir()
        assert recover(tmp_home, now=T0)[0].state.status == "done"

    def test_deleted_logs_leave_the_index(self, tmp_home: Path) -> None:
        write(tmp_home, run("r1", T0))
        write(tmp_home, run("r2", T0 + 1))
        recover(tmp_home, now=T0)
        log_path(tmp_home, "r1").unlink()
        assert [r.training_id for r in recover(tmp_home, now=T0)] == ["r2"]
        with sqlite3.connect(tmp_home / INDEX_FILE) as db:
            assert db.execute("SELECT training_id FROM runs").fetchall() == [("r2",)]

    def test_other_files_are_ignored(self, tmp_home: Path) -> None:
        write(tmp_home, run("r1", T0))
        folder = log_dir(tmp_home)
        (folder / "r1.jsonl.tmp").write_bytes(b"x")
        (folder / "bad name!.jsonl").write_bytes(b"x")
        (folder / "notes.txt").write_bytes(b"x")
        (folder / "dir.jsonl").mkdir()
        assert [r.training_id for r in recover(tmp_home, now=T0)] == ["r1"]

    def test_empty_and_missing_homes(self, tmp_home: Path) -> None:
        assert recover(tmp_home) == []
        with pytest.raises(HomeNotFound):
            recover(tmp_home / "missing")

    def test_load_run(self, tmp_home: Path) -> None:
        write(tmp_home, run("r1", T0, end="error"))
        record = load_run(tmp_home, "r1", now=T0)
        assert record.state.status == "error"
        assert record.summary["error"]["error_code"] == "CUDA_OOM"
        with pytest.raises(RunNotFound):
            load_run(tmp_home, "r2")
        with pytest.raises(InvalidTrainingId):
            load_run(tmp_home, "../etc")
        with pytest.raises(HomeNotFound):
            load_run(tmp_home / "missing", "r1")


class TestLiveness:
    """Liveness is ended, lost, stale or alive by the lock, the pid and the silence."""

    def test_lock_held_is_alive_and_free_is_lost(self, tmp_home: Path) -> None:
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("r1")
        for event in run("r1", T0, end=None):
            sink.write(event)
        now = T0 + 6
        record = load_run(tmp_home, "r1", now=now)
        assert (record.liveness, record.writer) == ("alive", True)
        sink.close()
        record = load_run(tmp_home, "r1", now=now)
        assert (record.liveness, record.writer) == ("lost", False)
        assert record.summary["duration"] == pytest.approx(3.0)  # ends at the last event

    def test_terminal_runs_are_ended_even_without_lock(self, tmp_home: Path) -> None:
        write(tmp_home, run("r1", T0, end="cancelled"))
        record = load_run(tmp_home, "r1", now=T0 + 10**6)
        assert (record.liveness, record.writer) == ("ended", None)

    def test_silence_makes_stale_then_lost_and_a_heartbeat_revives(self, tmp_home: Path) -> None:
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("r1")
        evs = run("r1", T0, end=None)
        for event in evs:
            sink.write(event)
        last = evs[-1].timestamp
        limits = {"stale_after": 15.0, "lost_after": 600.0}
        assert load_run(tmp_home, "r1", now=last + 5, **limits).liveness == "alive"
        assert load_run(tmp_home, "r1", now=last + 20, **limits).liveness == "stale"
        assert load_run(tmp_home, "r1", now=last + 601, **limits).liveness == "lost"
        sink.write(Heartbeat(training_id="r1", seq=len(evs) + 1, timestamp=last + 20))
        assert load_run(tmp_home, "r1", now=last + 21, **limits).liveness == "alive"
        sink.close()

    def test_pid_fallback_when_the_lock_cannot_be_checked(self, tmp_home: Path) -> None:
        evs = run("r1", T0, end=None)
        write(tmp_home, evs)
        lock = lock_path(tmp_home, "r1")
        os.symlink(lock.name, lock)  # a symlink loop: the lock cannot be opened
        state = replay(evs)
        assert check_writer(tmp_home, "r1", state) is None  # our own pid runs
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        gone = replay(
            [
                RunMeta(
                    training_id="r1",
                    seq=1,
                    timestamp=T0,
                    pid=int(dead.stdout),
                    host=socket.gethostname(),
                )
            ]
        )
        assert check_writer(tmp_home, "r1", gone) is False
        elsewhere = replay(
            [
                RunMeta(
                    training_id="r1", seq=1, timestamp=T0, pid=int(dead.stdout), host="another-host"
                )
            ]
        )
        assert check_writer(tmp_home, "r1", elsewhere) is None
        assert run_liveness(gone, now=T0, writer=False) == "lost"

    def test_v1_choice_prefers_the_live_run(self, tmp_home: Path) -> None:
        write(tmp_home, run("old-live", T0, end=None))
        write(tmp_home, run("new-done", T0 + 100))
        sink = FileSink(home=tmp_home, fsync=False)
        sink.open("old-live")
        try:
            records = recover(tmp_home, now=T0 + 12)
            assert v1_choice(records).training_id == "old-live"  # type: ignore[union-attr]
        finally:
            sink.close()
        records = recover(tmp_home, now=T0 + 200)
        assert v1_choice(records).training_id == "new-done"  # type: ignore[union-attr]
        assert v1_choice([]) is None


class TestStateCodec:
    """States and checkpoints survive their JSON form unchanged."""

    @given(run_events())
    def test_state_roundtrip(self, evs: list[Event]) -> None:
        state = replay(evs)
        assert decode_state(encode_state(state)) == state

    def test_checkpoint_roundtrip_and_garbage(self, tmp_home: Path) -> None:
        path = write(tmp_home, run("r1", T0, end="error"))
        follower = LogFollower(path)
        follower.poll()
        checkpoint = follower.checkpoint()
        follower.close()
        again = checkpoint_from_bytes(checkpoint_to_bytes(checkpoint))
        assert again == checkpoint
        assert isinstance(again, Checkpoint)
        for junk in (b"", b"[]", b'{"position": {}}', b'{"format": "x"}'):
            with pytest.raises(ValueError, match="checkpoint"):
                checkpoint_from_bytes(junk)
        with pytest.raises(ValueError, match="stored state"):
            decode_state(b'{"status": 1, "nope": 2}')


class TestFollowerEquivalence:
    """Any event stream, cut at any byte, folds as a plain replay does."""

    @given(run_events(max_size=30))
    def test_chunked_reading_equals_replay(self, evs: list[Event]) -> None:
        import tempfile

        data = b"".join(encode(e) for e in evs)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "x.jsonl"
            path.write_bytes(b"")
            follower = LogFollower(path)
            step = max(1, len(data) // 7)
            for start in range(0, len(data), step):
                with path.open("ab") as handle:
                    handle.write(data[start : start + step])
                follower.poll()
            follower.close()
        assert follower.state == replay(evs)
        assert follower.bad_lines == 0
