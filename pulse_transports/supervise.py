"""Supervised training processes: launch, hand over the log, end honestly.

This module owns running a training command as a PULSE run on behalf of a
Flow Manager step or ``pulse run``. The supervisor and the child share the
run's log, one writer at a time (the file lock decides):

1. Before launch the supervisor writes the run's ``meta`` (the flow link) and
   ``preparing``, then releases the lock.
2. The child is started with ``PULSE_*`` variables (training id, flow link,
   home, attempt) so a ``TrainingRun`` in it continues the same log without
   code changes. A child that does not take the log within
   ``claim_timeout`` seconds is taken not to report; the supervisor then
   writes ``running`` for it.
3. When the child exits the supervisor reads the log. If the run did not end,
   it appends what happened: ``done`` for a non-reporting child that exited
   0; otherwise an ``error`` event -- ``PROCESS_CRASHED`` (a signal or a
   non-zero exit), ``PROCESS_EXITED_WITHOUT_RESULT`` (a reporting child that
   exited 0 without ``done``) -- then ``status: error``; or ``cancelled`` if
   the step was cancelled. A command that cannot start gets ``LAUNCH_FAILED``.

So History always shows an honest end, whatever the child did.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import structlog

from pulse_core.emitter import (
    ENV_ATTEMPT,
    ENV_FLOW_ID,
    ENV_FLOW_RUN_ID,
    ENV_FLOW_STEP_ID,
    ENV_TOTAL_EPOCHS,
    ENV_TRAINING_ID,
    new_training_id,
)
from pulse_core.errors import RunLocked
from pulse_core.events import ErrorReported, Event, RunMeta, StatusChanged, validate_training_id
from pulse_core.projections import to_history_record
from pulse_core.state import RunState
from pulse_transports.file import FileSink, log_path, writer_alive
from pulse_transports.follow import read_log

log = structlog.get_logger("pulse.supervise")

SUPERVISOR_LABEL: Final = "pulse-supervisor"
#: Seconds a launched child has to open its log before it is taken not to report.
CLAIM_TIMEOUT: Final = 5.0
#: Seconds a cancelled child gets between SIGTERM and SIGKILL.
GRACE_PERIOD: Final = 10.0


@attrs.frozen
class FlowLink:
    """Which flow step a run belongs to (all optional)."""

    flow_id: str | None = None
    flow_run_id: str | None = None
    flow_step_id: str | None = None
    attempt: int | None = None


@attrs.frozen
class Outcome:
    """How a supervised run ended: what a flow step needs to decide next.

    Attributes:
        training_id: the run, to drill into.
        status: ``done``, ``error`` or ``cancelled``.
        outcome: ``success``, ``error`` or ``cancelled``.
        exit_code: the process's exit status (negative: killed by a signal),
            or None for an in-process run or a command that never started.
        duration: seconds from start to end, if known.
        key_metrics: final and best loss, epochs done, throughput.
        error: the last error (code, message, is_retryable, count) or None.
        retryable: True when the flow should offer "retry".
        record: the full Flow History record.
    """

    training_id: str
    status: str
    outcome: str
    exit_code: int | None
    duration: float | None
    key_metrics: Mapping[str, Any]
    error: Mapping[str, Any] | None
    retryable: bool
    record: Mapping[str, Any]

    @classmethod
    def from_state(cls, state: RunState, exit_code: int | None) -> Outcome:
        """Build the outcome of an ended run from its folded state."""
        record = to_history_record(state)
        return cls(
            training_id=str(state.training_id),
            status=state.status,
            outcome=str(record["outcome"]),
            exit_code=exit_code,
            duration=record["duration"],
            key_metrics={**record["key_metrics"], **record["epochs"]},
            error=record["error"],
            retryable=bool(record["retryable"]),
            record=record,
        )


def read_state(home: Path, training_id: str) -> RunState:
    """Fold a run's log as it is now (bad lines skipped); empty if there is none."""
    return read_log(log_path(home, training_id)).state


