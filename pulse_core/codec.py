"""Events to and from one JSON object per line: the only wire format.

This module owns the wire tags (one table, :data:`TAGS`), the cattrs
converter (built once, on first use: ``pulse ls`` never pays for cattrs) and
:class:`~pulse_core.errors.DecodeError` as the single failure type of
decoding. It must never import I/O modules.

Rules (specs/protocol.md, "Encoding"):

* ``type`` names the event (a stable tag, never a class name); ``v`` is the
  protocol major version. A decoder accepts ``v >= 2``; a major version it
  does not know is decoded by the same forward-compatible rules.
* Unknown fields are ignored; an unknown ``type`` decodes to
  :class:`~pulse_core.events.UnknownEvent`, which the reducer skips.
* Anything else wrong (not JSON, not an object, missing or mistyped field,
  unsafe training_id) raises DecodeError with a message naming the problem.
* Numbers are checked strictly: an integer field takes a JSON integer, a
  float field takes any JSON number, a bool field takes ``true``/``false``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import orjson

from pulse_core import events
from pulse_core._bound import MAX_KEY_BYTES, MAX_LINE_BYTES, bound_dict, bound_text, finite
from pulse_core._structure import compile_structure
from pulse_core.errors import DecodeError, InvalidTrainingId
from pulse_core.events import (
    PROTOCOL_VERSION,
    Event,
    Metrics,
    UnknownEvent,
    _valid_ids,
    validate_training_id,
)

#: wire tag -> event class. The one place tags live.
TAGS: Final[Mapping[str, type[Any]]] = {
    "meta": events.RunMeta,
    "status": events.StatusChanged,
    "progress": events.Progress,
    "metrics": events.Metrics,
    "error": events.ErrorReported,
    "heartbeat": events.Heartbeat,
    "dropped": events.Dropped,
    "state_checkpoint": events.StateCheckpoint,
}
TAG_OF: Final[Mapping[type[Any], str]] = {cls: tag for tag, cls in TAGS.items()}
_ENVELOPE: Final = ("v", "type", "training_id", "seq", "timestamp")
#: Mapping fields left off the line when empty.
_EMPTY_LEFT_OUT: Final = frozenset({"extra", "labels", "min", "max"})


def _strict_int(value: Any, _: Any) -> int:
    if value.__class__ is int:
        return value
    raise TypeError(f"expected an integer, got {type(value).__name__} {value!r:.40}")


def _strict_float(value: Any, _: Any) -> float:
    cls = value.__class__
    if cls is float:
        return value  # type: ignore[no-any-return]
    if cls is int:
        return float(value)
    raise TypeError(f"expected a number, got {type(value).__name__} {value!r:.40}")


def _strict_str(value: Any, _: Any) -> str:
    if value.__class__ is str:
        return value
    raise TypeError(f"expected a string, got {type(value).__name__} {value!r:.40}")


def _strict_bool(value: Any, _: Any) -> bool:
    if value is True or value is False:
        return value
    raise TypeError(f"expected true or false, got {type(value).__name__} {value!r:.40}")


def _make_converter(detailed: bool = False) -> Any:
    from cattrs.preconf.orjson import make_converter  # ~30 ms: only when encoding

    conv = make_converter(detailed_validation=detailed, forbid_extra_keys=False)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    return conv


_converter: list[Any] = []


def _the_converter() -> Any:
    """The one converter (built on first use)."""
    if not _converter:
        _converter.append(_make_converter())
    return _converter[0]


if TYPE_CHECKING:
    #: The one converter (a module attribute built on first access).
    converter: Any


def __getattr__(name: str) -> Any:
    if name == "converter":
        return _the_converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CLOUDEVENT_DATASCHEMA",
    "CLOUDEVENT_DEFAULT_SOURCE",
    "CLOUDEVENT_TYPE_PREFIX",
    "MAX_KEY_BYTES",
    "MAX_LINE_BYTES",
    "TAGS",
    "TAG_OF",
    "bound_dict",
    "bound_event",
    "bound_text",
    "cloudevent_source",
    "converter",
    "decode",
    "encode",
    "from_cloudevent",
    "from_dict",
    "parse_json",
    "to_cloudevent",
    "to_dict",
    "warm",
]


_STRUCTURE: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    tag: compile_structure(cls) for tag, cls in TAGS.items()
}
#: Filled on first use, like the converter.
_UNSTRUCTURE: Final[dict[type[Any], Callable[[Any], dict[str, Any]]]] = {}


def _unstructure_hook(cls: type[Any]) -> Callable[[Any], dict[str, Any]]:
    hook = _UNSTRUCTURE.get(cls)
    if hook is None:
        hook = _UNSTRUCTURE[cls] = _the_converter().get_unstructure_hook(cls)
    return hook


def warm() -> None:
    """Build the converter and every event type's encoder now, not on first use.

    cattrs generates (and compiles) an encoder the first time a type is
    encoded: 1-3 ms with the GIL held. A run calls this when it is made, so
    the first ``error()`` or the writer's first event of a type never pays
    that inside the training loop. Idempotent; about 10 ms once a process.
    """
    for cls in TAGS.values():
        _unstructure_hook(cls)


def to_dict(event: Event) -> dict[str, Any]:
    """Return the wire object of *event* (``type`` first, then the envelope).

    Optional fields that are None or empty are left out, so a line carries
    only what was said.
    """
    if isinstance(event, UnknownEvent):
        out: dict[str, Any] = {
            "type": event.type,
            "v": event.v,
            "training_id": event.training_id,
            "seq": event.seq,
            "timestamp": event.timestamp,
        }
        for key, value in event.data.items():
            if key not in out:  # the envelope wins over data that repeats it
                out[key] = value
        return out
    cls = event.__class__
    hook = _UNSTRUCTURE.get(cls) or _unstructure_hook(cls)
    body = hook(event)
    out = {"type": TAG_OF[cls]}
    for key, value in body.items():
        if value is None or (value == {} and key in _EMPTY_LEFT_OUT):
            continue
        out[key] = value
    if cls is Metrics:
        _drop_non_finite(out)
    return out


def _drop_non_finite(out: dict[str, Any]) -> None:
    """Leave out metric values JSON cannot carry (NaN, +-inf).

    orjson writes them as ``null``, which decodes as "not said" for the named
    metrics but is rejected inside ``extra``: the line would not decode. NaN
    already means "nothing said" to the reducer; infinity has no JSON form.
    """
    for key in ("loss", "time_per_epoch", "samples_per_second", "tokens_per_second"):
        if key in out and not finite(out[key]):
            del out[key]
    for field in ("extra", "min", "max"):
        values = out.get(field)
        if values and not all(finite(value) for value in values.values()):
            kept = {name: value for name, value in values.items() if finite(value)}
            if kept:
                out[field] = kept
            else:
                del out[field]


def encode(event: Event) -> bytes:
    """Encode *event* as one JSON line (UTF-8, ending with ``\\n``).

    Never longer than :data:`MAX_LINE_BYTES` and never failing on text:
    strings that are not valid Unicode (lone surrogates, e.g. from a file
    name that is not UTF-8) are written with U+FFFD, integers JSON readers
    cannot hold (beyond 64 bits) are left out, and an event too long for a
    line is cut down by :func:`bound_dict` (long strings truncated with a
    visible ``…[truncated N bytes]`` marker, the largest ``details`` values
    first) -- the event is always written, never dropped.
    """
    try:
        line = orjson.dumps(to_dict(event), option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError: surrogates, huge ints, odd values
        line = b""
    if 0 < len(line) <= MAX_LINE_BYTES:
        return line
    return orjson.dumps(bound_dict(to_dict(event)), option=orjson.OPT_APPEND_NEWLINE)


def bound_event(event: Event) -> Event:
    """Return *event* as it will read back: bounded to one line, valid Unicode.

    The emitter applies this to the events people write text into (status,
    error, meta), so every sink -- in-process ones included -- sees the same
    truncated, repaired text the log holds. Returns *event* itself when its
    encoding needed no change.
    """
    try:
        line = orjson.dumps(to_dict(event), option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        line = b""
    if 0 < len(line) <= MAX_LINE_BYTES:
        return event
    try:
        return decode(encode(event))
    except DecodeError:  # pragma: no cover - bound_dict keeps every field's type
        return event


def from_dict(obj: Any, line: bytes | str | None = None) -> Event:
    """Build an event from a decoded wire object.

    Args:
        obj: the parsed JSON value.
        line: the raw line, kept on the error for context.

    Returns:
        The event; an :class:`UnknownEvent` for an unknown ``type``.

    Raises:
        DecodeError: if *obj* is not a valid event.
    """
    if obj.__class__ is not dict:
        raise DecodeError(f"an event must be a JSON object, got {type(obj).__name__}", line)
    tag = obj.get("type")
    # Only a string can name a known type; a list or object tag is unhashable.
    hook = _STRUCTURE.get(tag) if tag.__class__ is str else None
    tid = obj.get("training_id")
    if tid.__class__ is not str or tid not in _valid_ids:  # checked before: logs repeat one id
        try:
            validate_training_id(tid)
        except InvalidTrainingId as exc:
            raise DecodeError(f"bad training_id: {exc}", line) from None
    version = obj.get("v")
    if version.__class__ is not int or version < PROTOCOL_VERSION:
        raise DecodeError(
            f"field 'v' must be an integer >= {PROTOCOL_VERSION}, got {version!r:.40}", line
        )
    if hook is None:
        return _unknown(obj, line)
    try:
        return hook(obj)  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - cattrs raises many kinds; we name the field
        raise DecodeError(_explain(obj, obj["type"], exc), line) from None


def parse_json(line: bytes | str) -> Any:
    """The JSON value of one line (of a log or of the hub protocol).

    Raises:
        DecodeError: if the line is not valid JSON.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}", line) from None


