"""A real FileSink whose disk fails: ENOSPC, EIO, EACCES, torn writes, failed fsync/rename."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pulse_core.codec import decode
from pulse_core.emitter import TrainingRun
from pulse_core.errors import DecodeError
from pulse_core.events import Dropped, ErrorReported, Event, RunMeta, StatusChanged
from pulse_core.reducer import replay
from pulse_core.testing import FakeClock, RecordingSink
from pulse_transports import file as file_module
from pulse_transports.file import FileSink, log_path
from pulse_transports.v1 import V1SnapshotSink


class Disk:
    """Makes os calls on files under *root* fail on demand (other files are untouched)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        self.root = str(root)
        self.write_error: int | None = None
        self.partial_next = False
        self.fsync_errors = 0
        self.open_error: int | None = None
        self.replace_error: int | None = None
        self.failed_writes = 0
        self._write, self._fsync, self._open, self._replace = (
            os.write,
            os.fsync,
            os.open,
            os.replace,
        )
        monkeypatch.setattr(os, "write", self.write)
        monkeypatch.setattr(os, "fsync", self.fsync)
        monkeypatch.setattr(os, "open", self.open)
        monkeypatch.setattr(os, "replace", self.replace)

    def _ours(self, fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").startswith(self.root)
        except OSError:
            return False

    def write(self, fd: int, data: Any) -> int:
        if self._ours(fd):
            if self.partial_next:
                self.partial_next = False
                self.write_error = errno.ENOSPC  # the rest of the line does not fit
                return self._write(fd, bytes(data)[: len(data) // 2])
            if self.write_error is not None:
                self.failed_writes += 1
                raise OSError(self.write_error, os.strerror(self.write_error))
        return self._write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.fsync_errors and self._ours(fd):
            self.fsync_errors -= 1
            raise OSError(errno.EIO, "Input/output error")
        self._fsync(fd)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kw: Any) -> int:
        if self.open_error is not None and str(path).startswith(self.root):
            raise OSError(self.open_error, os.strerror(self.open_error), str(path))
        return self._open(path, flags, mode, **kw)

    def replace(self, src: Any, dst: Any, **kw: Any) -> None:
        if self.replace_error is not None and str(dst).startswith(self.root):
            raise OSError(self.replace_error, os.strerror(self.replace_error))
        self._replace(src, dst, **kw)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch, tmp_home: Path) -> Disk:
    """Fault injection on files under the test's home."""
    return Disk(monkeypatch, tmp_home)


def read_lines(path: Path) -> tuple[list[Event], int]:
    """The decodable events of a log and the number of bad lines."""
    events: list[Event] = []
    bad = 0
    for line in path.read_bytes().splitlines():
        try:
            events.append(decode(line))
        except DecodeError:
            bad += 1
    return events, bad


def train(run: TrainingRun, clock: FakeClock, steps: int, start: int = 0) -> None:
    for step in range(start, start + steps):
        run.progress(epoch=1 + step // 100, total_epochs=50, step=step % 100, total_steps=100)
        run.metrics(loss=1.0 / (step + 1))
        clock.advance(0.01)
        if step % 5 == 0:
            run.tick()


def recover(run: TrainingRun, clock: FakeClock) -> None:
    for _ in range(20):
        clock.advance(1.0)
        run.tick()


class TestWriteFailures:
    """Failing writes to the log never reach the loop; the log comes out whole and in order."""

    @pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS])
    def test_failing_writes_for_a_while(
        self,
        code: int,
        disk: Disk,
        tmp_home: Path,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
    ) -> None:
        """The disk fails mid-run (status and error included), then recovers."""
        run = make_run("disk-1", sinks=[FileSink(home=tmp_home)])
        run.status("running", "go")
        train(run, clock, 300)
        disk.write_error = code
        train(run, clock, 300, start=300)
        run.status("running", "while the disk is full")
        run.error("SINK_FAILURE", "noted while failing", fatal=False)
        train(run, clock, 300, start=600)
        assert run.degraded
        assert disk.failed_writes > 0
        disk.write_error = None
        recover(run, clock)
        assert not run.degraded
        train(run, clock, 100, start=900)
        run.close()
        events, bad = read_lines(log_path(tmp_home, "disk-1"))
        assert bad == 0
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs))
        messages = [e.message for e in events if isinstance(e, StatusChanged)]
        assert messages == ["starting", "go", "while the disk is full", "finished"]
        assert [e.message for e in events if isinstance(e, ErrorReported)] == [
            "noted while failing"
        ]
        state = replay(events)
        assert state.anomalies == ()
        assert state.status == "done"
        assert state.step == 99
        assert state.epoch == 10

    def test_torn_write_leaves_one_bad_line(
        self,
        disk: Disk,
        tmp_home: Path,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
    ) -> None:
        """Half a status line goes out, then ENOSPC: the fragment is its own bad line."""
        run = make_run("disk-2", sinks=[FileSink(home=tmp_home)])
        run.status("running")
        train(run, clock, 100)
        disk.partial_next = True
        run.status("cooling_down", "checkpoint")
        disk.write_error = None
        recover(run, clock)
        run.close()
        path = log_path(tmp_home, "disk-2")
        events, bad = read_lines(path)
        assert bad == 1
        assert path.read_bytes().endswith(b"\n")
        assert b"\n\n" not in path.read_bytes()
        assert [e.status for e in events if isinstance(e, StatusChanged)] == [
            "preparing",
            "running",
            "cooling_down",
            "done",
        ]
        assert replay(events).anomalies == ()

    def test_fsync_failure_does_not_duplicate(
        self,
        disk: Disk,
        tmp_home: Path,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
    ) -> None:
        """A status line whose fsync fails is fsync'ed again on retry, not written twice."""
        run = make_run("disk-3", sinks=[FileSink(home=tmp_home)])
        disk.fsync_errors = 2
        run.status("running", "once")
        assert run.degraded
        recover(run, clock)
        assert not run.degraded
        run.close()
        events, bad = read_lines(log_path(tmp_home, "disk-3"))
        assert bad == 0
        assert [e.message for e in events if isinstance(e, StatusChanged)].count("once") == 1
        assert replay(events).duplicates == 0

    def test_type_error_in_file_sink(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_home: Path,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
    ) -> None:
        """An event the file sink cannot encode (TypeError) is dropped and reported, no more."""
        real_encode = file_module.encode  # type: ignore[attr-defined]

        def encode(event: Event) -> bytes:
            if isinstance(event, ErrorReported):
                raise TypeError("Type is not JSON serializable: Tensor")
            return real_encode(event)

        monkeypatch.setattr(file_module, "encode", encode)
        good = RecordingSink()
        run = make_run("disk-4", sinks=[FileSink(home=tmp_home), good])
        run.status("running")
        run.error("CUDA_OOM", "oom", fatal=False)
        train(run, clock, 100)
        recover(run, clock)
        run.close()
        events, bad = read_lines(log_path(tmp_home, "disk-4"))
        assert bad == 0
        assert not any(isinstance(e, ErrorReported) for e in events)
        assert [e.count for e in events if isinstance(e, Dropped)] == [1]
        assert replay(events).status == "done"
        assert good.of_type(ErrorReported)


