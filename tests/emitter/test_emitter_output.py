"""The library writes nothing on stdout, short rate-limited lines on stderr, and never raises.

Real training processes (issue 14.3): stdout a broken pipe (``python train.py | true``),
stdout closed, stderr broken, an unwritable home; and the logger itself in-process.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from pulse_core import _log
from pulse_core.codec import decode
from pulse_core.events import StatusChanged

TRAIN = """
import sys
from pulse_core.emitter import TrainingRun
with TrainingRun("t-out", name="x") as run:
    for i in range(50):
        run.progress(epoch=1, step=i, total_steps=50)
        run.metrics(loss=1.0 / (i + 1))
    for _ in range(200):
        run.status("idle", "an illegal request, warned about")
    RAISE
sys.stderr.write("finished\\n")
"""


def write_script(tmp_path: Path, raise_line: str = "pass") -> Path:
    path = tmp_path / "train.py"
    path.write_text(textwrap.dedent(TRAIN).replace("RAISE", raise_line), encoding="utf-8")
    return path


def run(
    script: Path,
    home: Path,
    *,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
    preexec: Any = None,
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(script)],
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, "PULSE_HOME": str(home)},
        timeout=60,
        check=False,
        preexec_fn=preexec,
    )


def broken_pipe() -> int:
    """The write end of a pipe whose read end is already closed (``| true``)."""
    read, write = os.pipe()
    os.close(read)
    return write


def statuses(home: Path) -> list[str]:
    path = home / "logs" / "training" / "t-out.jsonl"
    events = [decode(line) for line in path.read_bytes().splitlines()]
    return [e.status for e in events if isinstance(e, StatusChanged)]


class TestTrainingProcessOutput:
    """A training process's stdout is never touched and a broken stdout/stderr never raises."""

    def test_stdout_stays_empty(self, tmp_path: Path, tmp_home: Path) -> None:
        """Warnings go to stderr as one short line each, rate-limited; stdout gets nothing."""
        done = run(write_script(tmp_path), tmp_home)
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout == b""
        lines = done.stderr.decode().splitlines()
        assert lines[-1] == "finished"
        warned = [line for line in lines if "illegal lifecycle request" in line]
        assert 1 <= len(warned) <= 2  # 200 identical warnings, rate-limited
        assert all(len(line) < 1000 for line in lines)
        assert statuses(tmp_home) == ["preparing", "running", "done"]

    def test_stdout_broken_pipe_with_unwritable_home(self, tmp_path: Path) -> None:
        """``python train.py | true`` with a home that cannot be written: exit 0, no traceback."""
        write = broken_pipe()
        try:
            done = run(write_script(tmp_path), Path("/dev/null/pulse"), stdout=write)
        finally:
            os.close(write)
        err = done.stderr.decode()
        assert done.returncode == 0, err
        assert "Traceback" not in err
        assert "BrokenPipeError" not in err
        assert err.splitlines()[-1] == "finished"
        assert len(err.splitlines()) < 12  # short lines, not boxed tracebacks with locals

    def test_stdout_closed(self, tmp_path: Path, tmp_home: Path) -> None:
        """A process started with descriptor 1 closed trains and ends its run done."""
        done = run(write_script(tmp_path), tmp_home, stdout=None, preexec=lambda: os.close(1))
        assert done.returncode == 0, done.stderr.decode()
        assert statuses(tmp_home) == ["preparing", "running", "done"]

    def test_stderr_broken_pipe(self, tmp_path: Path) -> None:
        """Warnings into a broken stderr are swallowed: the loop and the run are unharmed."""
        script = write_script(tmp_path)
        marker = tmp_path / "finished"
        text = script.read_text().replace(
            'sys.stderr.write("finished\\n")', f"open({str(marker)!r}, 'w')"
        )
        script.write_text(text)
        write = broken_pipe()
        try:
            done = run(script, Path("/dev/null/pulse"), stderr=write)
        finally:
            os.close(write)
        assert done.returncode == 0
        assert done.stdout == b""
        assert marker.exists()

    def test_user_traceback_printed_once(self, tmp_path: Path, tmp_home: Path) -> None:
        """An exception from training is printed by Python once, not again by the library."""
        script = write_script(tmp_path, "raise ValueError('bad shape ' + str((3, 4)))")
        done = run(script, tmp_home)
        err = done.stderr.decode()
        assert done.returncode == 1
        assert done.stdout == b""
        assert err.count("Traceback (most recent call last)") == 1
        assert (
            err.count("ValueError: bad shape (3, 4)") == 1
        )  # the trace id line names only the type
        logged = [line for line in err.splitlines() if "training raised" in line]
        assert len(logged) == 1
        assert "trace_id=" in logged[0]
        assert "exception_type=builtins.ValueError" in logged[0]
        assert statuses(tmp_home)[-1] == "error"


@pytest.fixture
def fresh_limits() -> Iterator[None]:
    """The rate limiter forgets earlier messages before and after the test."""
    _log.reset_rate_limits()
    yield
    _log.reset_rate_limits()


