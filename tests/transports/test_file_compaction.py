"""Bounded logs: compaction keeps every status/error/meta line, downsamples the rest, atomically."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import structlog

from pulse_core.codec import decode, encode
from pulse_core.emitter import TrainingRun
from pulse_core.errors import DecodeError
from pulse_core.events import (
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_core.projections import to_metric_history
from pulse_core.reducer import replay
from pulse_core.testing import FakeClock
from pulse_transports import _compact as compact_module
from pulse_transports import file as file_module
from pulse_transports._compact import compact_lines
from pulse_transports.file import DEFAULT_MAX_BYTES, FileSink, log_path

TID = "compact-run"


def decoded(path: Path) -> list[Event]:
    return [decode(line) for line in path.read_bytes().splitlines()]


def synthetic(n: int) -> list[Event]:
    """meta, running, then n steps of progress + metrics, with notes, errors and heartbeats."""
    events: list[Event] = [RunMeta(TID, 1, 0.0), StatusChanged(TID, 2, 0.0, "running", "go")]
    seq = 2
    for step in range(n):
        seq += 1
        events.append(Progress(TID, seq, float(step), epoch=1 + step // 1000, step=step % 1000))
        seq += 1
        events.append(Metrics(TID, seq, float(step), loss=1000.0 / (step + 1)))
        if step % 997 == 0:
            seq += 1
            events.append(StatusChanged(TID, seq, float(step), "running", f"note {step}"))
        if step % 1499 == 0:
            seq += 1
            events.append(ErrorReported(TID, seq, float(step), "SINK_FAILURE", "x"))
        if step % 50 == 0:
            seq += 1
            events.append(Heartbeat(TID, seq, float(step)))
    return events


class TestCompactLines:
    """compact_lines keeps essentials in order, downsamples samples to fit, drops bad lines."""

    def test_keeps_essentials_and_order(self) -> None:
        """Every meta/status/error line survives; the order of what is kept is the seq order."""
        events = synthetic(20_000)
        lines = [encode(e).rstrip(b"\n") for e in events]
        lines.insert(10, b"{broken")
        target = 200_000
        kept = compact_lines(lines, target=target)
        kept_events = [decode(line) for line in kept]
        seqs = [e.seq for e in kept_events]
        assert seqs == sorted(seqs)
        essential = {
            e.seq for e in events if isinstance(e, RunMeta | StatusChanged | ErrorReported)
        }
        assert essential <= set(seqs)
        heartbeats = [e for e in kept_events if isinstance(e, Heartbeat)]
        assert heartbeats == [next(e for e in reversed(events) if isinstance(e, Heartbeat))]
        assert sum(len(line) + 1 for line in kept) <= target
        assert len(kept) < len(lines) / 4

    def test_bucket_keeps_extremes(self) -> None:
        """A loss spike and a dip inside a downsampled stretch survive compaction."""
        events = synthetic(20_000)
        spike_at = 12_345
        for index, event in enumerate(events):
            if isinstance(event, Metrics) and event.timestamp == spike_at:
                events[index] = Metrics(TID, event.seq, event.timestamp, loss=1e9)
            if isinstance(event, Metrics) and event.timestamp == spike_at + 100:
                events[index] = Metrics(TID, event.seq, event.timestamp, loss=-5.0)
        lines = [encode(e).rstrip(b"\n") for e in events]
        kept = [decode(line) for line in compact_lines(lines, target=150_000)]
        losses = {e.loss for e in kept if isinstance(e, Metrics)}
        assert 1e9 in losses
        assert -5.0 in losses
        assert 1000.0 in losses  # the very first value
        assert 1000.0 / 20_000 in losses  # the very last value

    def test_small_logs_are_kept_whole(self) -> None:
        """Under the target nothing but stale heartbeats and bad lines goes."""
        events = [e for e in synthetic(100) if not isinstance(e, Heartbeat)]
        lines = [encode(e).rstrip(b"\n") for e in events]
        assert compact_lines(lines, target=1_000_000) == lines


class TestCapDuringRun:
    """A FileSink under a small cap stays under it and keeps every essential line."""

    def test_size_never_exceeds_cap(self, tmp_home: Path) -> None:
        """After every write the file is within max_bytes; all essentials are in the final log."""
        cap = 32_768
        sink = FileSink(home=tmp_home, max_bytes=cap, interval=0.0)
        sink.open(TID)
        events = synthetic(8_000)
        path = log_path(tmp_home, TID)
        for event in events:
            sink.write(event)
            assert path.stat().st_size <= cap
        sink.close()
        assert sink.compactions > 3
        kept = decoded(path)
        seqs = [e.seq for e in kept]
        assert seqs == sorted(seqs)
        essential = [e for e in events if isinstance(e, RunMeta | StatusChanged | ErrorReported)]
        assert [
            e for e in kept if isinstance(e, RunMeta | StatusChanged | ErrorReported)
        ] == essential
        assert kept[-1] == events[-1]
        state = replay(kept)
        assert state.anomalies == ()
        assert state.metrics["loss"] == 1000.0 / 8000

    def test_essentials_alone_over_cap(self, tmp_home: Path) -> None:
        """When status lines alone exceed the cap they are all kept (and compaction backs off)."""
        cap = 8192
        sink = FileSink(home=tmp_home, max_bytes=cap, interval=0.0)
        sink.open(TID)
        notes = [StatusChanged(TID, n, float(n), "running", "n" * 80) for n in range(1, 400)]
        for event in notes:
            sink.write(event)
        sink.close()
        assert decoded(log_path(tmp_home, TID)) == notes
        assert sink.compactions < 40


class TestMillionSteps:
    """A 1,000,000-step run over 10 simulated hours ends under the cap, its loss curve intact."""

    def test_million_steps(self, tmp_home: Path) -> None:
        """Default 8 MiB cap; every kept loss is exact and the curve covers the whole run."""
        clock = FakeClock()
        sink = FileSink(home=tmp_home, fsync=False)
        steps = 1_000_000
        dt = 36_000.0 / steps
        start = clock.now
        run = TrainingRun(
            TID,
            sinks=[sink],
            clock=clock.monotonic,
            wall=clock.time,
            background=False,
            env={},
            strict=True,
            heartbeat_interval=5.0,
        )
        progress, metrics, tick = run.progress, run.metrics, run.tick
        per_epoch = 10_000
        for step in range(steps):
            progress(epoch=step // per_epoch + 1, total_epochs=100, step=step % per_epoch + 1)
            metrics(loss=2.0 / (1.0 + step / 10_000.0))
            clock.now += dt
            if step % 64 == 0:
                tick()
        run.status("cooling_down")
        run.close()
        path = log_path(tmp_home, TID)
        assert path.stat().st_size <= DEFAULT_MAX_BYTES
        assert sink.compactions >= 1
        events = decoded(path)
        state = replay(events)
        assert state.status == "done"
        assert state.anomalies == ()
        assert (state.epoch, state.step) == (100, per_epoch)
        assert [t.status for t in state.timeline] == [
            "preparing",
            "running",
            "cooling_down",
            "done",
        ]
        # The loss curve: each kept point is the exact loss at its time, and the
        # points span the whole run without a hole bigger than a minute.
        points = [(e.timestamp, e.loss) for e in events if isinstance(e, Metrics)]
        for ts, loss in points:
            step_at = round((ts - start) / dt) - 1
            assert loss == pytest.approx(2.0 / (1.0 + step_at / 10_000.0), rel=1e-3)
        stamps = [ts for ts, _ in points]
        assert stamps[0] - start <= 1.0 + 2 * dt  # the first loss, on the log's trailing edge
        assert start + 36_000.0 - stamps[-1] < 1.0
        assert max(b - a for a, b in itertools.pairwise(stamps)) < 60.0
        assert len(points) > 1000
        history = to_metric_history(state)["loss"]
        assert history["count"] == len(points)


KILLER = """
import os, sys, time
from pulse_transports import _compact as compact_module
from pulse_transports import file as file_module
from pulse_transports.file import FileSink
from pulse_core.events import Metrics, Progress, StatusChanged, RunMeta

