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

import re
import types
import typing
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

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


_ABSENT: Final = object()


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
        if factory:
            # Absent (the common case): a fresh {} with no check; present: checked.
            lines.append(f"    {x} = o.get({field.name!r}, _ABSENT)")
            lines.append(f"    if {x} is _ABSENT:")
            lines.append(f"        {x} = {{}}")
            lines.append("    else:")
            lines.append("    " + "    " + check.replace("\n", "\n    "))
            continue
        default = repr(field.default)
        lines.append(f"    {x} = o.get({field.name!r}, {default})")
        guard = f"{x} is not None and " if optional or field.default is None else ""
        if guard:
            lines.append(f"    if {x} is not None:")
            lines.append("    " + "    " + check.replace("\n", "\n    "))
        else:
            lines.append(f"    {check}")
    # Build the frozen instance through its slot descriptors: attrs' __init__
    # goes through object.__setattr__ per field, about twice the cost.
    lines.append("    e = _new(cls)")
    setters: dict[str, Any] = {}
    for index, (x, field) in enumerate(zip(args, attrs.fields(cls), strict=True)):
        setters[f"_set{index}"] = cls.__dict__[field.name].__set__
        lines.append(f"    _set{index}(e, {x})")
    lines.append("    return e")
    namespace: dict[str, Any] = {
        "cls": cls,
        "_new": object.__new__,
        "_check_map": _check_map,
        "_float_map": _float_map,
        "_ABSENT": _ABSENT,
        **setters,
    }
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
        if value is None or (value == {} and key in _EMPTY_LEFT_OUT):
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
    for field in ("extra", "min", "max"):
        values = out.get(field)
        if values and not all(_finite(value) for value in values.values()):
            kept = {name: value for name, value in values.items() if _finite(value)}
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


# --- bounding: every line fits, every string is valid ----------------------

#: The longest line :func:`encode` writes, newline included (readers skip
#: lines over 1 MiB; this leaves them a wide margin).
MAX_LINE_BYTES: Final = 64 * 1024
#: The longest key of any object (metric names, label and details keys).
MAX_KEY_BYTES: Final = 256
#: Integers outside this range are left out (JSON readers use 64 bits).
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**64 - 1
_DROP: Final = object()
_SURROGATES: Final = re.compile("[\ud800-\udfff]")
#: Fields bounding never touches (the envelope and the lifecycle words).
_KEPT: Final = frozenset(
    {"type", "v", "training_id", "seq", "timestamp", "status", "count", "is_retryable"}
)


def _marker(removed: int) -> str:
    return f"…[truncated {removed} bytes]"


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", value)
    return value


def _cut(value: str, limit: int) -> str:
    """*value* in at most about *limit* UTF-8 bytes, with a marker if cut."""
    data = value.encode("utf-8")
    if len(data) <= limit:
        return value
    keep = max(0, limit - len(_marker(len(data))) - 2)
    head = data[:keep].decode("utf-8", "ignore")  # never half a character
    return head + _marker(len(data) - len(head.encode("utf-8")))


def bound_text(value: str, limit: int = 16 * 1024) -> str:
    """*value* as valid Unicode (U+FFFD for lone surrogates) in at most about *limit* bytes.

    Longer text is cut at a character boundary and ends with the visible
    marker ``…[truncated N bytes]``.
    """
    if len(value) * 4 <= limit and value.isascii():
        return value
    return _cut(_text(value), limit)


def _clean(value: Any, depth: int = 0) -> Any:
    """Plain JSON data orjson can always write (or :data:`_DROP`)."""
    cls = value.__class__
    if cls is str:
        return _text(value)
    if cls is bool or value is None:
        return value
    if cls is int:
        return value if _INT_MIN <= value <= _INT_MAX else _DROP
    if cls is float:
        return value if _finite(value) else _DROP
    if depth > 32:
        return _DROP
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = _cut(_text(key if key.__class__ is str else str(key)), MAX_KEY_BYTES)
            clean = _clean(item, depth + 1)
            if clean is not _DROP and name not in out:
                out[name] = clean
        return out
    if isinstance(value, list | tuple):
        return [item for item in (_clean(v, depth + 1) for v in value) if item is not _DROP]
    return _DROP