def decode(line: bytes | str) -> Event:
    """Decode one JSON line into an event.

    Raises:
        DecodeError: if the line is not JSON or not a valid event.
    """
    return from_dict(parse_json(line), line)


def _unknown(obj: dict[str, Any], line: bytes | str | None) -> UnknownEvent:
    tag = obj.get("type")
    if not isinstance(tag, str) or not tag:
        raise DecodeError(f"field 'type' must be a non-empty string, got {tag!r:.40}", line)
    seq, ts = obj.get("seq"), obj.get("timestamp")
    if seq.__class__ is not int or ts.__class__ not in (int, float):
        raise DecodeError("fields 'seq' (integer) and 'timestamp' (number) are required", line)
    data = {k: v for k, v in obj.items() if k not in _ENVELOPE}
    return UnknownEvent(
        training_id=obj["training_id"],
        seq=seq,
        timestamp=float(ts),
        type=tag,
        data=data,
        v=obj["v"],
    )


def _explain(obj: dict[str, Any], tag: str, exc: Exception) -> str:
    """Name the first field of *obj* that does not fit event type *tag*."""
    detailed = _make_converter(detailed=True)
    try:
        detailed.structure(obj, TAGS[tag])
    except Exception as detailed_exc:  # noqa: BLE001
        from cattrs import transform_error

        try:
            messages = transform_error(detailed_exc)
        except Exception:  # noqa: BLE001 - fall back to the raw message
            messages = [str(detailed_exc)]
        return f"invalid {tag!r} event: " + "; ".join(messages)
    return f"invalid {tag!r} event: {exc}"


