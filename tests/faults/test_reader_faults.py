"""Fault injection with real processes: killed writers, restarts, compaction, garbage.

Writers are real training subprocesses (``TrainingRun`` with a ``FileSink``);
readers are the real follower and the real ``pulse`` command line. Nothing is
mocked; waits poll the file system with generous timeouts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.events import Event, Metrics, Progress
from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view
from pulse_core.reducer import replay
from pulse_transports.file import log_dir, log_path
from pulse_transports.follow import LogFollower, follow, read_log

WRITER = textwrap.dedent(
    """
    import sys, time
    from pulse_core.emitter import TrainingRun
    from pulse_transports.file import FileSink

    home, tid, epochs, steps, delay, max_bytes = sys.argv[1:7]
    epochs, steps, delay = int(epochs), int(steps), float(delay)
    sink = FileSink(home=home, max_bytes=int(max_bytes), interval=0.0, fsync=False)
    run = TrainingRun(tid, sinks=[sink], total_epochs=epochs, heartbeat_interval=0.2)
    print("started", flush=True)
    for epoch in range(1, epochs + 1):
        for step in range(1, steps + 1):
            run.progress(epoch=epoch, step=step, total_steps=steps)
            run.metrics(loss=1.0 / (epoch * steps + step), lr=0.1 / epoch)
            time.sleep(delay)
    run.close()
    print("done", sink.compactions, flush=True)
    """
)

FOLLOWER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    import orjson
    from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view
    from pulse_transports.follow import LogFollower
    from pulse_transports.notify import Notifier
    from pulse_transports.history import checkpoint_from_bytes, checkpoint_to_bytes

    log, saved, out = (Path(a) for a in sys.argv[1:4])
    checkpoint = checkpoint_from_bytes(saved.read_bytes()) if saved.exists() else None
    print("offset", checkpoint.position.offset if checkpoint else 0, flush=True)
    follower = LogFollower(log, checkpoint=checkpoint)
    notifier = Notifier(log.parent)
    while True:
        if follower.poll():
            tmp = saved.with_name(saved.name + ".tmp")
            tmp.write_bytes(checkpoint_to_bytes(follower.checkpoint()))
            os.replace(tmp, saved)
        if follower.state.is_terminal:
            break
        notifier.wait(0.5)
    state = follower.state
    out.write_bytes(orjson.dumps({
        "view": to_view(state, now=0.0, liveness="ended"),
        "v1": to_v1(state),
        "history": to_history_record(state, now=0.0),
        "metrics": to_metric_history(state),
    }))
    print("finished", flush=True)
    """
)


@pytest.fixture
def scripts(tmp_path: Path) -> dict[str, Path]:
    """The writer and follower scripts, written to files."""
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "writer.py").write_text(WRITER)
    (folder / "follower.py").write_text(FOLLOWER)
    return {"writer": folder / "writer.py", "follower": folder / "follower.py"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home whose log folder exists (so followers can watch it)."""
    path = tmp_path / "home"
    log_dir(path).mkdir(parents=True)
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; killed at the end if still running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def start_writer(
    procs: list[subprocess.Popen[str]],
    scripts: dict[str, Path],
    home: Path,
    tid: str,
    *,
    epochs: int = 4,
    steps: int = 40,
    delay: float = 0.005,
    max_bytes: int = 8 * 1024 * 1024,
) -> subprocess.Popen[str]:
    args = [str(scripts["writer"]), str(home), tid, str(epochs), str(steps), str(delay)]
    proc = subprocess.Popen(
        [sys.executable, *args, str(max_bytes)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    return proc


def pulse(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``pulse`` command line."""
    script = Path(sys.executable).with_name("pulse")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from pulse_transports.cli import main; main()"]
    )
    environ = {**os.environ, "PULSE_HOME": str(home), **env}
    return subprocess.run(
        [*command, *args], capture_output=True, text=True, timeout=60, env=environ, check=False
    )


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def decoded(path: Path) -> tuple[list[Event], int]:
    """Every decodable line of a log, and the count of the others."""
    events, bad = [], 0
    for line in path.read_bytes().split(b"\n"):
        if not line.strip():
            continue
        try:
            events.append(decode(line))
        except DecodeError:
            bad += 1
    return events, bad


def progressed(path: Path, epoch: int) -> Callable[[], bool]:
    def check() -> bool:
        if not path.exists():
            return False
        return any(isinstance(e, Progress) and (e.epoch or 0) >= epoch for e in decoded(path)[0])

    return check


def projections(state: Any) -> dict[str, Any]:
    return {
        "view": to_view(state, now=0.0, liveness="ended"),
        "v1": to_v1(state),
        "history": to_history_record(state, now=0.0),
        "metrics": to_metric_history(state),
    }


