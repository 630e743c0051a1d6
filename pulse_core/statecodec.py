"""The RunState JSON codec: a folded state stored and read back.

This module owns how a :class:`~pulse_core.state.RunState` is written as JSON
(:func:`encode_state`, :func:`decode_state`, and the object form
:func:`state_to_obj`/:func:`state_from_obj`) and :data:`STATE_FORMAT`, the
tag that changes whenever RunState's field list does. Readers that cache
folded states (the file index, the NATS bucket, follower checkpoints) use
it, so a state stored by one is read by any. Never pickle: homes and buckets
may be shared. Must never import I/O modules.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import orjson

from pulse_core.events import ErrorReported, RunMeta
from pulse_core.state import Anomaly, RunState, Series, StatusEntry

__all__ = ["STATE_FORMAT", "decode_state", "encode_state", "state_from_obj", "state_to_obj"]

#: Changes whenever the RunState field list does, so stored states of another
#: shape are never read back (readers then rebuild them from the events).
#: Format 2: states are owned by the log's file name (format 1 took the owner
#: from the first line).
STATE_FORMAT: Final = "2:" + ",".join(f.name for f in attrs.fields(RunState))


def _event_obj(event: RunMeta | ErrorReported) -> dict[str, Any]:
    out = attrs.asdict(event, recurse=False)
    for key in ("labels", "details"):
        if out.get(key) is not None:
            out[key] = dict(out[key])
    return out


def state_to_obj(state: RunState) -> dict[str, Any]:
    """Turn a RunState into JSON-ready data (inverse: :func:`state_from_obj`)."""
    out: dict[str, Any] = {}
    for field in attrs.fields(RunState):
        value = getattr(state, field.name)
        if field.name == "meta":
            value = _event_obj(value) if value is not None else None
        elif field.name == "errors":
            value = [_event_obj(e) for e in value]
        elif field.name == "history":
            value = {name: [s.width, s.count, s.windows] for name, s in value.items()}
        elif field.name == "timeline":
            value = [[t.status, t.message, t.timestamp, t.seq] for t in value]
        elif field.name == "anomalies":
            value = [[a.seq, a.kind, a.detail] for a in value]
        elif hasattr(value, "items"):
            value = dict(value)
        out[field.name] = value
    return out


def state_from_obj(obj: Any) -> RunState:
    """Rebuild a RunState from :func:`state_to_obj` data.

    Raises:
        ValueError: if *obj* does not have the shape of a stored state.
    """
    if not isinstance(obj, dict):
        raise ValueError("a stored state must be an object")
    try:
        kwargs = dict(obj)
        meta = kwargs.get("meta")
        kwargs["meta"] = RunMeta(**meta) if meta is not None else None
        kwargs["errors"] = tuple(ErrorReported(**e) for e in kwargs.get("errors", ()))
        kwargs["history"] = {
            name: Series(width=w, count=c, windows=tuple(map(tuple, windows)))
            for name, (w, c, windows) in kwargs.get("history", {}).items()
        }
        kwargs["timeline"] = tuple(StatusEntry(*t) for t in kwargs.get("timeline", ()))
        kwargs["anomalies"] = tuple(Anomaly(*a) for a in kwargs.get("anomalies", ()))
        kwargs["gaps"] = tuple(tuple(g) for g in kwargs.get("gaps", ()))
        return RunState(**kwargs)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"stored state does not fit RunState: {exc}") from None


def encode_state(state: RunState) -> bytes:
    """Serialise a RunState as compact JSON."""
    return orjson.dumps(state_to_obj(state))


def decode_state(data: bytes | str) -> RunState:
    """Read a RunState written by :func:`encode_state`.

    Raises:
        ValueError: if *data* is not a stored state.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"stored state is not JSON: {exc}") from None
    return state_from_obj(obj)
