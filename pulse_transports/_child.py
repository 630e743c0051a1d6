"""What a supervisor and its child say to each other, and how a run it holds ends.

Private to :mod:`pulse_transports.supervise`, which re-exports these names:
the child's environment (:func:`child_environment`), whether the child
reported (:func:`child_reported`), the events that end a run whose child
exited without ending it (:func:`ending_events`), the flow step a run
belongs to (:class:`FlowLink`) and a finished run's :class:`Outcome`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from pulse_core._log import get_logger
from pulse_core.emitter import (
    ENV_ATTEMPT,
    ENV_FLOW_ID,
    ENV_FLOW_RUN_ID,
    ENV_FLOW_STEP_ID,
    ENV_HANDLE_SIGNALS,
    ENV_SUPERVISED,
    ENV_TOTAL_EPOCHS,
    ENV_TRAINING_ID,
)
from pulse_core.events import (
    ErrorReported,
    Event,
    RunMeta,
    StatusChanged,
)
from pulse_core.projections import to_history_record
from pulse_core.state import RunState
from pulse_transports._proctree import signal_name
from pulse_transports._stderr import (
    classify_text,
    last_words,
)
from pulse_transports.config import ENV_TRANSPORT_OPTIONS

log = get_logger("pulse.supervise")

#: The ``launched_by`` label of the metadata a supervisor writes for its child's run
#: (a child that reports writes its own, without it: see :func:`child_reported`).
SUPERVISOR_LABEL: Final = "pulse-supervisor"
#: Seconds the child's file sink waits for the lock (set in its environment);
#: far above SCAN_SLOW, so a claim is always seen and let through in time.
CHILD_LOCK_WAIT: Final = 5.0
#: Least seconds between the child's progress lines in the log (Flow updates
#: within 500 ms; the library default is 1 s).
CHILD_LOG_INTERVAL: Final = 0.25


@attrs.frozen
class FlowLink:
    """Which flow step a run belongs to (all optional; named as in :class:`RunMeta`)."""

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
    env[ENV_HANDLE_SIGNALS] = "1"
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


def meta_event(
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
        total_epochs=total_epochs,
        pid=os.getpid(),
        host=socket.gethostname(),
        labels=labels,
        **attrs.asdict(link),  # the flow step the run belongs to
    )


def child_reported(state: RunState) -> bool:
    """True if a process other than the supervisor wrote the run's metadata."""
    meta = state.meta
    return meta is not None and meta.labels.get("launched_by") != SUPERVISOR_LABEL


def ending_events(
    training_id: str,
    state: RunState,
    seq: int,
    now: float,
    code: int,
    *,
    cancel_message: str | None,
    tail: Callable[[], str],
    pid: int | None,
) -> list[Event]:
    """The events that end a supervised run whose child exited with *code*.

    Nothing if the child ended run *training_id* (in *state*) itself; ``cancelled`` if a cancel was
    asked (*cancel_message* not None); ``done`` for a silent exit 0 of a
    child that never reported; otherwise an error classified from the
    child's stderr *tail*.
    """
    if state.is_terminal:
        return []
    tid = training_id
    if cancel_message is not None:
        return [
            StatusChanged(
                training_id=tid,
                seq=seq,
                timestamp=now,
                status="cancelled",
                message=cancel_message,
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
    tail_text = tail()
    cause, cause_retryable = classify_text(tail_text)
    words = last_words(tail_text)
    details: dict[str, Any] = {"exit_code": code}
    if code < 0:
        signame = signal_name(-code)
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
    details["pid"] = pid
    details["last_status"] = state.status
    if tail_text:
        details["stderr_tail"] = tail_text
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
