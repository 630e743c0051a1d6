"""Supervised training processes: launch, hand over the log, end honestly.

This module owns running a training command as a PULSE run on behalf of a
Flow Manager step or ``pulse run``. The supervisor and the child share the
run's log, one writer at a time (the ``flock`` on ``<id>.lock`` decides), and
the supervisor holds the run's liveness whenever the child does not:

1. Before launch the supervisor takes the run's lock (its own FileSink) and
   writes ``meta`` (the flow link, ``launched_by: pulse-supervisor``) and
   ``preparing``; once the process started it writes ``running`` -- a child
   that never reports shows ``running`` at once, not after a timeout.
2. The child is started with ``PULSE_*`` variables (training id, flow link,
   home, attempt, ``PULSE_SUPERVISED=1``) so a ``TrainingRun`` in it continues
   the same log without code changes; under ``PULSE_SUPERVISED`` it continues
   from ``running`` (one ``preparing`` in the timeline). Its file sink gets
   ``lock_wait`` 5 s and a 0.25 s progress interval through
   ``PULSE_TRANSPORT_OPTIONS`` (Flow updates within 500 ms).
3. Hand-over: while it holds the lock the supervisor watches the child's
   process tree (``/proc/<pid>/fd``, every 50 ms for ``claim_timeout`` seconds,
   then every 250 ms for the child's whole life). As soon as a process of the
   tree opens the lock file -- a ``TrainingRun`` about to take it -- the
   supervisor lets the lock go, and the child, waiting up to ``lock_wait``,
   takes it within its 20 ms retry. A reporting child is never refused, late
   claims included. The lock is free only for that retry gap (<= ~20 ms once
   per run). Without ``/proc`` (not Linux) the supervisor lets go right after
   ``running`` and a non-reporting child is judged by silence.
4. While it holds the run, the supervisor writes heartbeats (the configured
   interval) and the v1 snapshot (``training_status.json``, when the ``v1``
   transport is configured). If the lock is found free for a second
   while the child lives and the run has not ended (the child closed its run
   or never managed to take it), the supervisor holds it again.
5. The child's stderr is passed through unchanged by a thread reading a pipe
   (a pseudo-terminal when the supervisor's stderr is a terminal, so the child
   still sees one), which keeps its last 40 lines / 8 KiB.
6. When the child exits the supervisor takes the lock and reads the log. If
   the run did not end, it appends what happened: ``done`` for a
   non-reporting child that exited 0; otherwise an ``error`` event, then
   ``status: error``; or ``cancelled`` if the step was cancelled. A command
   that cannot start gets ``LAUNCH_FAILED``. Then it always writes the final
   v1 snapshot (the child's own may say ``running`` after a SIGKILL).

Error codes written by the supervisor: a signal is ``PROCESS_CRASHED``
(retryable for SIGKILL) with the stderr tail's classification in
``details.cause``; a non-zero exit takes the code :func:`classify_text` finds
in the stderr tail (``CUDA_OOM``, ``DATASET_NOT_FOUND``, ``OUT_OF_MEMORY``,
``UNHANDLED_EXCEPTION`` for another Python traceback) or ``PROCESS_CRASHED``;
exit 0 of a reporting child without ``done`` is
``PROCESS_EXITED_WITHOUT_RESULT``. ``details.stderr_tail`` holds the tail.

So History always shows an honest end, whatever the child did.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from pulse_core._log import get_logger
from pulse_core.emitter import (
    ENV_ATTEMPT,
    ENV_FLOW_ID,
    ENV_FLOW_RUN_ID,
    ENV_FLOW_STEP_ID,
    ENV_RUN_NAME,
    ENV_SUPERVISED,
    ENV_TOTAL_EPOCHS,
    ENV_TRAINING_ID,
    new_training_id,
)
from pulse_core.errors import RunLocked
from pulse_core.events import (
    ErrorReported,
    Event,
    RunMeta,
    StatusChanged,
    validate_training_id,
)
from pulse_core.projections import to_history_record
from pulse_core.state import RunState
from pulse_transports._holder import RunHolder, read_state, v1_snapshot_path
from pulse_transports._proctree import PROC_AVAILABLE, process_tree, tree_opened
from pulse_transports._stderr import (
    DRAIN_WAIT,
    TAIL_BYTES,
    TAIL_LINES,
    StderrTee,
    bounded_tail,
    classify_text,
    last_words,
    tee_channel,
    tee_target,
)
from pulse_transports.config import ENV_TRANSPORT_OPTIONS, Config, load_config
from pulse_transports.file import lock_path, writer_alive

__all__ = [
    "CHILD_LOCK_WAIT",
    "CHILD_LOG_INTERVAL",
    "CLAIM_TIMEOUT",
    "DRAIN_WAIT",
    "GRACE_PERIOD",
    "PROC_AVAILABLE",
    "SUPERVISOR_LABEL",
    "TAIL_BYTES",
    "TAIL_LINES",
    "FlowLink",
    "Outcome",
    "RunHolder",
    "StderrTee",
    "Supervisor",
    "bounded_tail",
    "child_environment",
    "child_reported",
    "classify_text",
    "last_words",
    "process_tree",
    "read_state",
    "tee_channel",
    "tee_target",
    "tree_opened",
    "v1_snapshot_path",
]

log = get_logger("pulse.supervise")

SUPERVISOR_LABEL: Final = "pulse-supervisor"
#: Seconds a launched child has to open its log before it is taken not to report.
CLAIM_TIMEOUT: Final = 5.0
#: Seconds a cancelled child gets between SIGTERM and SIGKILL.
GRACE_PERIOD: Final = 10.0
#: Claim scans of the child's process tree: while a claim is likely, and later.
SCAN_FAST: Final = 0.05
SCAN_SLOW: Final = 0.25
#: Seconds the child's file sink waits for the lock (set in its environment);
#: far above SCAN_SLOW, so a claim is always seen and let through in time.
CHILD_LOCK_WAIT: Final = 5.0
#: Least seconds between the child's progress lines in the log (Flow updates
#: within 500 ms; the library default is 1 s).
CHILD_LOG_INTERVAL: Final = 0.25
#: Seconds the lock may stay free while the child lives before the supervisor
#: holds it again (a claiming child takes it within its 20 ms retry).
REHOLD_AFTER: Final = 1.0


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


def child_environment(
    base: Mapping[str, str],
    training_id: str,
    home: Path,
    link: FlowLink,
    total_epochs: int | None = None,
    file_options: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The environment that lets a child's TrainingRun continue this run.

    *file_options* are the ``file`` transport options already configured;
    the child's ``lock_wait`` and ``interval`` default to the supervisor's
    (:data:`CHILD_LOCK_WAIT`, :data:`CHILD_LOG_INTERVAL`) unless set there.
    """
    env = dict(base)
    env[ENV_TRAINING_ID] = training_id
    env["PULSE_HOME"] = str(home.resolve())
    env[ENV_SUPERVISED] = "1"
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
    tables: dict[str, Any] = {}
    with contextlib.suppress(ValueError):
        given = json.loads(env.get(ENV_TRANSPORT_OPTIONS) or "{}")
        if isinstance(given, dict):
            tables = given
    given_file = tables.get("file")
    file_table: dict[str, Any] = given_file if isinstance(given_file, dict) else {}
    tables["file"] = {
        "lock_wait": CHILD_LOCK_WAIT,
        "interval": CHILD_LOG_INTERVAL,
        **dict(file_options or {}),
        **file_table,
    }
    env[ENV_TRANSPORT_OPTIONS] = json.dumps(tables)
    return env


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
        claim_timeout: seconds of fast claim scans after launch (a child
            claiming later is let through too, a little slower).
        stdout, stderr: passed to ``subprocess.Popen``; stderr None (the
            terminal), a file, a descriptor or DEVNULL is passed through a
            pipe that keeps the tail; PIPE and STDOUT are left to the caller.
        config: the configuration (heartbeat interval, the v1 snapshot);
            default: loaded for *home*.
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
        config: Config | None = None,
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
        self.config = config or load_config(home=self.home)
        self.process: subprocess.Popen[bytes] | None = None
        self.outcome: Outcome | None = None
        self.tee: StderrTee | None = None
        self._holder = RunHolder(self.home, self.training_id, v1_snapshot_path(self.config))
        self._lock_target = os.path.realpath(lock_path(self.home, self.training_id))
        self._cancel_requested = False
        self._cancel_message = "cancelled"
        self._done = threading.Event()
        self._lock = threading.Lock()

    # -- life ---------------------------------------------------------------------

    def start(self) -> None:
        """Write meta + preparing, launch the child, write running (launch errors end the run).

        Raises:
            RunLocked: another live writer holds this training_id.
        """
        tid, link = self.training_id, self.link
        self._holder.append(
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
        env = child_environment(
            self.env,
            tid,
            self.home,
            link,
            self.total_epochs,
            self.config.transport_options.get("file"),
        )
        if self.name:
            env[ENV_RUN_NAME] = self.name  # the child's TrainingRun keeps this name
        tee, target = tee_target(self.stderr)
        read_end = write_end = -1
        if tee:
            read_end, write_end = tee_channel(target)
        try:
            self.process = subprocess.Popen(
                self.command,
                env=env,
                cwd=self.cwd,
                stdout=self.stdout,
                stderr=write_end if tee else self.stderr,
                start_new_session=True,
            )
        except (OSError, ValueError) as exc:
            for fd in (read_end, write_end):
                if fd >= 0:
                    os.close(fd)
            self._launch_failed(exc)
            return
        if tee:
            os.close(write_end)
            self.tee = StderrTee(read_end, target)
        pid = self.process.pid
        try:
            self._holder.append(
                lambda seq, now: [
                    StatusChanged(
                        training_id=tid,
                        seq=seq,
                        timestamp=now,
                        status="running",
                        message=f"process {pid} started",
                    )
                ]
            )
        except OSError as exc:  # the child runs: supervise it whatever the disk says
            log.warning("pulse: could not write running", training_id=tid, error=str(exc))
        if not PROC_AVAILABLE:
            self._holder.release()  # no way to see a claim: never block one
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

    @property
    def child_running(self) -> bool:
        """True while the child process lives."""
        process = self.process
        return process is not None and process.poll() is None

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

        try:
            state = self._holder.append(build)
        finally:
            self._holder.release()
        self._finish(state, None)

    def _watch(self) -> None:
        try:
            self._hold_while_running()
        except Exception as exc:  # noqa: BLE001 - the end must still be written
            log.warning(
                "pulse: supervising the run failed; writing its end",
                training_id=self.training_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        process = self.process
        assert process is not None
        code = process.wait()
        if self.tee is not None:
            self.tee.drain()
        state: RunState | None = None
        try:
            self._holder.hold()
            state = self._holder.append(lambda seq, now: self._ending(seq, now, code))
        except Exception as exc:  # noqa: BLE001 - e.g. a grandchild still holds the lock
            log.warning(
                "pulse: could not write the run's end",
                training_id=self.training_id,
                error=f"{type(exc).__name__}: {exc}",
            )
        finally:
            self._holder.release()
        if state is None:
            state = self._state()
            self._holder.write_v1(state)
        self._finish(state, code)

    def _hold_while_running(self) -> None:
        """Hold the run for the child until it claims the log; hold it again if it lets go."""
        process = self.process
        assert process is not None
        holder = self._holder
        fast_until = time.monotonic() + self.claim_timeout
        beat = self.config.heartbeat_interval
        next_beat = time.monotonic() + beat
        free_since: float | None = None
        while process.poll() is None:
            now = time.monotonic()
            if holder.holding:
                if tree_opened(process.pid, self._lock_target):
                    holder.release()  # the child is taking the log over
                    free_since = None
                elif now >= next_beat:
                    next_beat = now + beat
                    try:
                        holder.heartbeat()
                    except OSError as exc:  # a full disk: keep the lock, try again next beat
                        log.warning(
                            "pulse: heartbeat write failed",
                            training_id=self.training_id,
                            error=str(exc),
                        )
            elif PROC_AVAILABLE:
                # The child holds the run. If it lets go while it lives (its run
                # closed without an end, or it never took the lock), hold it again.
                if writer_alive(self.home, self.training_id) is False:
                    free_since = now if free_since is None else free_since
                    if now - free_since >= REHOLD_AFTER and not self._state().is_terminal:
                        with contextlib.suppress(RunLocked, OSError):
                            holder.hold(wait=0.0)
                            next_beat = now + beat
                            holder.heartbeat()
                        free_since = None
                else:
                    free_since = None
            time.sleep(SCAN_FAST if now < fast_until else SCAN_SLOW)

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
        tail = self.tee.tail() if self.tee is not None else ""
        cause, cause_retryable = classify_text(tail)
        words = last_words(tail)
        details: dict[str, Any] = {"exit_code": code}
        if code < 0:
            signame = _signal_name(-code)
            error_code, retryable = "PROCESS_CRASHED", -code == signal.SIGKILL
            message = f"training process killed by {signame} without reporting an end"
            details["signal"] = signame
            if cause != "PROCESS_CRASHED":
                details["cause"] = cause
        elif code == 0:
            error_code, retryable = "PROCESS_EXITED_WITHOUT_RESULT", False
            message = "training process exited with status 0 without reporting done"
        else:
            error_code, retryable = cause, cause_retryable
            message = f"training process exited with status {code} without reporting an end"
        if words:
            message = f"{message}: {words}"
        details["pid"] = self.process.pid if self.process else None
        details["last_status"] = state.status
        if tail:
            details["stderr_tail"] = tail
        return [
            ErrorReported(
                training_id=tid,
                seq=seq,
                timestamp=now,
                error_code=error_code,
                message=message[:500],
                is_retryable=retryable,
                details=details,
                epoch=state.epoch,
                step=state.step,
            ),
            StatusChanged(
                training_id=tid, seq=seq + 1, timestamp=now, status="error", message=message[:500]
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