@pytest.mark.usefixtures("fresh_limits")
class TestLibraryLogger:
    """``pulse_core._log`` loggers: stdlib route, structlog route, short lines, never raising."""

    def test_stdlib_route_when_structlog_unconfigured(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Without a structlog configuration, a message is one line on the ``pulse.*`` logger."""
        structlog.reset_defaults()
        caplog.set_level(logging.WARNING, logger="pulse.test")
        _log.get_logger("pulse.test").warning("pulse: a thing", path="/x y", n=3)
        assert [(r.name, r.getMessage()) for r in caplog.records] == [
            ("pulse.test", 'pulse: a thing path="/x y" n=3')
        ]

    def test_rate_limited_per_message(self, caplog: pytest.LogCaptureFixture) -> None:
        """The same message 1,000 times is shown once within the window; others still show."""
        structlog.reset_defaults()
        caplog.set_level(logging.WARNING, logger="pulse.test")
        log = _log.get_logger("pulse.test")
        for i in range(1000):
            log.warning("again", i=i)
        log.warning("other")
        assert [r.getMessage() for r in caplog.records] == ["again i=0", "other"]

    def test_suppressed_count_after_window(
        self, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """After the window the next line says how many copies were suppressed."""
        structlog.reset_defaults()
        caplog.set_level(logging.WARNING, logger="pulse.test")
        now = [100.0]
        monkeypatch.setattr(_log.time, "monotonic", lambda: now[0])
        log = _log.get_logger("pulse.test")
        for _ in range(5):
            log.warning("again")
        now[0] += _log.WINDOW
        log.warning("again")
        assert [r.getMessage() for r in caplog.records] == ["again", "again suppressed=4"]

    def test_exception_is_one_line(self, caplog: pytest.LogCaptureFixture) -> None:
        """``exception()`` logs the exception's type and message, not its traceback."""
        structlog.reset_defaults()
        caplog.set_level(logging.WARNING, logger="pulse.test")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            _log.get_logger("pulse.test").exception("tick failed")
        (record,) = caplog.records
        assert record.getMessage() == 'tick failed error="RuntimeError: boom"'
        assert not record.exc_info

    def test_hostile_values_and_long_values(self, caplog: pytest.LogCaptureFixture) -> None:
        """A raising ``__repr__`` and a 1 MB value still give one short line."""

        class Hostile:
            def __repr__(self) -> str:
                raise RuntimeError("no repr")

        structlog.reset_defaults()
        caplog.set_level(logging.WARNING, logger="pulse.test")
        _log.get_logger("pulse.test").warning("odd", who=Hostile(), big="x" * 1_000_000)
        (record,) = caplog.records
        message = record.getMessage()
        assert "<unprintable Hostile>" in message
        assert len(message) <= _log.LINE_MAX + 1
        assert "\n" not in message

    def test_structlog_route_when_configured(self) -> None:
        """An application's structlog configuration receives the library's messages."""
        with structlog.testing.capture_logs() as logs:
            _log.get_logger("pulse.test").warning("configured", n=1)
        assert logs == [{"event": "configured", "n": 1, "log_level": "warning"}]

    def test_broken_handler_never_raises(self) -> None:
        """A handler whose stream raises does not make the call raise."""

        class Broken:
            def write(self, _: str) -> None:
                raise BrokenPipeError(32, "Broken pipe")

            def flush(self) -> None:
                raise BrokenPipeError(32, "Broken pipe")

        structlog.reset_defaults()
        logger = logging.getLogger("pulse.broken")
        handler = logging.StreamHandler(Broken())  # type: ignore[arg-type]
        logger.addHandler(handler)
        saved = sys.stderr
        sys.stderr = Broken()  # type: ignore[assignment]
        try:
            _log.get_logger("pulse.broken").error("into a broken pipe")
        finally:
            sys.stderr = saved
            logger.removeHandler(handler)


class TestCliLogging:
    """The CLI shows library warnings as short human lines on stderr; details with -v."""

    def test_human_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A warning is ``pulse warning: <event> key=value``; debug only with verbose."""
        from pulse_transports.cli._common import configure_logging

        try:
            configure_logging(verbose=False)
            _log.reset_rate_limits()
            _log.get_logger("pulse.test").warning("pulse: skipped a line", line=3)
            _log.get_logger("pulse.test").debug("pulse: detail")
            configure_logging(verbose=True)
            _log.get_logger("pulse.test").debug("pulse: detail")
        finally:
            structlog.reset_defaults()
        out, err = capsys.readouterr()
        assert out == ""
        assert err.splitlines() == ["pulse warning: skipped a line line=3", "pulse debug: detail"]

    def test_broken_stderr(self) -> None:
        """The CLI's logger into a broken stderr does not raise."""
        from pulse_transports.cli._common import configure_logging

        class Broken:
            def write(self, _: str) -> None:
                raise BrokenPipeError(32, "Broken pipe")

        saved = sys.stderr
        try:
            configure_logging()
            sys.stderr = Broken()  # type: ignore[assignment]
            structlog.get_logger("pulse.cli").warning("into a broken pipe")
        finally:
            sys.stderr = saved
            structlog.reset_defaults()
