"""Value conversion for the emitter: whatever training code passes, as event fields.

This module owns turning the values given to
:class:`~pulse_core.emitter.TrainingRun` (numpy and torch scalars, exotic
numbers, arbitrary ``details``, hostile objects whose ``__str__``,
``__float__``, ``__int__``, ``__eq__`` or ``__bool__`` raise, huge ints,
deep recursion) into the plain ints, floats, strings and JSON data events
hold. Every function here is total: it returns a plain value or ``None``
(nothing said) and never raises. It runs when an event is built or an
argument is taken, never on the coalesced hot path. Must never import
:mod:`pulse_transports`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from pulse_core._log import get_logger
from pulse_core.errors import IllegalTransition

log = get_logger("pulse.emitter")

_INF: Final = float("inf")
#: Integers JSON readers hold (64-bit); others are not said.
_INT_MIN: Final = -(2**63)
_INT_MAX: Final = 2**63 - 1
#: Entries kept of one mapping or sequence in ``details`` / ``labels``.
_ITEMS_MAX: Final = 100
_DEPTH_MAX: Final = 8
#: Characters kept of one converted object (the codec bounds the line anyway).
_TEXT_MAX: Final = 65536


def _scalar(value: Any) -> Any:
    """A numpy/torch 0-d or one-element array as its Python scalar; else *value*."""
    try:
        if getattr(value, "size", None) == 1 or getattr(value, "ndim", None) == 0:
            item = getattr(value, "item", None)
            if item is not None:
                return item()
    except Exception:  # noqa: BLE001, S110 - not array-like after all
        pass
    return value


def _as_int(value: Any) -> int | None:
    """*value* as a 64-bit int if it is a whole number, else None."""
    if value is None:
        return None
    if value.__class__ is int:
        return value if _INT_MIN <= value <= _INT_MAX else None
    try:
        value = _scalar(value)
        number = int(value)
        if number.__class__ is not int:
            number = int.__index__(number)
        if not _INT_MIN <= number <= _INT_MAX:
            return None
        return number if bool(number == value) else None
    except Exception:  # noqa: BLE001 - an exotic or hostile number must not break reporting
        return None


def _as_float(value: Any) -> float | None:
    """*value* as a float (NaN and infinities included: the codec leaves them out)."""
    if value is None or value.__class__ is float:
        return value
    try:
        number = float(_scalar(value))
    except Exception:  # noqa: BLE001 - not a number: nothing said
        return None
    return number if number.__class__ is float else None


def _as_bool(value: Any, default: bool = False) -> bool:
    """*value*'s truth, or *default* when it has none (an array, a raising ``__bool__``)."""
    if value is True or value is False:
        return value
    if value is None or value is NotImplemented:
        return default
    try:
        return bool(_scalar(value))
    except Exception:  # noqa: BLE001
        return default


def _type_name(value: Any) -> str:
    try:
        return str(type(value).__name__)
    except Exception:  # noqa: BLE001
        return "object"


def _as_text(value: Any, default: str = "") -> str:
    """*value* as text: bytes decoded with replacement, objects by ``str`` then ``repr``."""
    if value.__class__ is str:
        return value
    if value is None:
        return default
    if isinstance(value, bytes | bytearray | memoryview):
        try:
            return bytes(value[: _TEXT_MAX * 4]).decode("utf-8", "replace")
        except Exception:  # noqa: BLE001
            return f"<{_type_name(value)}>"
    for convert in (str, repr):
        try:
            text = convert(value)
            if isinstance(text, str):
                return str.__str__(text)[:_TEXT_MAX]
        except Exception:  # noqa: BLE001, S112 - a hostile __str__: try the next form
            continue
    return f"<unprintable {_type_name(value)}>"


def _as_opt_text(value: Any) -> str | None:
    """Like :func:`_as_text` but None (or empty) stays None."""
    if value is None:
        return None
    return _as_text(value) or None


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Turn *value* into plain JSON data (unknown objects become their text)."""
    cls = value.__class__
    if value is None or cls is str or cls is bool:
        return value
    if cls is int:
        return value if _INT_MIN <= value <= _INT_MAX else _as_text(value)[:200]
    try:
        if isinstance(value, float):
            number = float(value)
            return number if math.isfinite(number) else str(number)
        if isinstance(value, int):
            return _json_safe(int(value), depth)
        if depth > _DEPTH_MAX:
            return _as_text(value)[:200]
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for index, (key, item) in enumerate(value.items()):
                if index >= _ITEMS_MAX:
                    out["…"] = f"[{len(value) - _ITEMS_MAX} more entries left out]"
                    break
                out[_as_text(key)[:256]] = _json_safe(item, depth + 1)
            return out
        if isinstance(value, bytes | bytearray | memoryview):
            return _as_text(value)[:1000]
        if isinstance(value, list | tuple | set | frozenset):
            return [_json_safe(v, depth + 1) for v in list(value)[:_ITEMS_MAX]]
        scalar = _scalar(value)
        if scalar is not value:
            return _json_safe(scalar, depth + 1)
    except Exception:  # noqa: BLE001, S110 - a hostile container: its text instead
        pass
    return _as_text(value)[:1000]


def _as_details(value: Any) -> dict[str, Any] | None:
    """Error ``details`` as a JSON object.

    A mapping is kept (made JSON-safe); a string becomes ``{"text": ...}``,
    a list/tuple/set ``{"items": [...]}``, anything else ``{"value": ...}``;
    None and empty mappings are nothing said.
    """
    if value is None:
        return None
    try:
        if isinstance(value, Mapping):
            safe = _json_safe(value)
            return safe if isinstance(safe, dict) and safe else None
        if isinstance(value, str | bytes | bytearray):
            return {"text": _as_text(value)}
        if isinstance(value, list | tuple | set | frozenset):
            return {"items": _json_safe(value)}
    except Exception:  # noqa: BLE001, S110 - isinstance on a hostile __class__
        pass
    return {"value": _json_safe(value)}


def _as_labels(value: Any) -> dict[str, str] | None:
    """Run labels as ``{str: str}`` (at most 100); None if *value* is not a mapping."""
    if value is None:
        return {}
    try:
        if not isinstance(value, Mapping):
            return None
        out: dict[str, str] = {}
        for key, item in list(value.items())[:_ITEMS_MAX]:
            out[_as_text(key)[:256]] = _as_text(item)[:1024]
        return out
    except Exception:  # noqa: BLE001 - a hostile mapping
        return None


# -- arguments: any object in, never an exception out (issue 14.4) ----------------


def _guarded(method: Callable[..., None]) -> Callable[..., None]:
    """Make a public method total: nothing escapes but strict mode's IllegalTransition.

    Arguments are coerced inside the methods; this is the net for what is
    left (a hostile object deep inside a value, a bug): the call is logged
    as one warning and returns. Costs nothing while nothing raises.
    """

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            method(self, *args, **kwargs)
        except IllegalTransition:
            raise
        except Exception as exc:  # noqa: BLE001 - reporting never raises into training
            _swallowed(method.__name__, exc)

    return call


def _swallowed(where: str, exc: BaseException) -> None:
    log.warning(
        "pulse: a reporting call failed and was ignored",
        call=where,
        error=f"{type(exc).__name__}: {_as_text(exc)[:200]}",
    )