where = sys.argv[2]
real_replace, real_fsync_dir = os.replace, file_module._fsync_dir

def slow_replace(src, dst):
    if where == "before-rename":
        print("compacting", flush=True)
        time.sleep(60)
    real_replace(src, dst)

def slow_fsync_dir(folder):
    real_fsync_dir(folder)
    if where == "after-rename":
        print("compacting", flush=True)
        time.sleep(60)

file_module.os.replace = slow_replace
file_module._fsync_dir = slow_fsync_dir
sink = FileSink(home=sys.argv[1], max_bytes=16384, interval=0.0)
sink.open("killed-run")
tid = "killed-run"
sink.write(RunMeta(tid, 1, 0.0))
sink.write(StatusChanged(tid, 2, 0.0, "running", "go"))
seq = 2
while True:
    seq += 1
    sink.write(Progress(tid, seq, float(seq), epoch=1, step=seq))
    seq += 1
    sink.write(Metrics(tid, seq, float(seq), loss=1.0 / seq))
"""


class TestCrashDuringCompaction:
    """A writer killed mid-compaction leaves the old or the new log whole, never a mix."""

    @pytest.mark.parametrize("where", ["before-rename", "after-rename"])
    def test_kill_mid_compaction(self, tmp_path: Path, tmp_home: Path, where: str) -> None:
        """SIGKILL while compacting: every line decodes, seqs ascend, the next writer continues."""
        script = tmp_path / "killer.py"
        script.write_text(textwrap.dedent(KILLER), encoding="utf-8")
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_home), where],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "compacting"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        path = log_path(tmp_home, "killed-run")
        tmp = path.with_name(path.name + ".tmp")
        assert tmp.exists() == (where == "before-rename")
        events = decoded(path)
        size = path.stat().st_size
        if where == "before-rename":
            assert size > 16384 - 200  # the old, uncompacted file
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
        else:
            assert size <= 16384 // 2 + 200  # the new, compacted file
        seqs = [e.seq for e in events]
        assert seqs == sorted(seqs)
        assert isinstance(events[0], RunMeta)
        with TrainingRun(
            "killed-run", sinks=[FileSink(home=tmp_home)], env={}, background=False
        ) as run:
            assert run.meta.seq == seqs[-1] + 1
        assert not tmp.exists()
        for line in path.read_bytes().splitlines():
            try:
                decode(line)
            except DecodeError:  # pragma: no cover - the assertion below explains
                pytest.fail(f"a torn line survived: {line[:80]!r}")


def fill(sink: FileSink, events: list[Event]) -> list[MutableMapping[str, Any]]:
    """Write *events* through *sink*, returning the log entries it emitted."""
    with structlog.testing.capture_logs() as logs:
        for event in events:
            sink.write(event)
    return logs


def small_child_sink_filled(
    home: Path, events: list[Event]
) -> tuple[FileSink, list[MutableMapping[str, Any]]]:
    """A 16 KiB sink that compacts in a child from the first byte, filled and closed."""
    sink = FileSink(home=home, max_bytes=16384, interval=0.0, fsync=False)
    sink.out_of_process_bytes = 0
    sink.open(TID)
    logs = fill(sink, events)
    sink.close()
    return sink, logs


class TestOutOfProcess:
    """Big logs are compacted by a child interpreter, with the same result as in-process."""

    def test_child_compacts_like_in_process(self, tmp_home: Path, tmp_path: Path) -> None:
        """The child writes the same bytes as in-process compaction; every compaction ran in one."""
        events = synthetic(3000)
        child = FileSink(home=tmp_home, max_bytes=65536, interval=0.0, fsync=False)
        child.out_of_process_bytes = 0
        child.open(TID)
        logs = fill(child, events)
        child.close()
        other = tmp_path / "other-home"
        inproc = FileSink(home=other, max_bytes=65536, interval=0.0, fsync=False)
        inproc.out_of_process_bytes = 1 << 62
        inproc.open(TID)
        fill(inproc, events)
        inproc.close()
        done = [e for e in logs if e["event"] == "pulse log compacted"]
        assert child.compactions == inproc.compactions >= 2
        assert [e["where"] for e in done] == ["child"] * child.compactions
        path = log_path(tmp_home, TID)
        assert path.read_bytes() == log_path(other, TID).read_bytes()
        assert path.stat().st_size <= 65536
        assert not path.with_name(path.name + ".tmp").exists()
        assert child._lines == len(path.read_bytes().splitlines())

    def test_default_cap_compacts_in_a_child(self, tmp_home: Path) -> None:
        """At the default 8 MiB cap the log is past the out-of-process size when it compacts."""
        assert DEFAULT_MAX_BYTES >= file_module.OUT_OF_PROCESS_BYTES
        assert FileSink(home=tmp_home).out_of_process_bytes == file_module.OUT_OF_PROCESS_BYTES

    def test_no_interpreter_falls_back(
        self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without an interpreter to spawn, compaction warns once and runs in-process."""
        monkeypatch.setattr(sys, "executable", str(tmp_home / "no-such-python"))
        sink, logs = small_child_sink_filled(tmp_home, synthetic(2000))
        warned = [e for e in logs if e["log_level"] == "warning"]
        assert [e["event"] for e in warned] == [
            "pulse log compaction cannot start its child process; compacting in-process"
        ]
        done = [e for e in logs if e["event"] == "pulse log compacted"]
        assert sink.compactions >= 3
        assert [e["where"] for e in done] == ["in-process"] * sink.compactions
        assert sink.compaction_failures == 0
        assert log_path(tmp_home, TID).stat().st_size <= 16384

    def test_failing_child_falls_back(
        self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A child that exits with an error leaves the log whole; it is compacted in-process."""
        monkeypatch.setattr(
            file_module,
            "_child_command",
            lambda path, target: [sys.executable, "-c", "import sys; sys.exit('broken child')"],
        )
        events = synthetic(600)
        sink, logs = small_child_sink_filled(tmp_home, events)
        failed = [
            e
            for e in logs
            if e["event"] == "pulse log compaction child failed; compacting in-process"
        ]
        assert sink.compactions >= 1
        # One warning per kind: the library rate-limits identical warnings.
        assert len(failed) == 1
        assert "broken child" in str(failed[0]["stderr"])
        kept = decoded(log_path(tmp_home, TID))
        assert kept[-1] == events[-1]
        assert log_path(tmp_home, TID).stat().st_size <= 16384

    def test_child_printing_after_its_report(
        self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A child that prints a warning after its report still reports: no in-process redo."""
        real = file_module._child_command
        noisy = (
            "import atexit, runpy, sys; "
            "atexit.register(lambda: sys.stderr.write('SomeWarning: said at exit\\n')); "
            "print('a line before the report', flush=True); "
            "runpy.run_module('pulse_transports._compact', run_name='__main__')"
        )
        monkeypatch.setattr(
            file_module,
            "_child_command",
            lambda path, target: [sys.executable, "-c", noisy, *real(path, target)[3:]],
        )
        sink, logs = small_child_sink_filled(tmp_home, synthetic(600))
        done = [e for e in logs if e["event"] == "pulse log compacted"]
        assert sink.compactions >= 1
        assert [e["where"] for e in done] == ["child"] * sink.compactions
        assert not [e for e in logs if e["log_level"] == "warning"]

    def test_report_read_among_other_output(self) -> None:
        """The last marked line is the report, whatever stands around it; else None."""
        mark, read = compact_module.REPORT_MARK, compact_module.read_report
        report = mark + b'{"kept": 7, "before": 9, "after": 100}\n'
        assert read(b"warning\n" + report) == (7, 9)
        assert read(report + b"Warning: at exit\nmore\n") == (7, 9)
        assert read(report.rstrip(b"\n")) == (7, 9)
        assert read(b"no report at all\n") is None
        assert read(mark + b'{"kept": 7, "bef') is None  # cut short
        assert read(mark + b'{"kept": "x", "before": 1}\n') is None
        assert read(b"") is None

    def test_hung_child_is_a_failed_compaction(
        self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A child past COMPACT_TIMEOUT is killed: the log stays whole and compaction backs off."""
        monkeypatch.setattr(file_module, "COMPACT_TIMEOUT", 0.5)
        monkeypatch.setattr(
            file_module,
            "_child_command",
            lambda path, target: [sys.executable, "-c", "import time; time.sleep(30)"],
        )
        events = synthetic(90)
        sink, logs = small_child_sink_filled(tmp_home, events)
        assert sink.compactions == 0
        assert 1 <= sink.compaction_failures <= 3
        # One warning per kind: the library rate-limits identical warnings.
        assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
            "pulse log compaction failed; the log stays whole and over its cap for now"
        ]
        assert decoded(log_path(tmp_home, TID)) == events


#: The start of a writer script whose compaction child first runs CHILD_FIRST (Python
#: code, defined before it), then compacts as usual.
WRAPPED_CHILD = """
import os, sys
import structlog
from pulse_transports import file as file_module
from pulse_transports.file import FileSink
from pulse_core.events import Metrics, Progress, StatusChanged, RunMeta

real_command = file_module._child_command

def wrapped_child(path, target):
    command = real_command(path, target)
    compact = "runpy.run_module('pulse_transports._compact', run_name='__main__')"
    code = CHILD_FIRST + "; import runpy; " + compact
    return [command[0], "-c", code, *command[3:]]

file_module._child_command = wrapped_child
"""

# The child notes what its fd 3 is (the run's lock, inherited), then compacts.
CLOSED_STDIO = (
    'CHILD_FIRST = "import os, sys; '
    "open(sys.argv[1] + '.fd3', 'a').write(f'{os.fstat(3).st_ino} ')\""
    + WRAPPED_CHILD
    + """
for fd in (0, 1, 2):
    os.close(fd)  # python train.py <&- >&- 2>&-
tid = "closed-stdio-run"
sink = FileSink(home=sys.argv[1], max_bytes=16384, interval=0.0, fsync=False)
sink.out_of_process_bytes = 0
sink.open(tid)  # the lock and the log take fds 0 and 1
lock_fd, lock = sink._lock_fd, os.fstat(sink._lock_fd).st_ino
with structlog.testing.capture_logs() as logs:
    sink.write(RunMeta(tid, 1, 0.0))
    sink.write(StatusChanged(tid, 2, 0.0, "running", "go"))
    for seq in range(3, 1200):
        sink.write(Progress(tid, seq, float(seq), epoch=1, step=seq))
sink.close()
where = [e["where"] for e in logs if e["event"] == "pulse log compacted"]
with open(sys.argv[2], "w") as out:
    out.write(f"{lock_fd} {lock} {sink.compactions} {where.count('child')}")
"""
)


@pytest.fixture(params=["ctypes", "os"])
def spawner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """posix_spawn through ctypes (without the GIL), or os.posix_spawn (no ctypes)."""
    chosen = compact_module._LibcSpawn() if request.param == "ctypes" else None
    monkeypatch.setattr(compact_module, "_libc", [chosen])
    return str(request.param)


@pytest.mark.usefixtures("spawner")
class TestChildStart:
    """The child is started with posix_spawn: its stdio, the lock it holds, nothing of ours."""

    def test_child_gets_devnull_one_pipe_and_the_lock(self, tmp_path: Path) -> None:
        """stdin /dev/null, stdout+stderr one pipe, the lock as fd 3; our own fds closed."""
        from pulse_transports._compact import run_child

        lock = tmp_path / "lock"
        lock.write_bytes(b"")
        ours = os.open(tmp_path / "ours", os.O_WRONLY | os.O_CREAT)
        os.set_inheritable(ours, True)  # as an application may: closed in the child anyway
        lock_fd = os.open(lock, os.O_RDONLY)
        code = (
            "import os, sys; "
            "print(os.path.samestat(os.fstat(0), os.stat(os.devnull))); "
            "print(os.path.samestat(os.fstat(1), os.fstat(2))); "
            "print(os.fstat(3).st_ino); "
            "print(' '.join(sorted(os.listdir('/proc/self/fd'), key=int))); "
            "sys.stderr.write('on stderr')"
        )
        try:
            exit_code, output = run_child(
                [sys.executable, "-c", code], dict(os.environ), lock_fd, 60.0
            )
        finally:
            os.close(lock_fd)
            os.close(ours)
        lines = output.decode().splitlines()
        assert exit_code == 0
        assert lines[0] == "True"  # stdin
        assert lines[1] == "True"  # stdout and stderr: one pipe
        assert int(lines[2]) == lock.stat().st_ino
        # 0-3 and the one listdir opened: not ours, not a second copy of the lock.
        assert lines[3].split()[:4] == ["0", "1", "2", "3"]
        assert len(lines[3].split()) == 5
        assert lines[-1].endswith("on stderr")

    def test_exit_code_and_timeout(self, tmp_path: Path) -> None:
        """A failing child's code and output come back; one past its timeout is killed."""
        from pulse_transports._compact import run_child

        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            code, output = run_child(
                [sys.executable, "-c", "import sys; sys.exit('broken')"], dict(os.environ), fd, 60
            )
            assert (code, output.strip()) == (1, b"broken")
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                run_child(
                    [sys.executable, "-c", "import time; time.sleep(60)"],
                    dict(os.environ),
                    fd,
                    0.5,
                )
            assert time.monotonic() - started < 30
        finally:
            os.close(fd)


class TestClosedStdio:
    """A training process started with its stdio closed still compacts in a child."""

    def test_closed_stdio_still_compacts_in_a_child(self, tmp_path: Path, tmp_home: Path) -> None:
        """With fds 0-2 closed (the lock and the pipe land there) the child still compacts."""
        script = tmp_path / "closed.py"
        script.write_text(textwrap.dedent(CLOSED_STDIO), encoding="utf-8")
        report = tmp_path / "report"
        subprocess.run(
            [sys.executable, str(script), str(tmp_home), str(report)], check=True, timeout=120
        )
        lock_fd, lock, compactions, in_child = map(int, report.read_text().split())
        assert lock_fd <= 2
        assert compactions >= 3
        assert in_child == compactions  # no fallback to in-process
        path = log_path(tmp_home, "closed-stdio-run")
        seen = path.with_name(path.name + ".fd3").read_text().split()
        assert seen == [str(lock)] * compactions  # each child held the lock
        assert path.stat().st_size <= 16384
        seqs = [e.seq for e in decoded(path)]
        assert seqs == sorted(seqs)
        assert seqs[-1] == 1199


class TestCompactionSharesTheGil:
    """A compaction never holds the GIL long: a training thread running Python waits for it."""

    def test_no_long_cpu_stretch_between_yields(
        self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Compacting in a child, the writer runs well under 1.5 ms of CPU between two yields.

        A thread waiting for the GIL gets it only when the holder sleeps or
        blocks, or after the 5 ms switch interval. The yields counted: a sleep,
        and starting the child (the writer then blocks until it exits). CPU
        time, not wall time: a loaded machine does not change it much.
        Here: at most 0.6-0.85 ms; starting the child through subprocess with no
        sleep between the steps, 1.9-2.8 ms (the longest but one of 21 compactions).
        """
        import _posixsubprocess

        stretches: list[float] = []
        since = [-1.0]  # thread CPU at the last yield, while compacting

        def yielded() -> None:
            if since[0] >= 0:
                now = time.thread_time()
                stretches.append(now - since[0])
                since[0] = now

        def after(original: Any) -> Any:
            def run(*args: Any, **kwargs: Any) -> Any:
                try:
                    return original(*args, **kwargs)
                finally:
                    yielded()

            return run

        real_sleep, real_compact = time.sleep, FileSink._compact

        def sleep(seconds: float) -> None:
            yielded()
            real_sleep(seconds)
            since[0] = time.thread_time() if since[0] >= 0 else -1.0

        def compact(self: FileSink) -> None:
            since[0] = time.thread_time()
            try:
                real_compact(self)
            finally:
                yielded()
                since[0] = -1.0

        monkeypatch.setattr(time, "sleep", sleep)
        monkeypatch.setattr(os, "posix_spawn", after(os.posix_spawn))
        monkeypatch.setattr(
            compact_module._LibcSpawn, "spawn", after(compact_module._LibcSpawn.spawn)
        )
        monkeypatch.setattr(_posixsubprocess, "fork_exec", after(_posixsubprocess.fork_exec))
        monkeypatch.setattr(FileSink, "_compact", compact)
        sink = FileSink(home=tmp_home, max_bytes=16384, interval=0.0, fsync=False)
        sink.out_of_process_bytes = 0
        sink.open(TID)
        fill(sink, synthetic(1200))
        sink.close()
        assert sink.compactions >= 5
        longest = sorted(stretches)[-2:]  # the longest but one: a stray gc or page fault aside
        assert longest[0] < 0.0015, f"CPU stretches without a yield (s): {longest}"


# The child says it started, then sleeps before it works: the test kills its parent meanwhile.
ORPHAN = (
    'CHILD_FIRST = "import pathlib, sys, time; '
    "pathlib.Path(sys.argv[1] + '.started').touch(); time.sleep(1.5)\""
    + WRAPPED_CHILD
    + """
tid = "orphan-run"
sink = FileSink(home=sys.argv[1], max_bytes=16384, interval=0.0, fsync=False)
sink.out_of_process_bytes = 0
sink.open(tid)
sink.write(RunMeta(tid, 1, 0.0))
sink.write(StatusChanged(tid, 2, 0.0, "running", "go"))
seq = 2
while True:
    seq += 1
    sink.write(Progress(tid, seq, float(seq), epoch=1, step=seq))
    seq += 1
    sink.write(Metrics(tid, seq, float(seq), loss=1.0 / seq))
"""
)


class TestWriterKilledDuringChildCompaction:
    """A writer killed while its child compacts: the child renames nothing, the old log stays."""

    def test_orphaned_child_leaves_old_log(self, tmp_path: Path, tmp_home: Path) -> None:
        """SIGKILL the writer mid-compaction: the lock waits for the child; the log stays old."""
        script = tmp_path / "orphan.py"
        script.write_text(textwrap.dedent(ORPHAN), encoding="utf-8")
        path = log_path(tmp_home, "orphan-run")
        started = path.with_name(path.name + ".started")
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_home)])
        try:
            deadline = time.monotonic() + 60
            while not started.exists():
                assert proc.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        before = path.read_bytes()
        # The child holds the run's lock (inherited) until it exits.
        assert file_module.writer_alive(tmp_home, "orphan-run") is True
        sink = FileSink(home=tmp_home, lock_wait=30.0)
        held = sink.open("orphan-run")
        sink.close()
        assert path.read_bytes() == before  # not replaced by the orphan
        assert not path.with_name(path.name + ".tmp").exists()
        events = decoded(path)
        assert len(before) > 16384 - 200
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert held == events[-1].seq


class TestFailingCompactionBacksOff:
    """A compaction that keeps failing is retried after more and more growth."""

    def test_retries_double_their_growth_and_recover(
        self, tmp_home: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A log growing ~12 caps while compaction fails tries ~15 times (not ~200), then works."""
        real = file_module.write_compacted
        broken = [True]

        def failing(path: Path, target: int) -> Any:
            if broken[0]:
                raise PermissionError(13, "Permission denied", str(path) + ".tmp")
            return real(path, target)

        monkeypatch.setattr(file_module, "write_compacted", failing)
        sink = FileSink(home=tmp_home, max_bytes=16384, interval=0.0, fsync=False)
        sink.out_of_process_bytes = 1 << 40  # in-process: the failure is ours, not a child's
        sink.open(TID)
        events = synthetic(3000)
        fill(sink, events[:2000])
        grown = log_path(tmp_home, TID).stat().st_size
        assert grown > 10 * 16384
        # With a fixed retry step of 1/16 of the cap this would be about 16 per cap grown.
        assert 1 <= sink.compaction_failures <= 20
        broken[0] = False
        fill(sink, events[2000:])
        sink.close()
        assert sink.compactions >= 1
        assert log_path(tmp_home, TID).stat().st_size <= 16384
