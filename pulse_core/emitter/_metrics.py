"""Metric bookkeeping: names capped, values converted, the exact best and worst.

This module owns :class:`_Bounds`, the one min/max bookkeeping of
:class:`~pulse_core.emitter.TrainingRun` (issue 13.14), and
:func:`_metric_fields`, the fields of a Metrics event built from the hot
path's raw values. ``metrics()`` notes each plain
float or int it is given (:meth:`_Bounds.note`, two compares on the hot
path), and the writer folds in the values about to be sent, of any number
type (:meth:`_Bounds.fold`), when it builds a Metrics event. Names past the
cap are not kept (bounded memory, 13.10); NaN never becomes a bound. Must
never import :mod:`pulse_transports`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pulse_core.emitter._value import _as_float, _as_text
from pulse_core.state import MAX_METRIC_NAMES

_METRIC_NAMES_MAX: Final = MAX_METRIC_NAMES  # extra names; loss and named metrics always kept
_DROPPED_NAMES_MAX: Final = 10_000  # distinct dropped names counted (bounded memory)
#: Names whose bounds are kept: the extra names plus loss and the three named metrics.
_NAMES_MAX: Final = _METRIC_NAMES_MAX + 4


class _Bounds:
    """Per metric name, ``[min, max]`` of every value reported so far."""

    __slots__ = ("pairs",)

    def __init__(self) -> None:
        self.pairs: dict[str, list[float]] = {}

    def note(self, name: str, value: Any) -> None:
        """Fold in *value* if it is a plain float or int (others: at :meth:`fold`)."""
        if value.__class__ is not float and value.__class__ is not int:
            return
        pair = self.pairs.get(name)
        if pair is None:
            if len(self.pairs) > _NAMES_MAX or value != value:
                return
            self.pairs[name] = [value, value]
            return
        if value < pair[0]:  # noqa: PLR1730 - per metrics() argument: no min() call
            pair[0] = value
        if value > pair[1]:  # noqa: PLR1730
            pair[1] = value

    def fold(self, values: Mapping[str, float | None]) -> tuple[dict[str, float], dict[str, float]]:
        """The min and max per metric, folding in *values* (about to be sent)."""
        lows: dict[str, float] = {}
        highs: dict[str, float] = {}
        pairs = self.pairs
        for name, value in values.items():
            pair = pairs.get(name)
            if value is not None and value == value:
                if pair is None:
                    if len(pairs) > _NAMES_MAX:
                        continue
                    pair = pairs[name] = [value, value]
                # A numpy/torch value the hot path did not compare is folded in here.
                pair[0] = min(pair[0], value)
                pair[1] = max(pair[1], value)
            if pair is not None:
                lows[name], highs[name] = pair[0], pair[1]
        return lows, highs


def _metric_fields(
    raw: tuple[Any, Any, Any, Any, Mapping[str, Any]], bounds: _Bounds
) -> dict[str, Any]:
    """The Metrics fields of the hot path's raw values: converted, capped, bounds folded in."""
    loss, tpe, sps, tps, named = raw
    extra: dict[str, float] = {}
    for key, value in list(named.items())[:_METRIC_NAMES_MAX]:
        number = _as_float(value)
        if number is not None:
            extra[_as_text(key)[:200]] = number
    given = {
        "loss": _as_float(loss),
        "time_per_epoch": _as_float(tpe),
        "samples_per_second": _as_float(sps),
        "tokens_per_second": _as_float(tps),
    }
    lows, highs = bounds.fold({**given, **extra})
    return {**given, "extra": extra, "min": lows, "max": highs}
