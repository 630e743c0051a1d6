"""The OpenAPI 3.1 description of the web view's HTTP API (served at ``/openapi.json``).

This module owns the description: paths, parameters and the JSON Schemas of
every response body, including the items of the ``/events`` stream
(``SseBatch``). The schemas of the projections (``View``, ``RunSummary``,
``HistoryRecord``, ``V1Snapshot`` and their parts) are generated from
:mod:`pulse_core.shapes`. The tests validate the description itself and validate real
responses against its schemas, so the two cannot drift apart unnoticed.
Pure data: no I/O.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from pulse_core.events import STATUSES
from pulse_core.shapes import SHAPES, component_schemas
from pulse_transports.web.stream import SSE_PROTOCOL

VERSION: Final = "1.0.0"


def _nullable(kind: str | list[str]) -> dict[str, Any]:
    kinds = [kind] if isinstance(kind, str) else list(kind)
    return {"type": [*kinds, "null"]}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(
    properties: dict[str, Any], *, closed: bool = False, required: list[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
    }
    if closed:
        out["additionalProperties"] = False
    return out


_NUM: Final = {"type": "number"}
_INT: Final = {"type": "integer"}
_STR: Final = {"type": "string"}
_BOOL: Final = {"type": "boolean"}


def _flow_run(outcome: dict[str, Any], step: str) -> dict[str, Any]:
    """The properties a flow run has as a list row and whole: *step* names its steps' schema."""
    return {
        "flow_run_id": _STR,
        "flow_id": _nullable("string"),
        "outcome": outcome,
        "started_at": _nullable("number"),
        "finished_at": _nullable("number"),
        "duration": _nullable("number"),
        "step_count": _INT,
        "run_count": _INT,
        "error_count": _INT,
        "steps": {"type": "array", "items": _ref(step)},
    }


_SCHEMAS: Final[dict[str, Any]] = {
    "Status": {"type": "string", "enum": list(STATUSES)},
    "Liveness": {
        "type": "string",
        "enum": ["alive", "stale", "lost", "ended"],
        "description": "ended: done/error/cancelled; lost: the writer is gone and the run "
        "never ended; stale: silent for longer than stale_after; alive: otherwise.",
    },
    "Error": _obj(
        {"error": _obj({"code": _STR, "message": _STR})},
    ),
    "RunList": _obj(
        {"runs": {"type": "array", "items": _ref("RunSummary")}, "time": _NUM},
    ),
    "FlowAttempt": {
        "allOf": [
            _ref("HistoryRecord"),
            _obj(
                {
                    "name": _nullable("string"),
                    "liveness": _ref("Liveness"),
                    "created_at": _nullable("number"),
                }
            ),
        ],
        "description": "One run of a TRAIN step: its Flow History record, name and liveness.",
    },
    "FlowOutcome": {
        "type": "string",
        "enum": ["success", "error", "cancelled", "lost", "not_started", "running"],
    },
    "FlowStep": _obj(
        {
            "flow_step_id": _nullable("string"),
            "outcome": _ref("FlowOutcome"),
            "attempt_count": _INT,
            "started_at": _nullable("number"),
            "finished_at": _nullable("number"),
            "duration": _nullable("number"),
            "key_metrics": _ref("KeyMetrics"),
            "attempts": {
                "type": "array",
                "items": _ref("FlowAttempt"),
                "description": "Every attempt, first to last; the last one is the step's outcome.",
            },
        }
    ),
    "FlowStepSummary": _obj(
        {
            "flow_step_id": _nullable("string"),
            "outcome": _ref("FlowOutcome"),
            "attempt_count": _INT,
        }
    ),
    "FlowRunSummary": _obj(
        _flow_run(
            {
                **_ref("FlowOutcome"),
                "description": "From each step's last attempt: running, not_started, lost, "
                "error, cancelled, success -- the first of these any step has.",
            },
            "FlowStepSummary",
        )
    ),
    "FlowRunList": _obj(
        {"flow_runs": {"type": "array", "items": _ref("FlowRunSummary")}, "time": _NUM},
    ),
    "FlowRun": {
        **_obj({**_flow_run(_ref("FlowOutcome"), "FlowStep"), "time": _NUM}),
        "description": "A flow run's TRAIN steps in the order they started.",
    },
    "Window": _obj(
        {
            "x": _INT,
            "n": _INT,
            "first": _NUM,
            "last": _NUM,
            "min": _NUM,
            "max": _NUM,
            "t0": _NUM,
            "t1": _NUM,
        },
        closed=True,
    ),
    "Series": _obj(
        {
            "width": _INT,
            "count": _INT,
            "windows": {"type": "array", "items": _ref("Window")},
        },
        closed=True,
    ),
    "MetricHistory": _obj(
        {
            "training_id": _nullable("string"),
            "metrics": {"type": "object", "additionalProperties": _ref("Series")},
        }
    ),
    "Event": {
        **_obj(
            {
                "type": _STR,
                "v": _INT,
                "training_id": _STR,
                "seq": {"type": "integer", "minimum": 1},
                "timestamp": _NUM,
            }
        ),
        "description": "A PULSE v2 event, encoded as in the run's log (specs/protocol.md).",
    },
    "SseItem": {
        "oneOf": [
            _ref("Event"),
            _obj(
                {
                    "hello": _obj(
                        {
                            "protocol": {"const": SSE_PROTOCOL},
                            "scope": _nullable("string"),
                            "rate": _NUM,
                            "resumed": {"type": "array", "items": _STR},
                            "time": _NUM,
                            "stale_after": _NUM,
                            "lost_after": _NUM,
                            "transitions": {
                                "type": "object",
                                "additionalProperties": {"type": "array", "items": _STR},
                            },
                        }
                    )
                },
                closed=True,
            ),
            _obj(
                {"snapshot": {"type": "object", "additionalProperties": _ref("View")}},
                closed=True,
            ),
            _obj(
                {
                    "live": _obj(
                        {"runs": {"type": "array", "items": _STR}, "time": _NUM},
                    )
                },
                closed=True,
            ),
            _obj(
                {
                    "liveness": _obj(
                        {
                            "runs": {"type": "object", "additionalProperties": _ref("Liveness")},
                            "time": _NUM,
                        }
                    )
                },
                closed=True,
            ),
            _obj(
                {"resync": _obj({"reason": _STR, "buffered": _INT})},
                closed=True,
            ),
        ]
    },
    "SseBatch": {
        "type": "array",
        "items": _ref("SseItem"),
        "description": "The data of one /events message.",
    },
    "SseMessage": {
        "type": "object",
        "description": "One /events message as an SSE parser reads it: `data` is an SseBatch "
        "as JSON, `id` the resume cursor when it moved, `retry` the reconnect delay (ms).",
        "properties": {
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": _ref("SseBatch"),
            },
            "event": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer", "minimum": 0},
        },
    },
}

