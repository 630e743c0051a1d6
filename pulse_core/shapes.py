"""The typed shapes of the projections, and their JSON Schema.

This module owns the attrs classes that say what :mod:`pulse_core.projections`
returns -- :class:`View` (``to_view``), :class:`RunSummary` (``to_summary``,
a ``pulse ls`` row), :class:`HistoryRecord` (``to_history_record``) and
:class:`V1Snapshot` (``to_v1``) with their parts -- and
:func:`component_schemas`, which generates JSON Schemas (2020-12, as OpenAPI
3.1 uses) from them, so the web API's description is derived from the
classes instead of restated by hand. The projections build plain dicts on
the hot path; the core tests structure every projection into its class and
back, so a key added to one and not the other fails. Must never import I/O
modules.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Literal

import attrs

_STATUS: Final = {"$ref": "#/components/schemas/Status"}
_LIVENESS: Final = {"$ref": "#/components/schemas/Liveness"}


def _ref(schema: Mapping[str, Any]) -> Any:
    """A field whose schema is *schema* (a named enum) rather than its Python type."""
    return attrs.field(metadata={"schema": dict(schema)})


@attrs.frozen(kw_only=True)
class Flow:
    """The flow step a run belongs to."""

    flow_id: str | None
    flow_run_id: str | None
    flow_step_id: str | None
    attempt: int | None


@attrs.frozen(kw_only=True)
class ErrorSummary:
    """A run's last error, as a ``pulse ls`` row shows it."""

    error_code: str
    message: str
    is_retryable: bool


@attrs.frozen(kw_only=True)
class ErrorReport(ErrorSummary):
    """One error event of a run."""

    details: dict[str, Any] | None
    epoch: int | None
    step: int | None
    timestamp: float
    seq: int


@attrs.frozen(kw_only=True)
class RunSummary:
    """A `pulse ls --json` row (sources add ``log``, where they read it, and ``bad_lines``)."""

    training_id: str | None
    name: str | None
    status: str = _ref(_STATUS)
    liveness: str = _ref(_LIVENESS)
    message: str
    progress: float | None = attrs.field(
        metadata={"description": "0-1: (epoch - 1 + step / total_steps) / total_epochs"},
    )
    epoch: int | None
    total_epochs: int | None
    step: int | None
    total_steps: int | None
    loss: float | None
    best_loss: float | None
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    last_event_at: float | None
    duration: float | None
    error: ErrorSummary | None
    error_count: int
    flow: Flow | None


@attrs.frozen(kw_only=True)
class ViewProgress:
    """Where a run is: epochs, steps, and the fraction done."""

    epoch: int | None
    total_epochs: int | None
    step: int | None
    total_steps: int | None
    fraction: float | None


@attrs.frozen(kw_only=True)
class ViewRun:
    """Who runs it: from the run's meta."""

    name: str | None
    pid: int | None
    host: str | None
    world_size: int | None
    labels: dict[str, str]


@attrs.frozen(kw_only=True)
class Timings:
    """When things happened (Unix seconds) and for how long."""

    created_at: float | None
    started_at: float | None
    finished_at: float | None
    status_since: float | None
    last_event_at: float | None
    duration: float | None
    status_durations: dict[str, float]


@attrs.frozen(kw_only=True)
class TimelineEntry:
    """One status change."""

    status: str = _ref(_STATUS)
    message: str
    timestamp: float
    seq: int


@attrs.frozen(kw_only=True)
class AnomalyEntry:
    """Something in the event stream recorded instead of applied."""

    seq: int
    kind: str
    detail: str


@attrs.frozen(kw_only=True)
class Stats:
    """Counts about the run's event stream."""

    events: int
    last_seq: int
    duplicates: int
    missing: int
    unknown_events: int
    dropped: int
    timeline_count: int
    metrics_dropped: int