LIVENESS_ENV = {"PULSE_STALE_AFTER": "0.5", "PULSE_LOST_AFTER": "2"}


class TestKilledWriter:
    """A writer killed with SIGKILL mid-run is shown lost with its last data intact."""

    def test_sigkill_mid_run(
        self, home: Path, scripts: dict[str, Path], procs: list[subprocess.Popen[str]]
    ) -> None:
        tid = "killed-run"
        path = log_path(home, tid)
        writer = start_writer(procs, scripts, home, tid, epochs=50, delay=0.01)
        wait_for(progressed(path, 2), what="epoch 2 in the log")
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        events, bad = decoded(path)
        assert bad == 0
        assert [e.seq for e in events] == list(range(1, len(events) + 1))  # nothing lost
        last_progress = [e for e in events if isinstance(e, Progress)][-1]
        last_metrics = [e for e in events if isinstance(e, Metrics)][-1]

        listing = pulse(home, "ls", "--json", **LIVENESS_ENV)
        assert listing.returncode == 0, listing.stderr
        (row,) = orjson.loads(listing.stdout)["runs"]
        assert row["training_id"] == tid
        assert (row["status"], row["liveness"]) == ("running", "lost")
        assert (row["epoch"], row["step"]) == (last_progress.epoch, last_progress.step)
        assert row["loss"] == last_metrics.loss

        v1 = pulse(home, "v1", tid, "--json", **LIVENESS_ENV)
        snapshot = orjson.loads(v1.stdout)
        assert snapshot["status"] == "error"
        assert snapshot["message"].startswith("training process lost")
        assert snapshot["epoch"] == last_progress.epoch

        shown = orjson.loads(pulse(home, "show", tid, "--json").stdout)
        assert shown["view"]["metrics"]["lr"] == last_metrics.extra["lr"]
        replayed = pulse(home, "replay", str(path), "--json")
        assert replayed.returncode == 0, replayed.stderr
        assert orjson.loads(replayed.stdout)["runs"][0]["view"]["stats"]["last_seq"] == len(events)

    def test_torn_last_line_after_kill(
        self, home: Path, scripts: dict[str, Path], procs: list[subprocess.Popen[str]]
    ) -> None:
        tid = "torn-run"
        path = log_path(home, tid)
        writer = start_writer(procs, scripts, home, tid, epochs=50, delay=0.01)
        wait_for(progressed(path, 1), what="progress in the log")
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        events, _ = decoded(path)
        with path.open("ab") as handle:  # what a write cut by the kill leaves
            handle.write(b'{"type":"progress","training_id":"torn-run","se')
        replayed = pulse(home, "replay", str(path), "--json")
        assert replayed.returncode == 0
        document = orjson.loads(replayed.stdout)
        assert document["bad_lines"] == 1
        assert document["runs"][0]["view"]["stats"]["last_seq"] == events[-1].seq
        (row,) = orjson.loads(pulse(home, "ls", "--json").stdout)["runs"]
        assert (row["liveness"], row["bad_lines"]) == ("lost", 1)


V1_WRITER = textwrap.dedent(
    """
    import sys, time
    from pulse_core.emitter import TrainingRun
    from pulse_transports.file import FileSink
    from pulse_transports.v1 import V1SnapshotSink

    home, tid = sys.argv[1:3]
    sinks = [FileSink(home=home, interval=0.0, fsync=False),
             V1SnapshotSink(home=home, interval=0.05)]
    run = TrainingRun(tid, sinks=sinks, env={}, total_epochs=1000, heartbeat_interval=0.2)
    run.status("running", "training")
    epoch = 0
    while True:
        epoch += 1
        run.progress(epoch=epoch, step=1)
        run.metrics(loss=1.0 / epoch)
        time.sleep(0.02)
    """
)


