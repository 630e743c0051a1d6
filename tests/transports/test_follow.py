"""Tests of the log follower: offsets, torn and bad lines, replacement, notifications."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import pytest

from pulse_core.codec import encode
from pulse_core.events import Event, Heartbeat, Metrics, Progress, RunMeta, StatusChanged
from pulse_core.projections import to_view
from pulse_core.reducer import replay
from pulse_transports.file import FileSink
from pulse_transports.follow import LogFollower, follow, read_log
from pulse_transports.notify import Notifier
from pulse_transports.position import Checkpoint, Position, position_matches

TID = "follow-run"


def events(count: int, start: int = 1, tid: str = TID) -> list[Event]:
    """A run: meta, running, then progress/metrics pairs up to *count* events."""
    out: list[Event] = []
    for seq in range(start, start + count):
        ts = 1_800_000_000.0 + seq
        if seq == 1:
            out.append(RunMeta(training_id=tid, seq=seq, timestamp=ts, total_epochs=5))
        elif seq == 2:
            out.append(StatusChanged(training_id=tid, seq=seq, timestamp=ts, status="running"))
        elif seq % 2:
            out.append(Metrics(training_id=tid, seq=seq, timestamp=ts, loss=1.0 / seq))
        else:
            out.append(Progress(training_id=tid, seq=seq, timestamp=ts, epoch=1 + seq // 20))
    return out


def lines(evs: list[Event]) -> bytes:
    return b"".join(encode(e) for e in evs)


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as handle:
        handle.write(data)


@pytest.fixture
def log(tmp_path: Path) -> Path:
    folder = tmp_path / "logs" / "training"
    folder.mkdir(parents=True)
    return folder / f"{TID}.jsonl"


class TestReading:
    """A follower folds exactly what a plain replay of the same lines folds."""

    def test_whole_file_matches_replay(self, log: Path) -> None:
        evs = events(50)
        log.write_bytes(lines(evs))
        follower = read_log(log)
        assert follower.state == replay(evs)
        assert follower.bad_lines == 0
        assert follower.lines == 50

    def test_appends_are_read_incrementally(self, log: Path) -> None:
        evs = events(30)
        log.write_bytes(lines(evs[:10]))
        follower = LogFollower(log)
        assert len(follower.poll()) == 10
        assert follower.poll() == []
        append(log, lines(evs[10:]))
        assert [e.seq for e in follower.poll()] == list(range(11, 31))
        assert follower.state == replay(evs)
        follower.close()

    def test_empty_and_missing_files(self, log: Path) -> None:
        follower = LogFollower(log)
        assert follower.poll() == []
        assert follower.deleted
        log.write_bytes(b"")
        assert follower.poll() == []
        assert not follower.deleted
        append(log, lines(events(3)))
        assert len(follower.poll()) == 3
        follower.close()


class TestTornAndBadLines:
    """Partial, garbage, binary, blank and over-long lines never stop reading."""

    def test_partial_line_waits_for_its_newline(self, log: Path) -> None:
        evs = events(4)
        data = lines(evs)
        cut = len(data) - 10
        log.write_bytes(data[:cut])
        follower = LogFollower(log)
        assert [e.seq for e in follower.poll()] == [1, 2, 3]
        assert follower.pending
        offset = follower.offset
        append(log, data[cut:])
        assert [e.seq for e in follower.poll()] == [4]
        assert follower.offset == len(data) > offset
        assert follower.bad_lines == 0
        follower.close()

    def test_torn_line_of_a_dead_writer_is_counted_once(self, log: Path) -> None:
        evs = events(5)
        log.write_bytes(lines(evs[:4]) + encode(evs[4])[:20])
        follower = LogFollower(log)
        follower.poll()
        follower.settle()
        follower.settle()
        assert follower.bad_lines == 1
        assert "torn last line" in follower.bad[0].reason
        # A restarted writer ends the fragment with a newline and goes on.
        append(log, b"\n" + lines(events(2, start=5)))
        assert [e.seq for e in follower.poll()] == [5, 6]
        assert follower.bad_lines == 1
        follower.close()

    def test_whole_event_without_newline_is_applied_when_settled(self, log: Path) -> None:
        evs = events(3)
        log.write_bytes(lines(evs)[:-1])
        follower = read_log(log)
        assert follower.last_seq == 3
        assert follower.bad_lines == 0

    def test_garbage_binary_and_blank_lines_are_skipped_and_counted(
        self, log: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        evs = events(6)
        parts = [encode(e) for e in evs]
        parts.insert(2, b"this is not json\n")
        parts.insert(4, b"\x00\xff\xfe binary \x80\n")
        parts.insert(5, b"\n")
        parts.insert(6, b'{"type":"progress"}\n')
        log.write_bytes(b"".join(parts))
        follower = read_log(log)
        assert follower.state == replay(evs)
        assert follower.bad_lines == 3
        assert follower.blank_lines == 1
        assert [b.line for b in follower.bad] == [3, 5, 7]
        first = follower.bad[0]
        assert first.offset == len(parts[0]) + len(parts[1])
        assert "not valid JSON" in first.reason

    def test_bad_line_warning_names_file_and_offset(self, log: Path) -> None:
        # In a fresh process: structlog caches loggers once configured (the CLI
        # tests configure it), so in-process capture would depend on test order.
        good = encode(events(1)[0])
        log.write_bytes(good + b"garbage\n")
        code = "import sys; from pulse_transports.follow import read_log; read_log(sys.argv[1])"
        done = subprocess.run(
            [sys.executable, "-c", code, str(log)], capture_output=True, text=True, check=True
        )
        output = done.stdout + done.stderr
        assert "warning" in output
        assert "pulse log line skipped" in output
        assert f"file={log}" in output
        assert f"offset={len(good)}" in output

    def test_fifty_megabyte_line_is_skipped_in_bounded_memory(self, log: Path) -> None:
        evs = events(4)
        with log.open("wb") as handle:
            handle.write(lines(evs[:2]))
            block = b"x" * (1 << 20)
            for _ in range(50):
                handle.write(block)
            handle.write(b"\n")
            handle.write(lines(evs[2:]))
        tracemalloc.start()
        try:
            follower = read_log(log)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert follower.state == replay(evs)
        assert follower.bad_lines == 1
        assert "longer than" in follower.bad[0].reason
        assert peak < 8 * (1 << 20)

    def test_overlong_line_still_being_written(self, log: Path) -> None:
        follower = LogFollower(log, max_line=1000)
        log.write_bytes(encode(events(1)[0]) + b"y" * 600)
        follower.poll()
        append(log, b"y" * 600)
        follower.poll()
        assert follower.bad_lines == 1
        append(log, b"y" * 600 + b"\n" + lines(events(2, start=2)))
        assert [e.seq for e in follower.poll()] == [2, 3]
        assert follower.bad_lines == 1
        follower.close()


class TestReplacement:
    """Compaction, truncation and deletion under a follower keep the state right."""

    def test_compaction_while_following_ends_in_the_same_state(self, log: Path) -> None:
        home = log.parent.parent.parent
        sink = FileSink(home=home, max_bytes=4096, fsync=False)
        sink.open(TID)
        evs = events(400)
        follower = LogFollower(log)
        seen: list[Event] = []
        for event in evs:
            sink.write(event)
            if event.seq % 7 == 0:
                seen += follower.poll()
        sink.close()
        seen += follower.poll()
        assert sink.compactions > 0
        assert follower.replaced > 0
        assert [e.seq for e in seen] == list(range(1, 401))
        assert follower.state == replay(evs)
        follower.close()

    def test_truncation_rereads_without_applying_twice(self, log: Path) -> None:
        evs = events(20)
        log.write_bytes(lines(evs[:15]))
        follower = LogFollower(log)
        follower.poll()
        log.write_bytes(lines(evs[:5]))  # same inode, shorter
        assert follower.poll() == []
        append(log, lines(evs[15:]))
        follower.poll()
        assert follower.replaced == 1
        assert follower.skipped == 5
        assert follower.state == replay(evs)
        follower.close()

    def test_deleted_log_keeps_state_and_picks_up_a_new_file(self, log: Path) -> None:
        evs = events(10)
        log.write_bytes(lines(evs[:6]))
        follower = LogFollower(log)
        follower.poll()
        append(log, lines(evs[6:8]))
        log.unlink()
        assert [e.seq for e in follower.poll()] == [7, 8]
        assert follower.deleted
        log.write_bytes(lines(evs))  # recreated (e.g. restored), seqs continue
        assert [e.seq for e in follower.poll()] == [9, 10]
        assert not follower.deleted
        assert follower.state == replay(evs)
        follower.close()


class TestCheckpoint:
    """A checkpoint resumes a follower exactly where it stopped."""

    def test_resume_at_offset(self, log: Path) -> None:
        evs = events(40)
        log.write_bytes(lines(evs[:25]))
        first = LogFollower(log)
        first.poll()
        checkpoint = first.checkpoint()
        first.close()
        assert position_matches(log, checkpoint.position)
        append(log, lines(evs[25:]))
        second = LogFollower(log, checkpoint=checkpoint)
        assert [e.seq for e in second.poll()] == list(range(26, 41))
        assert second.skipped == 0
        assert to_view(second.state, now=0) == to_view(replay(evs), now=0)
        second.close()

    def test_resume_after_the_file_was_replaced(self, log: Path) -> None:
        evs = events(30)
        log.write_bytes(lines(evs[:20]))
        first = LogFollower(log)
        first.poll()
        checkpoint = first.checkpoint()
        first.close()
        tmp = log.with_name(log.name + ".tmp")
        tmp.write_bytes(lines(evs[:20:2]) + lines(evs[21:]))  # downsampled + more
        os.replace(tmp, log)
        assert not position_matches(log, checkpoint.position)
        second = LogFollower(log, checkpoint=checkpoint)
        second.poll()
        assert second.state == replay(evs[:20] + evs[21:])
        second.close()

    def test_position_roundtrip(self) -> None:
        position = Position(offset=10, line=2, last_seq=3, inode=4, device=5, fingerprint="ab")
        assert Position.from_dict({**position.to_dict(), "future": 1}) == position
        assert Checkpoint(position, replay(events(3))).position == position


class TestNotifier:
    """A notifier wakes a waiting reader soon after a change, by notification or polling."""

    @pytest.mark.parametrize("notifications", [True, False])
    def test_wakes_on_append(self, log: Path, notifications: bool) -> None:
        log.write_bytes(b"")
        with Notifier(log.parent, notifications=notifications) as notifier:
            assert notifier.mode == ("notify" if notifications else "polling")
            timer = threading.Timer(0.2, append, (log, lines(events(1))))
            timer.start()
            follower = LogFollower(log)
            deadline = time.monotonic() + 10
            got: list[Event] = []
            while not got and time.monotonic() < deadline:
                notifier.wait(1.0)
                got = follower.poll()
            timer.join()
            follower.close()
        assert [e.seq for e in got] == [1]

    def test_polling_forced_by_environment(
        self, log: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PULSE_FOLLOW_POLLING", "1")
        with Notifier(log.parent) as notifier:
            assert notifier.mode == "polling"

    def test_missing_folder_polls(self, tmp_path: Path) -> None:
        with Notifier(tmp_path / "nope") as notifier:
            assert notifier.mode == "polling"
            assert notifier.wait(0.01)


class TestFollowGenerator:
    """follow() yields new events as a writer thread appends them, then stops."""

    def test_follow_sees_a_writer_thread(self, log: Path) -> None:
        evs = events(20)
        log.write_bytes(b"")
        stop = threading.Event()

        def writer() -> None:
            for event in evs:
                append(log, encode(event))
                time.sleep(0.005)

        thread = threading.Thread(target=writer)
        seen: list[Event] = []
        deadline = time.monotonic() + 20
        states = []
        for index, (follower, new) in enumerate(follow(log, stop=stop, tick=0.2)):
            if index == 0:
                thread.start()
            states.append(follower.state)
            seen += new
            if len(seen) == len(evs) or time.monotonic() > deadline:
                stop.set()
        thread.join()
        assert [e.seq for e in seen] == list(range(1, 21))
        assert states[-1] == replay(evs)

    def test_heartbeat_only_runs_are_followed(self, log: Path) -> None:
        beat = Heartbeat(training_id=TID, seq=1, timestamp=1.0)
        log.write_bytes(encode(beat))
        follower = read_log(log)
        assert follower.state.last_event_at == 1.0
