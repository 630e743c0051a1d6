"""Value conversion for the emitter: what training code passes, as event fields.

This module owns turning the values given to
:class:`~pulse_core.emitter.TrainingRun` (numpy and torch scalars, exotic
numbers, arbitrary ``details``) into the plain ints, floats and JSON data
events hold. It runs only when an event is built, never on the hot path.
Pure: imports no I/O; must never import :mod:`pulse_transports`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

_INF: Final = float("inf")


def _as_int(value: Any) -> int | None:
    if value is None or value.__class__ is int:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return None
    try:
        return number if number == value else None
    except Exception:  # noqa: BLE001 - an exotic number type must not break reporting
        return None


def _as_float(value: Any) -> float | None:
    if value is None or value.__class__ is float:
        return value
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        return None


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Turn *value* into plain JSON data (unknown objects become their ``str``)."""
    if value is None or value.__class__ in (str, int, bool):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (_INF, -_INF) else str(value)
    if depth > 8:
        return str(value)[:200]
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v, depth + 1) for k, v in list(value.items())[:100]}
    if isinstance(value, list | tuple | set | frozenset):
        return [_json_safe(v, depth + 1) for v in list(value)[:100]]
    number = _as_int(value) if isinstance(value, int) else None
    if number is not None:
        return number
    return str(value)[:1000]