class TestOpenFailures:
    """A log that cannot be opened at start is opened later; the run starts anyway."""

    def test_permission_denied_at_start(
        self,
        disk: Disk,
        tmp_home: Path,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
    ) -> None:
        """EACCES on open: the run runs degraded, then the log is opened and filled in order."""
        disk.open_error = errno.EACCES
        sink = FileSink(home=tmp_home)
        run = make_run("open-1", sinks=[sink])
        assert run.degraded
        run.status("running")
        train(run, clock, 200)
        disk.open_error = None
        recover(run, clock)
        assert not run.degraded
        run.close()
        events, bad = read_lines(log_path(tmp_home, "open-1"))
        assert bad == 0
        assert isinstance(events[0], RunMeta)
        assert [e.status for e in events if isinstance(e, StatusChanged)] == [
            "preparing",
            "running",
            "done",
        ]

    def test_home_is_not_a_directory(
        self, tmp_path: Path, make_run: Callable[..., TrainingRun], clock: FakeClock
    ) -> None:
        """A home that is a file (a real OS error) does not stop the run; fixing it recovers."""
        home = tmp_path / "home"
        home.write_text("not a folder", encoding="utf-8")
        good = RecordingSink()
        run = make_run("open-2", sinks=[FileSink(home=home), good])
        run.status("running")
        train(run, clock, 50)
        assert run.sink_stats()[0]["opened"] is False
        assert "NotADirectoryError" in run.sink_stats()[0]["last_error"]
        home.unlink()
        home.mkdir()
        recover(run, clock)
        run.close()
        events, _ = read_lines(log_path(home, "open-2"))
        assert replay(events).status == "done"
        assert good.of_type(StatusChanged)[-1].status == "done"


