"""Process-wide safety nets in real subprocesses: excepthook, atexit, SIGTERM/SIGINT."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pulse_core.codec import decode
from pulse_core.emitter import TrainingRun
from pulse_core.events import ErrorReported, Event, StatusChanged
from pulse_core.reducer import replay
from pulse_core.testing import RecordingSink

PRELUDE = """
import os, sys, time
from pulse_core.emitter import TrainingRun
from pulse_transports.file import FileSink
home = sys.argv[1]
"""


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "train.py"
    path.write_text(PRELUDE + textwrap.dedent(body), encoding="utf-8")
    return path


def run_script(
    path: Path, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(path), str(home)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def read_log(home: Path, training_id: str) -> list[Event]:
    path = home / "logs" / "training" / f"{training_id}.jsonl"
    return [decode(line) for line in path.read_bytes().splitlines()]


def statuses(events: list[Event]) -> list[str]:
    return [e.status for e in events if isinstance(e, StatusChanged)]


def wait_logged(home: Path, training_id: str, status: str, timeout: float = 10.0) -> None:
    """Wait until the writer thread has put *status* in the log (writes are not synchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if status in statuses(read_log(home, training_id)):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"{status} never reached the log of {training_id}")


def start_and_wait_ready(
    path: Path, home: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(path), str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read() if proc.stderr else line
    return proc


class TestExcepthook:
    """An uncaught exception in a run opened without `with` ends it via sys.excepthook."""

    def test_uncaught_exception(self, tmp_path: Path, tmp_home: Path) -> None:
        """The log ends error DATASET_NOT_FOUND; the traceback is still printed; exit 1."""
        path = script(
            tmp_path,
            """
            run = TrainingRun("hook-1", sinks=[FileSink(home=home)])
            run.status("running", "go")
            run.progress(epoch=1, step=3)
            raise FileNotFoundError("missing.csv")
            """,
        )
        result = run_script(path, tmp_home)
        assert result.returncode == 1
        assert "FileNotFoundError: missing.csv" in result.stderr
        events = read_log(tmp_home, "hook-1")
        assert statuses(events) == ["preparing", "running", "error"]
        errors = [e for e in events if isinstance(e, ErrorReported)]
        assert [e.error_code for e in errors] == ["DATASET_NOT_FOUND"]
        assert replay(events).anomalies == ()

    def test_uncaught_keyboard_interrupt(self, tmp_path: Path, tmp_home: Path) -> None:
        """An uncaught KeyboardInterrupt ends the run cancelled."""
        path = script(
            tmp_path,
            """
            run = TrainingRun("hook-2", sinks=[FileSink(home=home)])
            run.status("running")
            raise KeyboardInterrupt
            """,
        )
        run_script(path, tmp_home)
        events = read_log(tmp_home, "hook-2")
        assert statuses(events) == ["preparing", "running", "cancelled"]
        assert not any(isinstance(e, ErrorReported) for e in events)


class TestAtExit:
    """The interpreter exiting with a run still open records an honest end."""

    def test_script_ends_with_run_open(self, tmp_path: Path, tmp_home: Path) -> None:
        """A script that never closes its run: error PROCESS_EXITED_WITHOUT_RESULT, not done."""
        path = script(
            tmp_path,
            """
            run = TrainingRun("exit-1", sinks=[FileSink(home=home)])
            for step in range(1, 50):
                run.progress(epoch=1, step=step, total_steps=49)
                run.metrics(loss=1.0 / step)
            """,
        )
        result = run_script(path, tmp_home)
        assert result.returncode == 0
        events = read_log(tmp_home, "exit-1")
        assert statuses(events) == ["preparing", "running", "error"]
        error = next(e for e in events if isinstance(e, ErrorReported))
        assert error.error_code == "PROCESS_EXITED_WITHOUT_RESULT"
        state = replay(events)
        assert state.step == 49  # the pending values were delivered before the end
        assert state.metrics["loss"] == pytest.approx(1.0 / 49)
        assert not (tmp_home / "logs" / "training" / "exit-1.lock").exists()

    def test_sys_exit_with_run_open(self, tmp_path: Path, tmp_home: Path) -> None:
        """sys.exit(2) with the run open: an error end, and the exit code is kept."""
        path = script(
            tmp_path,
            """
            run = TrainingRun("exit-2", sinks=[FileSink(home=home)])
            run.status("running")
            sys.exit(2)
            """,
        )
        result = run_script(path, tmp_home)
        assert result.returncode == 2
        assert statuses(read_log(tmp_home, "exit-2"))[-1] == "error"

    def test_ended_but_not_closed(self, tmp_path: Path, tmp_home: Path) -> None:
        """A run that reported done but was never closed stays done."""
        path = script(
            tmp_path,
            """
            run = TrainingRun("exit-3", sinks=[FileSink(home=home)])
            run.status("running")
            run.status("done", "finished")
            """,
        )
        run_script(path, tmp_home)
        assert statuses(read_log(tmp_home, "exit-3")) == ["preparing", "running", "done"]


SIGNAL_LOOP = """
run = TrainingRun("{tid}", sinks=[FileSink(home=home)], handle_signals={handle})
run.status("running")
print("ready", flush=True)
step = 0
while True:
    step += 1
    run.progress(epoch=1, step=step)
    time.sleep(0.005)
"""

SIGNAL_WITH = """
with TrainingRun("{tid}", sinks=[FileSink(home=home)], handle_signals=True) as run:
    run.status("running")
    print("ready", flush=True)
    step = 0
    while True:
        step += 1
        run.progress(epoch=1, step=step)
        time.sleep(0.005)
"""


class TestSignals:
    """With handle_signals=True a real SIGTERM/SIGINT ends the run cancelled."""

    def test_sigterm_without_with(self, tmp_path: Path, tmp_home: Path) -> None:
        """SIGTERM: cancelled 'by SIGTERM', exit status 143."""
        path = script(tmp_path, SIGNAL_LOOP.format(tid="sig-1", handle=True))
        proc = start_and_wait_ready(path, tmp_home)
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        events = read_log(tmp_home, "sig-1")
        ends = [e for e in events if isinstance(e, StatusChanged)]
        assert [e.status for e in ends] == ["preparing", "running", "cancelled"]
        assert "SIGTERM" in ends[-1].message

    def test_sigterm_inside_with(self, tmp_path: Path, tmp_home: Path) -> None:
        """SIGTERM inside `with`: cancelled, the latest progress before it, exit 143."""
        path = script(tmp_path, SIGNAL_WITH.format(tid="sig-2"))
        proc = start_and_wait_ready(path, tmp_home)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        events = read_log(tmp_home, "sig-2")
        assert statuses(events) == ["preparing", "running", "cancelled"]
        state = replay(events)
        assert state.step is not None
        assert state.step > 1
        assert state.anomalies == ()

    def test_sigint_inside_with(self, tmp_path: Path, tmp_home: Path) -> None:
        """SIGINT: KeyboardInterrupt, the run ends cancelled 'by SIGINT'."""
        path = script(tmp_path, SIGNAL_WITH.format(tid="sig-3"))
        proc = start_and_wait_ready(path, tmp_home)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        ends = [e for e in read_log(tmp_home, "sig-3") if isinstance(e, StatusChanged)]
        assert ends[-1].status == "cancelled"
        assert "SIGINT" in ends[-1].message

    def test_opt_in_from_environment(self, tmp_path: Path, tmp_home: Path) -> None:
        """PULSE_HANDLE_SIGNALS=1 (set by supervisors) opts in; configuration picks the sinks."""
        path = script(
            tmp_path,
            """
            run = TrainingRun()
            run.status("running")
            print("ready", flush=True)
            while True:
                run.progress(epoch=1)
                time.sleep(0.005)
            """,
        )
        env = {
            "PULSE_HANDLE_SIGNALS": "1",
            "PULSE_HOME": str(tmp_home),
            "PULSE_TRANSPORTS": "file",
            "PULSE_TRAINING_ID": "sig-4",
        }
        proc = start_and_wait_ready(path, tmp_home, env)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert statuses(read_log(tmp_home, "sig-4"))[-1] == "cancelled"

    def test_not_opted_in(self, tmp_path: Path, tmp_home: Path) -> None:
        """Without opting in, SIGTERM kills the process as usual and nothing is claimed."""
        path = script(tmp_path, SIGNAL_LOOP.format(tid="sig-5", handle=False))
        proc = start_and_wait_ready(path, tmp_home)
        wait_logged(tmp_home, "sig-5", "running")  # status() returns before the disk write
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == -signal.SIGTERM
        assert statuses(read_log(tmp_home, "sig-5")) == ["preparing", "running"]

    def test_handlers_restored_on_close(self) -> None:
        """Closing the last signal-handling run puts the previous handlers back."""
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        run = TrainingRun("sig-6", sinks=[RecordingSink()], handle_signals=True, env={})
        assert signal.getsignal(signal.SIGTERM) is not before[0]
        run.close()
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