# The projections' shapes (View, RunSummary, HistoryRecord, V1Snapshot and
# their parts) are generated from the core's typed classes, not restated here.
_SCHEMAS.update(component_schemas(*SHAPES))

_TID_PARAM: Final = {
    "name": "training_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"},
}


def _limit_param(default: int) -> dict[str, Any]:
    """The ``limit`` query parameter of a list (1-1000 items, *default* when absent)."""
    return {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": default},
    }


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


_ERRORS: Final = {
    "400": _json("Error", "A malformed parameter (bad_training_id, bad_limit, bad_rate)."),
    "401": _json("Error", "The request did not show the hub's token."),
    "403": _json("Error", "A loopback-only hub was reached under another host name."),
}


def _run_path(summary: str, schema: str, description: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": [_TID_PARAM],
            "responses": {
                "200": _json(schema, description),
                "404": _json("Error", "No such run: the hub does not hold it and it has no log."),
                **_ERRORS,
            },
        }
    }


_EVENTS_DOC: Final = """\
Server-sent events. Each message's `data` is one JSON array (schema `SseBatch`):
events (objects with a `type`) and control items (`hello`, `snapshot`, `live`,
`liveness`, `resync`). Per run and per stream (progress, metrics, heartbeat) at most
`rate` values per second are sent (leading and trailing edge, the last value always
arrives); status, error, meta and dropped events are never dropped; a run's events come
in seq order, each at most once. A message that moves the cursor has an `id`: a quiet
mark `@<unix seconds>` (runs ended or lost and silent since are held whole) and the
highest seq the client holds of every other run, `training_id:seq` pairs, joined by
commas. Reconnecting with it (`Last-Event-ID` header, or `last_event_id`) resumes every
named run after that seq -- also after a hub restart, from the run's log -- skips the
runs under the mark and sends a snapshot of every other run. A client that falls behind
gets a `resync` item and the stream ends: reconnect with the last id. A client that
stops reading is disconnected."""