def child_environment(
    base: Mapping[str, str],
    training_id: str,
    home: Path,
    link: FlowLink,
    total_epochs: int | None = None,
) -> dict[str, str]:
    """The environment that lets a child's TrainingRun continue this run."""
    env = dict(base)
    env[ENV_TRAINING_ID] = training_id
    env["PULSE_HOME"] = str(home.resolve())
    env["PULSE_SUPERVISED"] = "1"
    env["PULSE_HANDLE_SIGNALS"] = "1"
    for name, value in (
        (ENV_FLOW_ID, link.flow_id),
        (ENV_FLOW_RUN_ID, link.flow_run_id),
        (ENV_FLOW_STEP_ID, link.flow_step_id),
        (ENV_ATTEMPT, None if link.attempt is None else str(link.attempt)),
        (ENV_TOTAL_EPOCHS, None if total_epochs is None else str(total_epochs)),
    ):
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class LogWriter:
    """Appends supervisor events to a run's log, taking its lock briefly."""

    def __init__(self, home: Path, training_id: str, lock_wait: float = 30.0) -> None:
        self.home = home
        self.training_id = training_id
        self.lock_wait = lock_wait

    def append(
        self, build: Callable[[int, float], list[Event]], *, reopen_ended: bool = True
    ) -> RunState:
        """Append ``build(next_seq, now)``'s events; return the state after them.

        ``build`` sees the log's state through the returned list only; it is
        called with the lock held, so no other writer can interleave. With
        ``reopen_ended=False`` (the run's start) the id of a run that already
        ended is refused with RunExists; later appends read an ended run and
        add nothing.
        """
        sink = FileSink(home=self.home, reopen_ended=reopen_ended)
        deadline = time.monotonic() + self.lock_wait
        while True:
            try:
                last = sink.open(self.training_id) or 0
                break
            except RunLocked:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            for event in build(last + 1, time.time()):
                sink.write(event)
        finally:
            sink.close()
        return read_state(self.home, self.training_id)


def _meta(
    training_id: str,
    seq: int,
    now: float,
    link: FlowLink,
    name: str | None,
    total_epochs: int | None,
    command: Sequence[str] | None,
) -> RunMeta:
    labels = {"launched_by": SUPERVISOR_LABEL}
    if command:
        labels["command"] = " ".join(command)[:500]
    return RunMeta(
        training_id=training_id,
        seq=seq,
        timestamp=now,
        name=name,
        flow_id=link.flow_id,
        flow_run_id=link.flow_run_id,
        flow_step_id=link.flow_step_id,
        attempt=link.attempt,
        total_epochs=total_epochs,
        pid=os.getpid(),
        host=socket.gethostname(),
        labels=labels,
    )


def child_reported(state: RunState) -> bool:
    """True if a process other than the supervisor wrote the run's metadata."""
    meta = state.meta
    return meta is not None and meta.labels.get("launched_by") != SUPERVISOR_LABEL