def _size(value: Any) -> int:
    return len(orjson.dumps(value))


def _fit(value: Any, limit: int) -> Any:
    """*value* (clean JSON data) cut down to encode in about *limit* bytes.

    Strings are truncated with a marker; objects and arrays keep their small
    items whole and share what is left among the large ones (the largest are
    cut first); items that no longer fit at all are replaced by one
    ``"…"`` entry saying how many were left out (numbers-only objects, like
    metric values, just lose them, so their type holds).
    """
    if value.__class__ is str:
        return _cut(value, limit - 2)
    if not isinstance(value, dict | list) or _size(value) <= limit:
        return value
    is_dict = isinstance(value, dict)
    items: list[tuple[Any, Any]] = (
        list(value.items()) if isinstance(value, dict) else list(enumerate(value))
    )
    budget = limit - 2 - 48  # braces and room for the "left out" note
    # So many items that each could not keep even a short value: the first
    # ones (in their order) are kept, the rest are left out.
    omitted = max(0, len(items) - max(1, budget // 48))
    if omitted:
        items = items[: len(items) - omitted]
    sizes = {key: _size(item) + (_size(key) + 2 if is_dict else 1) for key, item in items}
    left = len(items)
    kept: dict[Any, Any] = {}
    for key, item in sorted(items, key=lambda pair: sizes[pair[0]]):
        share = budget // left if left else 0
        left -= 1
        if sizes[key] <= share:
            kept[key] = item
            budget -= sizes[key]
            continue
        overhead = sizes[key] - _size(item)
        if share - overhead < 40:
            omitted += 1
            continue
        fitted = _fit(item, share - overhead)
        kept[key] = fitted
        budget -= _size(fitted) + overhead
    order = [key for key, _ in items if key in kept]
    if not is_dict:
        out_list = [kept[key] for key in order]
        if omitted:
            out_list.append(f"…[{omitted} more items left out]")
        return out_list
    out = {key: kept[key] for key in order}
    numbers_only = isinstance(value, dict) and all(
        item.__class__ in (int, float) for item in value.values()
    )
    if omitted and not numbers_only:
        out["…"] = f"[{omitted} more entries left out]"
    return out


def bound_dict(obj: dict[str, Any], limit: int = MAX_LINE_BYTES) -> dict[str, Any]:
    """Make a wire object always encodable and its line at most *limit* bytes.

    The envelope, ``status`` and counts are kept as they are; every other
    field is repaired (:func:`_clean`) and, if the line is still too long,
    cut down by :func:`_fit`, so a status, error or meta event with
    megabytes of text is still written and still read.
    """
    cleaned = _clean(obj)
    out: dict[str, Any] = cleaned if isinstance(cleaned, dict) else {}
    for key in _KEPT:
        if key in obj and key not in out:
            out[key] = obj[key]  # never dropped (they come from the emitter, small)
    if len(orjson.dumps(out)) + 1 <= limit:
        return out
    fixed = {key: out[key] for key in out if key in _KEPT}
    rest = {key: out[key] for key in out if key not in _KEPT}
    room = limit - _size(fixed) - 64
    for attempt in range(6):
        fitted = _fit(rest, room)
        if isinstance(fitted, dict):
            fitted.pop("…", None)  # a top-level note would be an unknown field
            candidate = {**fixed, **fitted}
            if _size(candidate) + 1 <= limit:
                return {key: candidate[key] for key in out if key in candidate}
        room = room * 3 // 4 if attempt < 4 else 0
    for key in ("error_code", "message"):  # required text of an error event
        if isinstance(out.get(key), str):
            fixed[key] = _cut(out[key], 1024)
    return fixed


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
