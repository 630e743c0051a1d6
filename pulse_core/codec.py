"""Events to and from one JSON object per line: the only wire format.

This module owns the wire tags (one table, :data:`TAGS`), the cattrs
converter (built once at import) and :class:`~pulse_core.errors.DecodeError`
as the single failure type of decoding. It must never import I/O modules.

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

import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import attrs
import orjson
from cattrs.preconf.orjson import make_converter

from pulse_core.errors import DecodeError, InvalidTrainingId
from pulse_core.events import (
    PROTOCOL_VERSION,
    Dropped,
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
    UnknownEvent,
    validate_training_id,
)

#: wire tag -> event class. The one place tags live.
TAGS: Final[Mapping[str, type[Any]]] = {
    "meta": RunMeta,
    "status": StatusChanged,
    "progress": Progress,
    "metrics": Metrics,
    "error": ErrorReported,
    "heartbeat": Heartbeat,
    "dropped": Dropped,
}
TAG_OF: Final[Mapping[type[Any], str]] = {cls: tag for tag, cls in TAGS.items()}
_ENVELOPE: Final = ("v", "type", "training_id", "seq", "timestamp")


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


def _make_converter() -> Any:
    conv = make_converter(detailed_validation=False, forbid_extra_keys=False)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(bool, _strict_bool)
    return conv


#: The one converter, built at import.
converter: Final = _make_converter()


# --- the decode fast path -------------------------------------------------
# cattrs' generated hooks call one function per field (~1.7 us for a progress
# event); replay needs decode + reduce under ~3 us. So per event class we
# generate, once at import and from the attrs fields themselves (so it cannot
# drift from the classes), a function that checks each field inline and calls
# the constructor positionally (~0.9 us). The cattrs converter stays the
# reference: it encodes, and it explains a failure (see _explain). A test
# checks both paths agree.

_CHECKS: Final[Mapping[object, str]] = {
    int: "if {x}.__class__ is not int: raise TypeError('expected an integer')",
    str: "if {x}.__class__ is not str: raise TypeError('expected a string')",
    bool: "if {x} is not True and {x} is not False: raise TypeError('expected a bool')",
    float: (
        "if {x}.__class__ is not float:\n"
        "        if {x}.__class__ is int: {x} = float({x})\n"
        "        else: raise TypeError('expected a number')"
    ),
    Mapping[str, str]: "_check_map({x}, str)",
    Mapping[str, float]: "{x} = _float_map({x})",
    Mapping[str, Any]: "_check_map({x}, None)",
}


def _check_map(value: Any, value_type: type | None) -> None:
    if value.__class__ is not dict:
        raise TypeError("expected an object")
    if value_type is not None:
        for item in value.values():
            if item.__class__ is not value_type:
                raise TypeError(f"expected {value_type.__name__} values")


def _float_map(value: Any) -> dict[str, float]:
    if value.__class__ is not dict:
        raise TypeError("expected an object")
    out: dict[str, float] = {}
    for key, item in value.items():
        cls = item.__class__
        if cls is float:
            out[key] = item
        elif cls is int:
            out[key] = float(item)
        else:
            raise TypeError(f"expected number values, got {cls.__name__} for {key!r}")
    return out


def _compile_structure(cls: type[Any]) -> Callable[[dict[str, Any]], Any]:
    """Generate the fast structure function of one attrs event class."""
    attrs.resolve_types(cls)
    lines = ["def structure(o):"]
    args = []
    for index, field in enumerate(attrs.fields(cls)):
        x = f"a{index}"
        args.append(x)
        base, optional = field.type, False
        if typing.get_origin(base) in (types.UnionType, typing.Union):
            members = [m for m in typing.get_args(base) if m is not type(None)]
            base, optional = members[0], True
        check = _CHECKS[base].format(x=x)
        if field.default is attrs.NOTHING:
            lines.append(f"    {x} = o[{field.name!r}]")
            lines.append(f"    {check}")
            continue
        factory = isinstance(field.default, attrs.Factory)  # type: ignore[arg-type]
        default = "{}" if factory else repr(field.default)
        lines.append(f"    {x} = o.get({field.name!r}, {default})")
        guard = f"{x} is not None and " if optional or field.default is None else ""
        if guard:
            lines.append(f"    if {x} is not None:")
            lines.append("    " + "    " + check.replace("\n", "\n    "))
        else:
            lines.append(f"    {check}")
    lines.append(f"    return cls({', '.join(args)})")
    namespace: dict[str, Any] = {"cls": cls, "_check_map": _check_map, "_float_map": _float_map}
    exec("\n".join(lines), namespace)  # noqa: S102 - source built from our own attrs fields
    return namespace["structure"]  # type: ignore[no-any-return]


_STRUCTURE: Final[dict[str, Callable[[dict[str, Any]], Any]]] = {
    tag: _compile_structure(cls) for tag, cls in TAGS.items()
}
_UNSTRUCTURE: Final[dict[type[Any], Callable[[Any], dict[str, Any]]]] = {
    cls: converter.get_unstructure_hook(cls) for cls in TAGS.values()
}


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
    body = _UNSTRUCTURE[cls](event)
    out = {"type": TAG_OF[cls]}
    for key, value in body.items():
        if value is None or (value == {} and key in ("extra", "labels")):
            continue
        out[key] = value
    if cls is Metrics:
        _drop_non_finite(out)
    return out


_INF: Final = float("inf")


def _finite(value: float) -> bool:
    return value == value and value not in (_INF, -_INF)


def _drop_non_finite(out: dict[str, Any]) -> None:
    """Leave out metric values JSON cannot carry (NaN, +-inf).

    orjson writes them as ``null``, which decodes as "not said" for the named
    metrics but is rejected inside ``extra``: the line would not decode. NaN
    already means "nothing said" to the reducer; infinity has no JSON form.
    """
    for key in ("loss", "time_per_epoch", "samples_per_second", "tokens_per_second"):
        if key in out and not _finite(out[key]):
            del out[key]
    extra = out.get("extra")
    if extra and not all(_finite(value) for value in extra.values()):
        kept = {name: value for name, value in extra.items() if _finite(value)}
        if kept:
            out["extra"] = kept
        else:
            del out["extra"]


def encode(event: Event) -> bytes:
    """Encode *event* as one JSON line (UTF-8, ending with ``\\n``)."""
    return orjson.dumps(to_dict(event), option=orjson.OPT_APPEND_NEWLINE)


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
    try:
        validate_training_id(obj.get("training_id"))
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


def decode(line: bytes | str) -> Event:
    """Decode one JSON line into an event.

    Raises:
        DecodeError: if the line is not JSON or not a valid event.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"not valid JSON: {exc}", line) from None
    return from_dict(obj, line)


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
    detailed = make_converter(detailed_validation=True, forbid_extra_keys=False)
    detailed.register_structure_hook(int, _strict_int)
    detailed.register_structure_hook(float, _strict_float)
    detailed.register_structure_hook(str, _strict_str)
    detailed.register_structure_hook(bool, _strict_bool)
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


def to_cloudevent(event: Event, source: str = "/pulse/training") -> dict[str, Any]:
    """Wrap *event* in a CloudEvents 1.0 JSON envelope (structured mode).

    Mapping: ``id`` = ``<training_id>:<seq>``; ``source`` = *source* (a
    URI-reference naming the producer); ``type`` = ``dev.pulse.v2.<tag>``;
    ``subject`` = training_id; ``time`` = the timestamp as RFC 3339 UTC
    (left out when it is outside years 1-9999);
    ``datacontenttype`` = ``application/json``; ``data`` = the PULSE wire
    object, whole (so decoding ``data`` gives the event back exactly).
    """
    wire = to_dict(event)
    envelope: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"{event.training_id}:{event.seq}",
        "source": source,
        "type": CLOUDEVENT_TYPE_PREFIX + str(wire["type"]),
        "subject": event.training_id,
        "datacontenttype": "application/json",
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