@attrs.frozen(kw_only=True)
class View:
    """The v2 view of a run (specs/protocol.md, 'The v2 view')."""

    training_id: str | None
    status: str = _ref(_STATUS)
    message: str
    terminal: bool
    liveness: str = _ref(_LIVENESS)
    progress: ViewProgress
    metrics: dict[str, float]
    metrics_min: dict[str, float]
    metrics_max: dict[str, float]
    best_loss: float | None
    errors: list[ErrorReport]
    error_count: int
    last_error: ErrorReport | None
    flow: Flow | None
    run: ViewRun
    timings: Timings
    timeline: list[TimelineEntry]
    anomalies: list[AnomalyEntry]
    anomaly_count: int
    degraded: bool
    stats: Stats


@attrs.frozen(kw_only=True)
class Epochs:
    """How far the run got."""

    epoch: int | None
    total_epochs: int | None


@attrs.frozen(kw_only=True)
class KeyMetrics:
    """The metrics Flow History shows."""

    final_loss: float | None
    best_loss: float | None
    time_per_epoch: float | None
    samples_per_second: float | None
    tokens_per_second: float | None


@attrs.frozen(kw_only=True)
class HistoryError(ErrorSummary):
    """The last error of a run, with how many there were."""

    count: int


@attrs.frozen(kw_only=True)
class HistoryRecord:
    """A Flow History record of a TRAIN step's run."""

    kind: Literal["train"]
    training_id: str | None
    flow_id: str | None
    flow_run_id: str | None
    flow_step_id: str | None
    attempt: int | None
    ran: bool
    outcome: Literal["success", "error", "cancelled", "lost", "not_started", "running"]
    status: str = _ref(_STATUS)
    message: str
    started_at: float | None
    finished_at: float | None
    duration: float | None
    epochs: Epochs
    key_metrics: KeyMetrics
    error: HistoryError | None
    retryable: bool


@attrs.frozen(kw_only=True)
class V1Snapshot:
    """Exactly the six PULSE v1 keys; a lost run reads status error."""

    CLOSED: ClassVar[bool] = True

    status: str = _ref(_STATUS)
    epoch: int
    total_epochs: int
    loss: float | None
    message: str
    timestamp: str | None


#: The projections' top-level shapes, by the name their JSON Schema has.
SHAPES: Final = (View, RunSummary, HistoryRecord, V1Snapshot)

_SIMPLE: Final[dict[Any, str]] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    type(None): "null",
}


def _schema_of(tp: Any, found: dict[str, type]) -> dict[str, Any]:
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if tp is Any:
        return {}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_schema_of(arg, found) for arg in args]
        if all(set(p) == {"type"} and isinstance(p["type"], str) for p in parts):
            return {"type": [p["type"] for p in parts]}
        return {"oneOf": parts}
    if origin is Literal:
        return {"const": args[0]} if len(args) == 1 else {"type": "string", "enum": list(args)}
    if origin in (list, tuple, Sequence):
        return {"type": "array", "items": _schema_of(args[0], found)}
    if origin in (dict, Mapping):
        return {"type": "object", "additionalProperties": _schema_of(args[1], found)}
    if attrs.has(tp):
        found[tp.__name__] = tp
        return {"$ref": f"#/components/schemas/{tp.__name__}"}
    raise TypeError(f"no JSON Schema for {tp!r}")


def _object_schema(cls: type, found: dict[str, type]) -> dict[str, Any]:
    attrs.resolve_types(cls)
    properties: dict[str, Any] = {}
    for field in attrs.fields(cls):
        given = field.metadata.get("schema")
        schema = dict(given) if given is not None else _schema_of(field.type, found)
        if "description" in field.metadata:
            schema["description"] = field.metadata["description"]
        properties[field.name] = schema
    out: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
    }
    if getattr(cls, "CLOSED", False):
        out["additionalProperties"] = False
    doc = (cls.__doc__ or "").strip().splitlines()
    if doc:
        out["description"] = doc[0]
    return out


def component_schemas(*classes: type) -> dict[str, dict[str, Any]]:
    """JSON Schemas of *classes* and every class they use, by class name.

    Fields are all required (the projections always write every key);
    references between classes are ``#/components/schemas/<name>``.
    """
    found: dict[str, type] = {cls.__name__: cls for cls in classes}
    out: dict[str, dict[str, Any]] = {}
    while len(out) < len(found):
        for name, cls in list(found.items()):
            if name not in out:
                out[name] = _object_schema(cls, found)
    return out