class TestV1FileHealedByReaders:
    """Every reading command that judges liveness heals a raw v1 file left running."""

    @pytest.mark.parametrize(
        "command", [("ls",), ("show", "{tid}"), ("v1",), ("watch", "{tid}", "--once")]
    )
    def test_sigkilled_writer_then_command(
        self,
        home: Path,
        tmp_path: Path,
        procs: list[subprocess.Popen[str]],
        command: tuple[str, ...],
    ) -> None:
        """SIGKILLed writer, then the command: training_status.json no longer says running."""
        tid = "v1-killed"
        script = tmp_path / "v1_writer.py"
        script.write_text(V1_WRITER)
        writer = subprocess.Popen(
            [sys.executable, str(script), str(home), tid],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(writer)
        raw = home / "training_status.json"

        def says_running() -> bool:
            try:
                snapshot = orjson.loads(raw.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                return False
            return bool(snapshot.get("status") == "running" and snapshot.get("epoch", 0) >= 3)

        wait_for(says_running, what="the v1 file to say running")
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=10)
        assert orjson.loads(raw.read_bytes())["status"] == "running"  # the writer cannot fix it
        done = pulse(home, *(part.format(tid=tid) for part in command))
        assert done.returncode in (0, 1), done.stderr  # watch exits 1 for a lost run
        healed = orjson.loads(raw.read_bytes())
        assert healed["status"] == "error"
        assert healed["message"].startswith("training process lost")
        assert healed["epoch"] >= 3


class TestHungWriter:
    """A stopped (hung) writer goes stale, then lost; its heartbeats revive it."""

    def test_sigstop_stale_alive_lost(
        self, home: Path, scripts: dict[str, Path], procs: list[subprocess.Popen[str]]
    ) -> None:
        tid = "hung-run"
        path = log_path(home, tid)
        writer = start_writer(procs, scripts, home, tid, epochs=500, delay=0.01)
        wait_for(progressed(path, 1), what="progress")
        limits = {"PULSE_STALE_AFTER": "1", "PULSE_LOST_AFTER": "3"}

        def liveness() -> str:
            listing = pulse(home, "ls", "--json", **limits)
            assert listing.returncode == 0, listing.stderr
            (row,) = orjson.loads(listing.stdout)["runs"]
            return str(row["liveness"])

        assert liveness() == "alive"
        writer.send_signal(signal.SIGSTOP)  # holds its lock, says nothing
        time.sleep(1.5)
        assert liveness() == "stale"
        writer.send_signal(signal.SIGCONT)
        wait_for(lambda: liveness() == "alive", timeout=30, what="alive again")
        writer.send_signal(signal.SIGSTOP)
        time.sleep(3.5)
        assert liveness() == "lost"
        assert pulse(home, "v1", tid, "--json", **limits).stdout.count("training process lost")
        writer.send_signal(signal.SIGCONT)
        wait_for(lambda: liveness() == "alive", timeout=30, what="alive after lost")


class TestReaderTiming:
    """A reader started before, during or after the writer ends in the same state."""

    @pytest.mark.parametrize("when", ["before", "during", "after"])
    def test_reader_start(
        self,
        when: str,
        home: Path,
        scripts: dict[str, Path],
        procs: list[subprocess.Popen[str]],
    ) -> None:
        tid = f"timing-{when}"
        path = log_path(home, tid)
        stop = threading.Event()
        seen: dict[str, Any] = {}

        def reader() -> None:
            for follower, _ in follow(path, stop=stop, tick=0.2):
                seen["state"] = follower.state
                if follower.state.is_terminal:
                    return

        thread = threading.Thread(target=reader)
        if when == "before":
            thread.start()
        writer = start_writer(procs, scripts, home, tid, epochs=3, steps=30)
        if when == "during":
            wait_for(progressed(path, 2), what="epoch 2")
            thread.start()
        assert writer.wait(timeout=60) == 0, writer.stderr.read() if writer.stderr else ""
        if when == "after":
            thread.start()
        thread.join(timeout=60)
        stop.set()
        assert not thread.is_alive()
        assert seen["state"].status == "done"
        assert projections(seen["state"]) == projections(read_log(path).state)


class TestWriterRestart:
    """A killed writer restarted with the same id continues the log; readers follow it."""

    def test_restart_continues_seq(
        self, home: Path, scripts: dict[str, Path], procs: list[subprocess.Popen[str]]
    ) -> None:
        tid = "restarted-run"
        path = log_path(home, tid)
        first = start_writer(procs, scripts, home, tid, epochs=50, delay=0.01)
        follower = LogFollower(path)
        wait_for(progressed(path, 1), what="progress")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        follower.poll()
        before = follower.last_seq
        listing = orjson.loads(pulse(home, "ls", "--json").stdout)["runs"]
        assert listing[0]["liveness"] == "lost"
        second = start_writer(procs, scripts, home, tid, epochs=2, steps=20)
        assert second.wait(timeout=60) == 0
        follower.poll()
        follower.close()
        events, bad = decoded(path)
        assert bad == 0
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs))  # strictly increasing across the restart
        assert follower.last_seq == seqs[-1] > before
        assert follower.state == replay(events)
        assert follower.state.status == "done"
        (row,) = orjson.loads(pulse(home, "ls", "--json").stdout)["runs"]
        assert (row["status"], row["liveness"]) == ("done", "ended")


