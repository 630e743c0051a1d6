"""Flow History for the web view: TRAIN-step records grouped into flow runs.

This module owns the shape of ``GET /api/flows`` and ``GET /api/flows/{flow_run_id}``:
it takes Flow History records (:func:`pulse_core.projections.to_history_record`
of each run, as :meth:`pulse_transports.flows.FlowTrainer.records` builds
them, plus the run's name and liveness) and groups them by ``flow_run_id``,
then by ``flow_step_id``, with every attempt of a step kept. Pure data: no I/O.

A flow run's outcome is read from the newest attempt of each of its steps: a
step retried after an error that then succeeded counts as a success.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

#: The order outcomes win in when a flow run's steps disagree (first wins).
_PRECEDENCE: Final = ("running", "not_started", "lost", "error", "cancelled", "success")


def _key(record: Mapping[str, Any]) -> float:
    return float(record.get("started_at") or record.get("created_at") or 0.0)


def _attempt(record: Mapping[str, Any]) -> tuple[int, float]:
    return (int(record.get("attempt") or 1), _key(record))


def _overall(outcomes: Iterable[str]) -> str:
    seen = set(outcomes)
    for outcome in _PRECEDENCE:
        if outcome in seen:
            return outcome
    return "not_started"


def _step(step_id: str | None, attempts: list[dict[str, Any]]) -> dict[str, Any]:
    attempts.sort(key=_attempt)
    last = attempts[-1]
    return {
        "flow_step_id": step_id,
        "outcome": last["outcome"],
        "attempt_count": len(attempts),
        "started_at": attempts[0].get("started_at"),
        "finished_at": last.get("finished_at"),
        "duration": last.get("duration"),
        "key_metrics": last.get("key_metrics", {}),
        "attempts": attempts,
    }


def flow_run(flow_run_id: str, records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One flow run: its steps (in the order they started) with their attempts.

    Args:
        flow_run_id: the flow run.
        records: history records of that flow run's runs (any order).
    """
    by_step: dict[str | None, list[dict[str, Any]]] = {}
    flow_id: str | None = None
    for record in records:
        by_step.setdefault(record.get("flow_step_id"), []).append(dict(record))
        flow_id = flow_id or record.get("flow_id")
    steps = [_step(step_id, attempts) for step_id, attempts in by_step.items()]
    steps.sort(key=lambda s: (s["started_at"] is None, s["started_at"] or 0.0))
    starts = [s["started_at"] for s in steps if s["started_at"] is not None]
    outcome = _overall(s["outcome"] for s in steps)
    ends = [s["finished_at"] for s in steps]
    started_at = min(starts) if starts else None
    finished_at: float | None = None
    if outcome not in ("running", "not_started") and all(e is not None for e in ends) and ends:
        finished_at = max(e for e in ends if e is not None)
    duration = (
        max(0.0, finished_at - started_at)
        if finished_at is not None and started_at is not None
        else None
    )
    return {
        "flow_run_id": flow_run_id,
        "flow_id": flow_id,
        "outcome": outcome,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration": duration,
        "step_count": len(steps),
        "run_count": sum(s["attempt_count"] for s in steps),
        "error_count": sum(1 for s in steps for a in s["attempts"] if a.get("error")),
        "steps": steps,
    }


def flow_runs(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every flow run among *records* (runs without a ``flow_run_id`` left out), newest first."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        frid = record.get("flow_run_id")
        if frid:
            grouped.setdefault(str(frid), []).append(record)
    runs = [flow_run(frid, group) for frid, group in grouped.items()]
    runs.sort(key=lambda r: (r["started_at"] or 0.0, r["flow_run_id"]), reverse=True)
    return runs


def summary(run: Mapping[str, Any]) -> dict[str, Any]:
    """A flow run for the list: each step's outcome and attempt count, no attempts."""
    out = {k: v for k, v in run.items() if k != "steps"}
    out["steps"] = [
        {
            "flow_step_id": s["flow_step_id"],
            "outcome": s["outcome"],
            "attempt_count": s["attempt_count"],
        }
        for s in run["steps"]
    ]
    return out
