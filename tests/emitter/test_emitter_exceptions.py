"""Leaving `with` by an exception: the right error or cancel, then the end, then re-raise."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from pulse_core.emitter import TrainingRun, classify_exception
from pulse_core.events import ErrorReported, StatusChanged
from pulse_core.testing import RecordingSink

MakeRun = Callable[..., TrainingRun]


class OutOfMemoryError(RuntimeError):
    """Named like torch.cuda.OutOfMemoryError."""


class TestExceptionLeavesWith:
    """An exception inside `with` ends the run error/cancelled -- never done -- and propagates."""

    def _run_and_raise(self, make_run: MakeRun, exc: BaseException) -> RecordingSink:
        sink = RecordingSink()

        def train() -> None:
            with make_run("exc-run", sinks=[sink]) as run:
                run.status("running")
                run.progress(epoch=2, step=5)
                raise exc

        with pytest.raises(type(exc)) as caught:
            train()
        assert caught.value is exc
        assert "done" not in [e.status for e in sink.of_type(StatusChanged)]
        return sink

    def test_file_not_found_is_dataset_not_found(self, make_run: MakeRun) -> None:
        """FileNotFoundError -> DATASET_NOT_FOUND, not retryable, then status error."""
        sink = self._run_and_raise(make_run, FileNotFoundError("train.csv"))
        error = sink.of_type(ErrorReported)[0]
        assert (error.error_code, error.is_retryable) == ("DATASET_NOT_FOUND", False)
        assert (error.epoch, error.step) == (2, 5)
        assert "train.csv" in error.message
        assert sink.events[-1] == sink.of_type(StatusChanged)[-1]
        assert sink.of_type(StatusChanged)[-1].status == "error"
        assert sink.events.index(error) == len(sink.events) - 2

    def test_cuda_oom(self, make_run: MakeRun) -> None:
        """torch's OutOfMemoryError and 'CUDA ... out of memory' RuntimeErrors -> CUDA_OOM."""
        for exc in (
            OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            RuntimeError("CUDA error: out of memory"),
        ):
            sink = self._run_and_raise(make_run, exc)
            error = sink.of_type(ErrorReported)[0]
            assert (error.error_code, error.is_retryable) == ("CUDA_OOM", True)
            assert sink.of_type(StatusChanged)[-1].status == "error"

    def test_keyboard_interrupt_is_cancelled(self, make_run: MakeRun) -> None:
        """KeyboardInterrupt -> cancelled, no error event."""
        sink = self._run_and_raise(make_run, KeyboardInterrupt())
        assert sink.of_type(ErrorReported) == []
        assert sink.of_type(StatusChanged)[-1].status == "cancelled"

    def test_generic_exception_has_type_and_trace_id(self, make_run: MakeRun, logs: object) -> None:
        """Anything else -> UNHANDLED_EXCEPTION with exception type, trace id and traceback."""
        sink = self._run_and_raise(make_run, ValueError("bad shape (3, 4)"))
        error = sink.of_type(ErrorReported)[0]
        assert error.error_code == "UNHANDLED_EXCEPTION"
        assert error.details is not None
        assert error.details["exception_type"] == "builtins.ValueError"
        trace_id = error.details["trace_id"]
        assert len(trace_id) == 16
        assert "ValueError: bad shape (3, 4)" in error.details["traceback"]
        assert error.message == "ValueError: bad shape (3, 4)"
        logged = [r for r in logs.records if r.get("trace_id") == trace_id]  # type: ignore[attr-defined]
        assert logged
        assert logged[0]["exception_type"] == "builtins.ValueError"
        assert "traceback" not in logged[0]  # Python prints the user's traceback; we don't

    def test_system_exit(self, make_run: MakeRun) -> None:
        """sys.exit(0) inside `with` is a cancel; a non-zero exit an error with its code."""
        sink = self._run_and_raise(make_run, SystemExit(0))
        assert sink.of_type(StatusChanged)[-1].status == "cancelled"
        sink = self._run_and_raise(make_run, SystemExit(3))
        error = sink.of_type(ErrorReported)[0]
        assert error.error_code == "PROCESS_EXITED_WITHOUT_RESULT"
        assert error.details == {"exit_code": 3}

    def test_exception_after_explicit_end(self, make_run: MakeRun) -> None:
        """An exception after the run reported done does not rewrite its end."""
        sink = RecordingSink()

        def train() -> None:
            with make_run("exc-2", sinks=[sink]) as run:
                run.status("running")
                run.status("done")
                raise ValueError("late")

        with pytest.raises(ValueError, match="late"):
            train()
        assert [e.status for e in sink.of_type(StatusChanged)] == ["preparing", "running", "done"]
        assert sink.of_type(ErrorReported) == []

    def test_exception_while_preparing(self, make_run: MakeRun) -> None:
        """A failure before training started is an error too, not a cancel."""
        sink = RecordingSink()
        with pytest.raises(FileNotFoundError), make_run("exc-3", sinks=[sink]):
            raise FileNotFoundError("data")
        assert [e.status for e in sink.of_type(StatusChanged)] == ["preparing", "error"]


class TestClassify:
    """classify_exception maps exception kinds to well-known codes."""

    def test_codes(self) -> None:
        """Each kind gets its code; an exception can also name its own."""

        class Custom(Exception):
            pulse_error_code = "INVALID_CONFIG"
            pulse_retryable = True

        assert classify_exception(FileNotFoundError()) == ("DATASET_NOT_FOUND", False)
        assert classify_exception(OutOfMemoryError()) == ("CUDA_OOM", True)
        assert classify_exception(MemoryError()) == ("OUT_OF_MEMORY", True)
        assert classify_exception(KeyError("x")) == ("UNHANDLED_EXCEPTION", False)
        assert classify_exception(Custom()) == ("INVALID_CONFIG", True)