class TestCompactionDuringFollow:
    """A follower keeps up with a writer that compacts its log many times."""

    def test_follow_through_compactions(
        self, home: Path, scripts: dict[str, Path], procs: list[subprocess.Popen[str]]
    ) -> None:
        tid = "compacted-run"
        path = log_path(home, tid)
        stop = threading.Event()
        applied: list[Event] = []
        result: dict[str, Any] = {}

        def reader() -> None:
            for follower, new in follow(path, stop=stop, tick=0.2):
                applied.extend(new)
                result["follower"] = follower
                if follower.state.is_terminal:
                    result["state"] = follower.state
                    return

        thread = threading.Thread(target=reader)
        thread.start()
        writer = start_writer(
            procs, scripts, home, tid, epochs=4, steps=150, delay=0.001, max_bytes=8192
        )
        out, _ = writer.communicate(timeout=120)
        thread.join(timeout=60)
        stop.set()
        compactions = int(out.split()[-1])
        assert compactions >= 3
        follower = result["follower"]
        assert follower.replaced >= 1
        seqs = [e.seq for e in applied]
        assert seqs == sorted(set(seqs))
        state = result["state"]
        assert state.duplicates == 0
        assert state == replay(applied)
        final = read_log(path).state
        assert to_v1(state) == to_v1(final)
        assert state.last_seq == final.last_seq
        assert (state.epoch, state.step) == (final.epoch, final.step)


class TestGarbage:
    """Garbage appended by another process is skipped and counted, never fatal."""

    def test_injected_garbage(
        self, home: Path, scripts: dict[str, Path], procs: list[subprocess.Popen[str]]
    ) -> None:
        tid = "garbage-run"
        path = log_path(home, tid)
        writer = start_writer(procs, scripts, home, tid, epochs=3, steps=40, delay=0.01)
        wait_for(path.exists, what="the log")
        junk = [b"garbage\n", b"\x00\x01\x02\xff\n", b'{"type": "status"}\n', b"[1,2]\n"]
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            for line in junk:
                time.sleep(0.1)
                os.write(fd, line)  # one O_APPEND write: whole lines between the writer's
        finally:
            os.close(fd)
        assert writer.wait(timeout=60) == 0
        follower = read_log(path)
        events, bad = decoded(path)
        assert bad == follower.bad_lines == len(junk)
        assert follower.state == replay(events)
        assert follower.state.status == "done"
        (row,) = orjson.loads(pulse(home, "ls", "--json").stdout)["runs"]
        assert (row["status"], row["bad_lines"]) == ("done", len(junk))
        checked = pulse(home, "validate", str(path))
        assert checked.returncode == 1
        assert checked.stdout.count(": error: ") == len(junk)


class TestApplicationRestart:
    """A follower killed mid-run and restarted resumes and ends like an uninterrupted one."""

    def test_follower_restart(
        self,
        home: Path,
        tmp_path: Path,
        scripts: dict[str, Path],
        procs: list[subprocess.Popen[str]],
    ) -> None:
        tid = "app-restart"
        path = log_path(home, tid)
        path.write_bytes(b"")

        def start_follower(name: str) -> subprocess.Popen[str]:
            args = [str(path), str(tmp_path / f"{name}.ckpt"), str(tmp_path / f"{name}.json")]
            proc = subprocess.Popen(
                [sys.executable, str(scripts["follower"]), *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            procs.append(proc)
            return proc

        steady = start_follower("steady")
        restarted = start_follower("restarted")
        writer = start_writer(procs, scripts, home, tid, epochs=4, steps=40, delay=0.01)
        wait_for(progressed(path, 2), what="epoch 2")
        wait_for((tmp_path / "restarted.ckpt").exists, what="a checkpoint")
        restarted.send_signal(signal.SIGKILL)
        restarted.wait(timeout=10)
        wait_for(progressed(path, 3), what="epoch 3")
        again = start_follower("restarted")
        assert writer.wait(timeout=60) == 0
        for proc in (steady, again):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        resumed_at = int(again_out_offset(again_out := out))
        assert resumed_at > 0  # it resumed, it did not re-read the log
        assert again_out.strip().endswith("finished")
        steady_doc = orjson.loads((tmp_path / "steady.json").read_bytes())
        restarted_doc = orjson.loads((tmp_path / "restarted.json").read_bytes())
        assert restarted_doc == steady_doc
        assert steady_doc == orjson.loads(orjson.dumps(projections(read_log(path).state)))


def again_out_offset(out: str) -> str:
    """The offset a follower printed when it started."""
    first = out.splitlines()[0].split()
    assert first[0] == "offset"
    return first[1]