_PATHS: Final[dict[str, Any]] = {
    "/api/runs": {
        "get": {
            "summary": "Runs: those the hub holds live and the newest on disk, newest first",
            "parameters": [_limit_param(100)],
            "responses": {"200": _json("RunList", "The runs."), **_ERRORS},
        }
    },
    "/api/runs/{training_id}": _run_path("One run's v2 view", "View", "The v2 view."),
    "/api/runs/{training_id}/history": _run_path(
        "One run's Flow History record", "HistoryRecord", "The history record."
    ),
    "/api/runs/{training_id}/v1": _run_path(
        "One run's PULSE v1 snapshot", "V1Snapshot", "The six v1 keys."
    ),
    "/api/runs/{training_id}/metrics": {
        "get": {
            **_run_path("One run's downsampled metric history", "MetricHistory", "The series.")[
                "get"
            ],
            "parameters": [
                _TID_PARAM,
                {
                    "name": "names",
                    "in": "query",
                    "description": "Only these metrics (comma-separated).",
                    "schema": {"type": "string"},
                },
            ],
        }
    },
    "/api/flows": {
        "get": {
            "operationId": "listFlowRuns",
            "summary": "Flow runs (runs linked to a flow_run_id), newest first",
            "parameters": [_limit_param(50)],
            "responses": {"200": _json("FlowRunList", "The flow runs."), **_ERRORS},
        }
    },
    "/api/flows/{flow_run_id}": {
        "get": {
            "operationId": "getFlowRun",
            "summary": "One flow run: its TRAIN steps with every attempt",
            "parameters": [
                {
                    "name": "flow_run_id",
                    "in": "path",
                    "required": True,
                    "description": "The flow run's id, URL-encoded.",
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": _json("FlowRun", "The flow run."),
                "404": _json("Error", "No run is linked to this flow run."),
                **_ERRORS,
            },
        }
    },
    "/events": {
        "get": {
            "summary": "Live updates (server-sent events)",
            "description": _EVENTS_DOC,
            # A browser's EventSource cannot send a header: the cookie, or ?token=.
            "security": [{"bearer": []}, {"cookie": []}, {"query": []}],
            "parameters": [
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "description": "The id of the last message received: resume after it.",
                    "schema": {"type": "string"},
                },
                {
                    "name": "last_event_id",
                    "in": "query",
                    "description": "The same, for clients that cannot set the header "
                    "(the header wins).",
                    "schema": {"type": "string"},
                },
                {
                    "name": "run",
                    "in": "query",
                    "description": "Only this training id (empty: every run).",
                    "schema": {
                        "type": "string",
                        "pattern": "^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$",
                    },
                },
                {
                    "name": "rate",
                    "in": "query",
                    "description": "At most this many updates per second per run and stream; "
                    "the hub's --rate (default 10) is the most.",
                    "schema": {"type": "number", "exclusiveMinimum": 0},
                },
            ],
            "responses": {
                "200": {
                    "description": "An endless text/event-stream of SseMessage events.",
                    # OpenAPI 3.1: the schema of a text/event-stream describes each event.
                    "content": {"text/event-stream": {"schema": _ref("SseMessage")}},
                },
                **_ERRORS,
                "503": _json("Error", "The hub is shutting down (hub_closing): reconnect."),
            },
        }
    },
}

#: operationId of every operation: client generators name their methods by it.
_OPERATION_IDS: Final = {
    "/api/runs": "listRuns",
    "/api/runs/{training_id}": "getRunView",
    "/api/runs/{training_id}/history": "getRunHistory",
    "/api/runs/{training_id}/v1": "getRunV1Snapshot",
    "/api/runs/{training_id}/metrics": "getRunMetricHistory",
    "/events": "streamEvents",
}
for _path, _operation_id in _OPERATION_IDS.items():
    _PATHS[_path]["get"]["operationId"] = _operation_id


def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 description (a fresh copy each call)."""
    return copy.deepcopy(_DOCUMENT)


_DOCUMENT: Final[dict[str, Any]] = {
    "openapi": "3.1.0",
    "info": {
        "title": "PULSE hub web API",
        "version": VERSION,
        "description": "Live and recorded status of training runs, served by "
        "`pulse serve --http`. Send the hub's token (`<home>/hub.token`) as "
        "`Authorization: Bearer <token>`; a browser opens `/?token=<token>` once and then "
        "sends the HttpOnly cookie `pulse_token_<port>` it sets. A hub started with "
        "`--no-token` (loopback only) asks for none.",
    },
    "components": {
        "schemas": _SCHEMAS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "The hub's token (`<home>/hub.token`, or `$PULSE_HUB_TOKEN`).",
            },
            "cookie": {
                "type": "apiKey",
                "in": "cookie",
                "name": "pulse_token",
                "description": "Set by `/?token=` as `pulse_token_<port>` (HttpOnly, "
                "SameSite=Strict); any cookie named `pulse_token*` is read.",
            },
            "query": {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": "Only on `/` (the page's first load) and `/events`.",
            },
        },
    },
    # Relative: the API is served by whichever hub serves this document.
    "servers": [{"url": "/", "description": "the hub serving this document (pulse serve --http)"}],
    "security": [{"bearer": []}, {"cookie": []}],
    "paths": _PATHS,
}