class Supervisor:
    """Runs one training command as a supervised PULSE run.

    Args:
        command: the command line (no shell).
        home: the PULSE home folder the child reports into.
        training_id: the run's id (default: a new time-ordered id).
        link: the flow link written into the run's metadata.
        name: a short human name.
        total_epochs: passed to the child as ``PULSE_TOTAL_EPOCHS``.
        env: the base environment for the child (default ``os.environ``).
        cwd: the child's working folder.
        claim_timeout: seconds for the child to open its log.
        stdout, stderr: passed to ``subprocess.Popen``.
    """

    def __init__(
        self,
        command: Sequence[str],
        *,
        home: Path,
        training_id: str | None = None,
        link: FlowLink | None = None,
        name: str | None = None,
        total_epochs: int | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        claim_timeout: float = CLAIM_TIMEOUT,
        stdout: Any = None,
        stderr: Any = None,
    ) -> None:
        self.command = list(command)
        self.home = Path(home)
        self.training_id = validate_training_id(training_id or new_training_id())
        self.link = link or FlowLink()
        self.name = name
        self.total_epochs = total_epochs
        self.env = os.environ if env is None else env
        self.cwd = cwd
        self.claim_timeout = claim_timeout
        self.stdout = stdout
        self.stderr = stderr
        self.process: subprocess.Popen[bytes] | None = None
        self.outcome: Outcome | None = None
        self._writer = LogWriter(self.home, self.training_id)
        self._cancel_requested = False
        self._cancel_message = "cancelled"
        self._done = threading.Event()
        self._lock = threading.Lock()

    # -- life ---------------------------------------------------------------------

    def start(self) -> None:
        """Write meta + preparing, then launch the child (never raises for launch errors)."""
        tid, link = self.training_id, self.link
        self._writer.append(
            lambda seq, now: [
                _meta(tid, seq, now, link, self.name, self.total_epochs, self.command),
                StatusChanged(
                    training_id=tid,
                    seq=seq + 1,
                    timestamp=now,
                    status="preparing",
                    message=f"launching {self.command[0] if self.command else '?'}",
                ),
            ],
            reopen_ended=False,
        )
        env = child_environment(self.env, tid, self.home, link, self.total_epochs)
        try:
            self.process = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.cwd,
                stdout=self.stdout,
                stderr=self.stderr,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            self._launch_failed(exc)
            return
        threading.Thread(target=self._watch, name=f"pulse-supervise-{tid}", daemon=True).start()

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Wait for the run to end; its outcome, or None on timeout."""
        if not self._done.wait(timeout):
            return None
        return self.outcome

    @property
    def finished(self) -> bool:
        """True once the outcome is known."""
        return self._done.is_set()

    def send_signal(self, signum: int) -> None:
        """Send *signum* to the child's process group (if it still runs)."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)

    def request_cancel(self, message: str = "cancelled") -> None:
        """Mark the run cancelled: however the child ends, the run ends ``cancelled``."""
        self._cancel_message = message
        self._cancel_requested = True

    def cancel(self, grace: float = GRACE_PERIOD, message: str = "cancelled") -> Outcome | None:
        """Stop the run: SIGTERM, then SIGKILL after *grace* seconds.

        The run ends ``cancelled`` whatever the child does; returns the outcome.
        """
        self.request_cancel(message)
        process = self.process
        if process is not None and process.poll() is None:
            self.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "pulse: child ignored SIGTERM; killing it", training_id=self.training_id
                )
                self.send_signal(signal.SIGKILL)
        return self.wait(timeout=grace + 30.0)

    # -- internals ----------------------------------------------------------------

    def _launch_failed(self, exc: BaseException) -> None:
        tid = self.training_id
        message = f"could not start {self.command[0] if self.command else '(empty command)'}: {exc}"

        def build(seq: int, now: float) -> list[Event]:
            return [
                ErrorReported(
                    training_id=tid,
                    seq=seq,
                    timestamp=now,
                    error_code="LAUNCH_FAILED",
                    message=message[:500],
                    is_retryable=False,
                    details={"command": self.command[:50], "exception": type(exc).__name__},
                ),
                StatusChanged(
                    training_id=tid,
                    seq=seq + 1,
                    timestamp=now,
                    status="error",
                    message=message[:500],
                ),
            ]

        self._finish(self._writer.append(build), None)

    def _watch(self) -> None:
        process = self.process
        assert process is not None
        deadline = time.monotonic() + self.claim_timeout
        claimed = False
        while process.poll() is None and time.monotonic() < deadline:
            if writer_alive(self.home, self.training_id):
                claimed = True
                break
            time.sleep(0.05)
        if not claimed and process.poll() is None and not child_reported(self._state()):
            tid = self.training_id
            self._writer.append(
                lambda seq, now: (
                    [
                        StatusChanged(
                            training_id=tid,
                            seq=seq,
                            timestamp=now,
                            status="running",
                            message=f"process {process.pid} started; it does not report",
                        )
                    ]
                    if self._state().status in ("idle", "preparing")
                    else []
                )
            )
        code = process.wait()
        self._finish(self._writer.append(lambda seq, now: self._ending(seq, now, code)), code)

    def _state(self) -> RunState:
        return read_state(self.home, self.training_id)

    def _ending(self, seq: int, now: float, code: int) -> list[Event]:
        state = self._state()
        if state.is_terminal:
            return []
        tid = self.training_id
        if self._cancel_requested:
            return [
                StatusChanged(
                    training_id=tid,
                    seq=seq,
                    timestamp=now,
                    status="cancelled",
                    message=self._cancel_message,
                )
            ]
        reported = child_reported(state)
        if code == 0 and not reported:
            events: list[Event] = []
            if state.status in ("idle", "preparing"):
                events.append(
                    StatusChanged(
                        training_id=tid,
                        seq=seq,
                        timestamp=now,
                        status="running",
                        message="process ran",
                    )
                )
                seq += 1
            events.append(
                StatusChanged(
                    training_id=tid,
                    seq=seq,
                    timestamp=now,
                    status="done",
                    message="process exited with status 0",
                )
            )
            return events
        if code < 0:
            signame = _signal_name(-code)
            error_code, retryable = "PROCESS_CRASHED", -code == signal.SIGKILL
            message = f"training process killed by {signame} without reporting an end"
            details: dict[str, Any] = {"signal": signame, "exit_code": code}
        elif code == 0:
            error_code, retryable = "PROCESS_EXITED_WITHOUT_RESULT", False
            message = "training process exited with status 0 without reporting done"
            details = {"exit_code": 0}
        else:
            error_code, retryable = "PROCESS_CRASHED", False
            message = f"training process exited with status {code} without reporting an end"
            details = {"exit_code": code}
        details["pid"] = self.process.pid if self.process else None
        details["last_status"] = state.status
        return [
            ErrorReported(
                training_id=tid,
                seq=seq,
                timestamp=now,
                error_code=error_code,
                message=message,
                is_retryable=retryable,
                details=details,
                epoch=state.epoch,
                step=state.step,
            ),
            StatusChanged(
                training_id=tid, seq=seq + 1, timestamp=now, status="error", message=message
            ),
        ]

    def _finish(self, state: RunState, code: int | None) -> None:
        with self._lock:
            self.outcome = Outcome.from_state(state, code)
        self._done.set()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