# --- CloudEvents 1.0 ---------------------------------------------------------

CLOUDEVENT_TYPE_PREFIX: Final = "dev.pulse.v2."
#: ``dataschema`` of every PULSE CloudEvent: the ``$id`` of specs/schema/event.schema.json.
CLOUDEVENT_DATASCHEMA: Final = "https://pulse.dev/schemas/v2/event.schema.json"
#: ``source`` when the producer is not known.
CLOUDEVENT_DEFAULT_SOURCE: Final = "/pulse/training"


def cloudevent_source(host: str | None, pid: int | None) -> str:
    """The CloudEvents ``source`` of a producer: ``/pulse/<host>/<pid>``.

    *host* is percent-encoded (RFC 3986 unreserved characters are kept);
    without a host or pid the default ``/pulse/training`` is returned. Pure:
    the caller says who the producer is (the run's ``meta`` names it).
    """
    if not host or pid is None:
        return CLOUDEVENT_DEFAULT_SOURCE
    return f"/pulse/{quote(host, safe='')}/{pid}"


def to_cloudevent(event: Event, source: str = CLOUDEVENT_DEFAULT_SOURCE) -> dict[str, Any]:
    """Wrap *event* in a CloudEvents 1.0 JSON envelope (structured mode).

    Mapping: ``id`` = ``<training_id>:<seq>``; ``source`` = *source* (a
    URI-reference naming the producer, see :func:`cloudevent_source`);
    ``dataschema`` = :data:`CLOUDEVENT_DATASCHEMA`; ``type`` = ``dev.pulse.v2.<tag>``;
    ``subject`` = training_id; ``time`` = the timestamp as RFC 3339 UTC
    (left out when it is outside years 1-9999);
    ``datacontenttype`` = ``application/json``; ``data`` = the PULSE wire
    object, whole (so decoding ``data`` gives the event back exactly).
    """
    wire = to_dict(event)
    try:
        orjson.dumps(wire)
    except TypeError:  # free-form data JSON encoders cannot write (nested > 255 levels)
        wire = bound_dict(wire)
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"{event.training_id}:{event.seq}",
        "source": source,
        "type": CLOUDEVENT_TYPE_PREFIX + str(wire["type"]),
        "subject": event.training_id,
        "datacontenttype": "application/json",
        "dataschema": CLOUDEVENT_DATASCHEMA,
        "data": wire,
    }
    try:
        moment = datetime.fromtimestamp(event.timestamp, UTC)
    except (OverflowError, OSError, ValueError):
        # A decoded line may carry any finite timestamp; "time" is optional in
        # CloudEvents, so a moment datetime cannot hold is left out, not raised.
        return envelope
    envelope["time"] = moment.isoformat().replace("+00:00", "Z")
    return envelope


def from_cloudevent(envelope: Any) -> Event:
    """Unwrap a CloudEvents 1.0 JSON envelope made by :func:`to_cloudevent`.

    Raises:
        DecodeError: if it is not a CloudEvents 1.0 envelope of a PULSE event.
    """
    if envelope.__class__ is not dict:
        raise DecodeError("a CloudEvent must be a JSON object")
    if envelope.get("specversion") != "1.0":
        raise DecodeError(
            f"unsupported CloudEvents specversion {envelope.get('specversion')!r:.20}"
        )
    ce_type = envelope.get("type")
    if not isinstance(ce_type, str) or not ce_type.startswith(CLOUDEVENT_TYPE_PREFIX):
        raise DecodeError(f"CloudEvent type {ce_type!r:.60} is not a PULSE v2 event type")
    data = envelope.get("data")
    if data.__class__ is not dict:
        raise DecodeError("CloudEvent data must be the PULSE event object")
    if data.get("type") != ce_type[len(CLOUDEVENT_TYPE_PREFIX) :]:
        raise DecodeError("CloudEvent type and data.type disagree")
    return from_dict(data)
