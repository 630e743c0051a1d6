"""What a v1 snapshot means for a bridged run: pure rules of the v1 -> v2 bridge.

This module owns the decisions :class:`~pulse_transports.v1.bridge.V1FileSource`
makes about each snapshot, with no I/O: the bridged run's ids
(:func:`training_id_for`) and labels, the status path through the lifecycle
(:func:`lifecycle_path`), when a run ended without the bridge seeing how
(:func:`ends_unseen`), and the events a snapshot change means
(:func:`snapshot_changes`). The rules are described in
:mod:`pulse_transports.v1.bridge`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

from pulse_core.events import (
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    StatusChanged,
)
from pulse_core.lifecycle import is_terminal, next_status
from pulse_core.liveness import HEARTBEAT_INTERVAL
from pulse_core.ports import Sink
from pulse_core.state import RunState
from pulse_transports.v1.snapshot import V1Snapshot

#: Label keys a bridged run's ``meta`` carries.
SOURCE_LABEL: Final = "pulse.source"
PATH_LABEL: Final = "pulse.v1_path"
SOURCE_NAME: Final = "v1file"
#: The error code of the ``error`` event sent when a v1 file says its run failed
#: (v1 has no error codes).
V1_ERROR_CODE: Final = "V1_ERROR"
_EARLY: Final = frozenset({"idle", "preparing", "running"})


def training_id_for(at: float, n: int) -> str:
    """The training id of a bridged run whose first snapshot is from *at* (Unix s)."""
    millis = int(at * 1000)
    moment = datetime.fromtimestamp(millis / 1000, UTC)
    return f"v1-{moment:%Y%m%d-%H%M%S}-{millis % 1000:03d}-{n}"


def is_bridged(state: RunState, path: str) -> bool:
    meta = state.meta
    return (
        meta is not None
        and meta.labels.get(SOURCE_LABEL) == SOURCE_NAME
        and meta.labels.get(PATH_LABEL) == path
    )


def lifecycle_path(current: str, target: str) -> list[str]:
    """The statuses to send to move a run from *current* to *target* (empty: not allowed).

    One step when the lifecycle allows it; else through ``running`` (a v1
    file may show ``cooling_down`` or ``done`` before the bridge ever saw
    ``running``).
    """
    if current == target:
        return []
    if next_status(current, target) is not None:
        return [target]
    if next_status(current, "running") is not None and next_status("running", target):
        return ["running", target]
    return []


class BridgedRun:
    """The bridged run the source is writing: its sinks and what it last said."""

    def __init__(self, training_id: str, sinks: list[Sink], seq: int) -> None:
        self.training_id = training_id
        self.sinks = sinks
        self.seq = seq
        self.status = "idle"
        self.message = ""
        self.epoch: int | None = None
        self.total_epochs: int | None = None
        self.loss: float | None = None
        self.last_at = float("-inf")
        self.last_beat = float("-inf")

    @property
    def ended(self) -> bool:
        return is_terminal(self.status)


def ends_unseen(run: BridgedRun, snapshot: V1Snapshot) -> str | None:
    """Why *snapshot* means the open, unfinished *run* ended unseen; None if it did not."""
    status = snapshot.status
    if status == "idle":
        return "the v1 file went back to idle"
    if status == "preparing" and run.status in ("running", "cooling_down"):
        return "the v1 file shows a new run preparing"
    if (
        status in _EARLY
        and snapshot.epoch is not None
        and snapshot.epoch <= 1
        and run.epoch is not None
        and run.epoch > snapshot.epoch
    ):
        return f"the v1 file's epoch went back from {run.epoch} to {snapshot.epoch}"
    return None


def snapshot_changes(run: BridgedRun, snapshot: V1Snapshot, at: float) -> tuple[list[Event], int]:
    """The events (seq 0, stamped *at*) a snapshot means for *run*, and statuses ignored.

    Updates what *run* last said (status, message, epochs, loss, last heartbeat).
    """
    ignored = 0
    tid = run.training_id
    statuses: list[tuple[str, str]] = []
    target = snapshot.status
    if target is None:
        ignored += 1
    elif target != run.status:
        steps = lifecycle_path(run.status, target)
        if not steps:
            ignored += 1
        for step in steps:
            text = snapshot.message if step == target else "running (seen in the v1 file)"
            statuses.append((step, text))
    elif snapshot.message != run.message and next_status(target, target) is not None:
        statuses.append((target, snapshot.message))
    samples: list[Event] = []
    if snapshot.epoch is not None or snapshot.total_epochs is not None:
        epoch = snapshot.epoch if snapshot.epoch is not None else run.epoch
        total = snapshot.total_epochs if snapshot.total_epochs is not None else run.total_epochs
        if (epoch, total) != (run.epoch, run.total_epochs):
            samples.append(Progress(tid, 0, at, epoch=epoch, total_epochs=total))
            run.epoch, run.total_epochs = epoch, total
    if snapshot.loss is not None and snapshot.loss != run.loss:
        samples.append(Metrics(tid, 0, at, loss=snapshot.loss))
        run.loss = snapshot.loss
    changes: list[Event] = [StatusChanged(tid, 0, at, status=s, message=m) for s, m in statuses]
    if statuses and statuses[-1][0] == "error":
        # v1 has no error event: give the end its own, so History can show it.
        report = ErrorReported(
            tid,
            0,
            at,
            error_code=V1_ERROR_CODE,
            message=snapshot.message or "the v1 writer reported an error",
            details={"v1_status": snapshot.raw_status},
            epoch=run.epoch,
        )
        changes.insert(len(changes) - 1, report)
    ending = bool(statuses) and is_terminal(statuses[-1][0])
    # Values go before an end (readers ignore events after it), after a start.
    events: list[Event] = samples + changes if ending else changes + samples
    if statuses:
        run.status, run.message = statuses[-1]
    quiet = not events and snapshot.timestamp is not None and at > run.last_at
    if quiet and at - run.last_beat >= HEARTBEAT_INTERVAL:
        events.append(Heartbeat(tid, 0, at))
        run.last_beat = at
    return events, ignored