class TestCompactionFailure:
    """A compaction that fails leaves the old log whole and the run unharmed."""

    def test_replace_fails_during_run(
        self,
        disk: Disk,
        tmp_home: Path,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
    ) -> None:
        """os.replace raising: no .tmp left, every line whole, compaction succeeds later."""
        sink = FileSink(home=tmp_home, max_bytes=16_384, interval=0.0)
        run = make_run("compact-1", sinks=[sink])
        run.status("running")
        disk.replace_error = errno.EIO
        train(run, clock, 200)
        assert sink.compaction_failures >= 1
        assert sink.compactions == 0
        path = log_path(tmp_home, "compact-1")
        assert not path.with_name(path.name + ".tmp").exists()
        events, bad = read_lines(path)
        assert bad == 0
        assert len(events) > 300  # nothing was lost: the log grew past its cap instead
        assert not run.degraded
        disk.replace_error = None
        train(run, clock, 500, start=200)
        run.close()
        assert sink.compactions >= 1
        assert path.stat().st_size <= 16_384
        events, bad = read_lines(path)
        assert bad == 0
        assert replay(events).status == "done"


class TestV1SnapshotFaults:
    """A v1 snapshot that cannot be written never harms the run and shuts down promptly."""

    def test_unwritable_snapshot(
        self, tmp_path: Path, make_run: Callable[..., TrainingRun]
    ) -> None:
        """Writes fail (the target is a folder); failures are counted; close stops the thread."""
        home = tmp_path / "home"
        (home / "training_status.json").mkdir(parents=True)
        v1 = V1SnapshotSink(home=home, interval=0.001)
        good = RecordingSink()
        run = make_run("v1-fault", sinks=[v1, good])
        run.status("running")
        run.progress(epoch=1)
        thread = v1._thread
        assert thread is not None
        for _ in range(500):
            if v1.failures:
                break
            thread.join(0.01)
        assert v1.failures >= 1
        assert v1.writes == 0
        run.close()  # the last write fails too: logged by the run, not raised
        assert not thread.is_alive()
        assert good.of_type(StatusChanged)[-1].status == "done"
        assert list(home.glob(".*.tmp")) == []


READ_ONLY = """
import json, os, sys
from pulse_core.codec import decode
from pulse_core.emitter import TrainingRun
from pulse_core.events import StatusChanged
from pulse_core.testing import FakeClock, RecordingSink
from pulse_transports.file import FileSink, log_dir, log_path

home, mode = sys.argv[1], sys.argv[2]
clock = FakeClock()
out = {}
if mode == "home":  # the home folder is read-only from the start
    sink, memory = FileSink(home=home), RecordingSink()
    with TrainingRun("ro-1", sinks=[sink, memory], env={}, background=False,
                     clock=clock.monotonic, wall=clock.time) as run:
        for step in range(100):
            run.progress(epoch=1, step=step)
            clock.advance(0.1)
            run.tick()
        out["stats"] = run.sink_stats()[0]
    out["statuses"] = [e.status for e in memory.of_type(StatusChanged)]
    out["files"] = sorted(os.listdir(home))
else:  # the log folder turns read-only mid-run: compaction cannot write its temp file
    sink = FileSink(home=home, max_bytes=16384, interval=0.0)
    with TrainingRun("ro-2", sinks=[sink], env={}, background=False,
                     clock=clock.monotonic, wall=clock.time) as run:
        run.status("running")
        for step in range(3000):
            if step == 100:
                os.chmod(log_dir(home), 0o555)
            if step == 2000:
                os.chmod(log_dir(home), 0o755)
            run.progress(epoch=1, step=step)
            run.metrics(loss=1.0 / (step + 1))
            clock.advance(0.01)
        out["degraded"] = run.degraded
    out["compaction_failures"] = sink.compaction_failures
    out["compactions"] = sink.compactions
    out["size"] = os.path.getsize(log_path(home, "ro-2"))
    events = [decode(line) for line in open(log_path(home, "ro-2"), "rb")]
    out["statuses"] = [e.status for e in events if isinstance(e, StatusChanged)]
    out["last_step"] = [e.step for e in events if hasattr(e, "step")][-1]
print(json.dumps(out))
"""


