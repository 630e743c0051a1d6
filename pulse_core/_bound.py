"""Bounding: every encoded line fits, every string is valid Unicode.

Private to :mod:`pulse_core.codec` (which re-exports the public names).
Must never import I/O modules.
"""

from __future__ import annotations

import re
from typing import Any, Final

import orjson

_INF: Final = float("inf")


def finite(value: float) -> bool:
    return value == value and value not in (_INF, -_INF)


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
        return value if finite(value) else _DROP
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
        value = obj.get(key, _DROP)
        if key not in out and value is not _DROP and _clean(value) is not _DROP:
            out[key] = value  # kept whole (they come from the emitter, small)
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
