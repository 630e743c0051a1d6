"""Projections of a run's state: the v1 snapshot, the v2 view, history records.

This module owns what consumers see. Every function is pure: time comes in
as the ``now`` argument and liveness as a value computed by
:mod:`pulse_core.liveness`. Every result is plain JSON-serialisable data.
Must never import I/O modules.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final

from pulse_core.events import ErrorReported
from pulse_core.liveness import LOST, Liveness, liveness_of
from pulse_core.state import RunState, Series

V1_KEYS: Final = ("status", "epoch", "total_epochs", "loss", "message", "timestamp")
LOST_MESSAGE: Final = "training process lost: the writer is gone and the run never ended"


def iso_utc(timestamp: float | None) -> str | None:
    """Format Unix seconds as ISO 8601 UTC with milliseconds and ``Z``."""
    if timestamp is None or timestamp != timestamp:
        return None
    try:
        moment = datetime.fromtimestamp(timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        return None
    # Formatted by hand: strftime's %Y does not zero-pad years before 1000.
    return (
        f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:"
        f"{moment.minute:02d}:{moment.second:02d}.{moment.microsecond // 1000:03d}Z"
    )


def to_v1(state: RunState, liveness: Liveness | None = None) -> dict[str, Any]:
    """Build the PULSE v1 snapshot: exactly the six v1 keys.

    Formats: ``status`` one of the seven lifecycle names; ``epoch`` and
    ``total_epochs`` integers (0 while unknown); ``loss`` a number or null
    before the first loss; ``message`` a string; ``timestamp`` the time of the
    run's last event as ISO 8601 UTC (``2026-11-29T01:37:24.123Z``), null
    before any event.

    A run whose liveness is ``lost`` is shown as ``status: "error"`` with a
    message starting ``"training process lost"`` -- never ``running`` forever.

    Args:
        state: the run's state.
        liveness: the run's liveness, when the caller knows it.
    """
    status: str = state.status
    message = state.message
    if liveness == LOST and not state.is_terminal:
        status = "error"
        message = f"{LOST_MESSAGE} (last status {state.status})"
    loss = state.metrics.get("loss")
    return {
        "status": status,
        "epoch": state.epoch if state.epoch is not None else 0,
        "total_epochs": state.total_epochs if state.total_epochs is not None else 0,
        "loss": loss,
        "message": message,
        "timestamp": iso_utc(state.last_event_at),
    }


def progress_fraction(state: RunState) -> float | None:
    """How far the run is, 0.0-1.0, from its progress fields; None if unknown.

    ``epoch`` is the 1-based epoch in progress and ``step`` the steps done in
    it, so the fraction is ``(epoch - 1 + step / total_steps) / total_epochs``
    (without step fields: ``(epoch - 1) / total_epochs``; without epochs:
    ``step / total_steps``). A run that is done is at 1.0.
    """
    if state.status == "done":
        return 1.0
    epoch, total_epochs = state.epoch, state.total_epochs
    step, total_steps = state.step, state.total_steps
    within = None
    # Totals of 0 or below say nothing (a decoded line may carry any integer).
    if step is not None and total_steps is not None and total_steps > 0:
        within = min(max(step / total_steps, 0.0), 1.0)
    if total_epochs is not None and total_epochs > 0:
        done = max((epoch or 1) - 1, 0) + (within or 0.0)
        return min(done / total_epochs, 1.0)
    return within


def _error_dict(error: ErrorReported) -> dict[str, Any]:
    return {
        "error_code": error.error_code,
        "message": error.message,
        "is_retryable": error.is_retryable,
        "details": dict(error.details) if error.details is not None else None,
        "epoch": error.epoch,
        "step": error.step,
        "timestamp": error.timestamp,
        "seq": error.seq,
    }


def _durations(state: RunState, now: float | None) -> dict[str, float]:
    out = dict(state.status_durations)
    if now is not None and state.status_since is not None and not state.is_terminal:
        key = state.status.value  # plain str keys: the mapping goes to JSON as is
        out[key] = out.get(key, 0.0) + max(0.0, now - state.status_since)
    return out


def _duration(state: RunState, now: float | None, liveness: Liveness | None = None) -> float | None:
    """Seconds from the start (preparing or running) to the end.

    None for a run that never started; an ended run ends at its terminal
    status, a lost run at its last event, a live run at *now*.
    """
    start = state.started_at
    if start is None:
        return None
    if state.finished_at is not None:
        end: float | None = state.finished_at
    elif liveness == LOST or now is None:
        end = state.last_event_at
    else:
        end = now
    return max(0.0, end - start) if end is not None else None


def _flow(state: RunState) -> dict[str, Any] | None:
    meta = state.meta
    if meta is None or not (meta.flow_id or meta.flow_run_id or meta.flow_step_id):
        return None
    return {
        "flow_id": meta.flow_id,
        "flow_run_id": meta.flow_run_id,
        "flow_step_id": meta.flow_step_id,
        "attempt": meta.attempt,
    }


def to_view(state: RunState, *, now: float, liveness: Liveness | None = None) -> dict[str, Any]:
    """Build the v2 view of a run for UIs.

    Args:
        state: the run's state.
        now: the current time (Unix seconds), for durations and liveness.
        liveness: the run's liveness if the caller knows more (a free writer
            lock); computed from the state and *now* when omitted.

    Returns:
        A JSON-ready dict; see specs/protocol.md, "The v2 view".
    """
    live = liveness if liveness is not None else liveness_of(state, now=now)
    meta = state.meta
    return {
        "training_id": state.training_id,
        "status": state.status,
        "message": state.message,
        "terminal": state.is_terminal,
        "liveness": live,
        "progress": {
            "epoch": state.epoch,
            "total_epochs": state.total_epochs,
            "step": state.step,
            "total_steps": state.total_steps,
            "fraction": progress_fraction(state),
        },
        "metrics": dict(state.metrics),
        "metrics_min": dict(state.metrics_min),
        "metrics_max": dict(state.metrics_max),
        "best_loss": state.best_loss,
        "errors": [_error_dict(e) for e in state.errors],
        "error_count": state.error_count,
        "last_error": _error_dict(state.errors[-1]) if state.errors else None,
        "flow": _flow(state),
        "run": {
            "name": meta.name if meta else None,
            "pid": meta.pid if meta else None,
            "host": meta.host if meta else None,
            "world_size": meta.world_size if meta else None,
            "labels": dict(meta.labels) if meta else {},
        },
        "timings": {
            "created_at": state.created_at,
            "started_at": state.started_at,
            "finished_at": state.finished_at,
            "status_since": state.status_since,
            "last_event_at": state.last_event_at,
            "duration": _duration(state, now, live),
            "status_durations": _durations(state, now),
        },
        "timeline": [
            {"status": t.status, "message": t.message, "timestamp": t.timestamp, "seq": t.seq}
            for t in state.timeline
        ],
        "anomalies": [{"seq": a.seq, "kind": a.kind, "detail": a.detail} for a in state.anomalies],
        "anomaly_count": state.anomaly_count,
        "degraded": state.dropped > 0,
        "stats": {
            "events": state.event_count,
            "last_seq": state.last_seq,
            "duplicates": state.duplicates,
            "missing": state.missing,
            "unknown_events": state.unknown_events,
            "dropped": state.dropped,
            "timeline_count": state.timeline_count,
            "metrics_dropped": state.metrics_dropped,
        },
    }


_OUTCOME: Final = {"done": "success", "error": "error", "cancelled": "cancelled"}


def to_summary(
    state: RunState, *, liveness: Liveness, now: float, training_id: str | None = None
) -> dict[str, Any]:
    """Build a run's ``pulse ls`` row (every source adds where it read it, ``log``).

    The duration is the v2 view's (:func:`to_view`): None for a run that
    never started, ending at the terminal status, at the last event for a
    lost run, else at *now*.

    Args:
        state: the run's state.
        liveness: the run's liveness (sources know more than the state: locks).
        now: the current time (Unix seconds).
        training_id: the id to show when the state has none yet (a log
            without a readable first line is still its file's run).
    """
    meta = state.meta
    last_error = state.errors[-1] if state.errors else None
    return {
        "training_id": state.training_id or training_id,
        "name": meta.name if meta else None,
        "status": state.status,
        "liveness": liveness,
        "message": state.message,
        "progress": progress_fraction(state),
        "epoch": state.epoch,
        "total_epochs": state.total_epochs,
        "step": state.step,
        "total_steps": state.total_steps,
        "loss": state.metrics.get("loss"),
        "best_loss": state.best_loss,
        "created_at": state.created_at,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "last_event_at": state.last_event_at,
        "duration": _duration(state, now, liveness),
        "error": (
            {
                "error_code": last_error.error_code,
                "message": last_error.message,
                "is_retryable": last_error.is_retryable,
            }
            if last_error is not None
            else None
        ),
        "error_count": state.error_count,
        "flow": _flow(state),
    }


def to_history_record(
    state: RunState, liveness: Liveness | None = None, now: float | None = None
) -> dict[str, Any]:
    """Build the Flow History record of a TRAIN step's run.

    ``outcome`` is ``success``, ``error`` or ``cancelled`` for an ended run,
    ``lost`` for a run whose writer is gone, ``not_started`` for a run with no
    status yet, else ``running``.
    """
    meta = state.meta
    if state.status in _OUTCOME:
        outcome = _OUTCOME[state.status]
    elif liveness == LOST:
        outcome = "lost"
    elif state.status == "idle":
        outcome = "not_started"
    else:
        outcome = "running"
    last_error = state.errors[-1] if state.errors else None
    return {
        "kind": "train",
        "training_id": state.training_id,
        "flow_id": meta.flow_id if meta else None,
        "flow_run_id": meta.flow_run_id if meta else None,
        "flow_step_id": meta.flow_step_id if meta else None,
        "attempt": meta.attempt if meta else None,
        "ran": state.started_at is not None,
        "outcome": outcome,
        "status": state.status,
        "message": state.message,
        "started_at": state.started_at,
        "finished_at": state.finished_at,
        "duration": _duration(state, now, liveness),
        "epochs": {"epoch": state.epoch, "total_epochs": state.total_epochs},
        "key_metrics": {
            "final_loss": state.metrics.get("loss"),
            "best_loss": state.best_loss,
            "time_per_epoch": state.metrics.get("time_per_epoch"),
            "samples_per_second": state.metrics.get("samples_per_second"),
            "tokens_per_second": state.metrics.get("tokens_per_second"),
        },
        "error": (
            {
                "error_code": last_error.error_code,
                "message": last_error.message,
                "is_retryable": last_error.is_retryable,
                "count": state.error_count,
            }
            if last_error is not None
            else None
        ),
        "retryable": bool(last_error is not None and last_error.is_retryable)
        and outcome == "error",
    }


def to_metric_history(state: RunState) -> dict[str, Any]:
    """Return every metric's downsampled history as JSON-ready windows."""
    return {name: _series_dict(series) for name, series in state.history.items()}


def _series_dict(series: Series) -> dict[str, Any]:
    return {
        "width": series.width,
        "count": series.count,
        "windows": [
            {
                "x": w[0],
                "n": w[1],
                "first": w[2],
                "last": w[3],
                "min": w[4],
                "max": w[5],
                "t0": w[6],
                "t1": w[7],
            }
            for w in series.windows
        ],
    }