def _without_permission_override() -> None:
    """In the child: drop root's power to ignore file permissions (a no-op for other users)."""
    if os.geteuid() != 0:
        return
    import ctypes  # only needed in the forked child

    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2
    for cap in (cap_dac_override, cap_dac_read_search):
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


class TestReadOnlyDirectory:
    """A real read-only directory (enforced even for root) never harms the run."""

    def _run(self, tmp_path: Path, home: Path, mode: str) -> dict[str, Any]:
        script = tmp_path / "read_only.py"
        script.write_text(READ_ONLY, encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(script), str(home), mode],
            capture_output=True,
            text=True,
            timeout=120,
            preexec_fn=_without_permission_override,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        return result

    def test_read_only_home(self, tmp_path: Path) -> None:
        """The log cannot even be created: the run goes on, its other sinks get everything."""
        home = tmp_path / "home"
        home.mkdir()
        home.chmod(0o555)
        try:
            result = self._run(tmp_path, home, "home")
        finally:
            home.chmod(0o755)
        assert result["statuses"] == ["preparing", "running", "done"]
        assert result["stats"]["opened"] is False
        assert "PermissionError" in result["stats"]["last_error"]
        assert result["stats"]["failures_total"] > 1  # it kept trying, with backoff
        assert result["files"] == []

    def test_log_folder_turns_read_only(self, tmp_path: Path, tmp_home: Path) -> None:
        """Compaction fails while the folder is read-only; lines still land; it compacts later."""
        result = self._run(tmp_path, tmp_home, "folder")
        assert result["compaction_failures"] >= 1
        assert result["compactions"] >= 1
        assert result["size"] <= 16384
        assert result["statuses"] == ["preparing", "running", "done"]
        assert result["last_step"] == 2999
        assert result["degraded"] is False


class TestReopenAfterCompaction:
    """A log that could not be reopened after compaction is reopened by the next write."""

    def test_reopen_fails_once(
        self,
        monkeypatch: pytest.MonkeyPatch,
        tmp_home: Path,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
    ) -> None:
        """EMFILE right after the rename: that write fails, its retry reopens, nothing is lost."""
        sink = FileSink(home=tmp_home, max_bytes=16_384, interval=0.0)
        run = make_run("reopen-1", sinks=[sink])
        run.status("running")
        real_open_log = sink._open_log
        failures = [1]

        def flaky_open_log() -> None:
            if sink.compactions == 1 and failures[0]:
                failures[0] -= 1
                raise OSError(errno.EMFILE, "Too many open files")
            real_open_log()

        monkeypatch.setattr(sink, "_open_log", flaky_open_log)
        train(run, clock, 400)
        assert failures == [0]
        assert sink.compaction_failures == 0
        assert run.sink_stats()[0]["failures_total"] >= 1
        recover(run, clock)
        run.close()
        assert sink.compactions >= 2
        path = log_path(tmp_home, "reopen-1")
        assert path.stat().st_size <= 16_384
        events, bad = read_lines(path)
        assert bad == 0
        state = replay(events)
        assert state.status == "done"
        assert state.anomalies == ()
