"""The fast fold's metrics steps: a metrics line folded value by value, or in batches.

:class:`MetricsFolder` is a :class:`~pulse_core.reducer.Folder` holding what
the fast fold (:mod:`pulse_core._dictfold`, :mod:`pulse_core._fastfold`) does
to a metrics line once it is folded: ``_Acc._metrics`` one value at a time
(:meth:`~MetricsFolder._metrics`), with the common case of a name the reducer
keeps whole inline, and the batch of metrics lines of one shape whose values
wait to be folded into their series a batch at a time
(:meth:`~MetricsFolder._flush`).

An optimisation, never a second set of rules: it does what ``_Acc._metrics``
does, calling the reducer's own steps where they are not the per-value hot
path; a property test (``tests/core/test_fastfold.py``) folds arbitrary and
hostile lines both ways.

Private to the core; must never import I/O modules.
"""

from __future__ import annotations

from collections.abc import Callable, KeysView, Mapping
from operator import itemgetter
from typing import Any, Final

from pulse_core._series import SeriesAcc
from pulse_core.events import Event
from pulse_core.reducer import INITIAL_STATE, MAX_COUNT, Folder
from pulse_core.state import RunState

EMPTY: Final[Mapping[str, float]] = {}
#: Metrics lines batched before their values are folded (a bound on the memory held).
BATCH: Final = 4096


def floats(value: Any) -> bool:
    """True for a JSON object of floats only (what the decoder keeps as it is)."""
    if value.__class__ is not dict:
        return False
    for item in value.values():  # noqa: SIM110 - a loop: no generator per line
        if item.__class__ is not float:
            return False
    return True


class _Batch:
    """Metrics lines of one shape whose values are not in their series yet.

    The shape: the envelope plus ``loss`` (if :attr:`loss`) and ``extra``
    with exactly the names :attr:`names` (if not None), and ``min`` and
    ``max`` with exactly the names :attr:`bounds` (if not None: the emitter's
    lines), every name kept whole (:attr:`MetricsFolder._kept`), no other
    field -- so nothing of the line but
    these values touches the accumulator, and each name's latest value,
    bounds and series are folded a batch at a time, after the envelopes.
    """

    __slots__ = (
        "bounds",
        "extras",
        "highs",
        "loss",
        "losses",
        "lows",
        "names",
        "shaped",
        "stamps",
    )

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.losses: list[float] = []
        self.extras: list[dict[str, float]] = []
        self.lows: list[dict[str, float]] = []
        self.highs: list[dict[str, float]] = []
        self.shaped = False  # whether a shape is batched
        self.loss = False
        self.names: KeysView[str] | None = None
        self.bounds: KeysView[str] | None = None


class MetricsFolder(Folder):
    """A :class:`~pulse_core.reducer.Folder` with the fast fold's metrics steps (module doc)."""

    __slots__ = ("_batch", "_kept")

    def __init__(self, state: RunState = INITIAL_STATE) -> None:
        super().__init__(state)
        # metric name -> its [min, max] pair and series in the accumulator, for
        # names the reducer keeps whole (latest, bounds, history): neither is
        # ever replaced or removed once made, so the pair stays valid.
        self._kept: dict[str, tuple[list[Any], SeriesAcc]] = {}
        self._batch = _Batch()

    def apply(self, event: Event) -> None:
        """Apply one event the ordinary way (never raises)."""
        self._flush()
        super().apply(event)

    @property
    def state(self) -> RunState:
        """The state after everything folded and applied so far."""
        self._flush()
        return super().state

    def _metrics(
        self, obj: dict[str, Any], seq: int, ts: float, loss: Any, extra: Mapping[str, float]
    ) -> None:
        """``_Acc._metrics`` for a line, one value at a time; then batch lines of its shape."""
        acc = self._acc
        get = obj.get
        value = self._value
        if loss is not None:
            value("loss", loss, ts, seq)
        for name in _NAMED:
            number = get(name)
            if number is not None:
                value(name, number, ts, seq)
        for name, number in extra.items():
            value(name, number, ts, seq)
        bounds = acc.metrics_bounds
        for name, number in get("min", EMPTY).items():
            pair = bounds.get(name)
            if pair is not None and number < pair[0]:  # kept names only
                pair[0] = number
        for name, number in get("max", EMPTY).items():
            pair = bounds.get(name)
            if pair is not None and number > pair[1]:
                pair[1] = number
        names_dropped = get("names_dropped")
        if names_dropped is not None and names_dropped > acc.metrics_dropped:
            acc.metrics_dropped = min(names_dropped, MAX_COUNT)
        pair = bounds.get("loss")
        if pair is not None and (acc.best_loss is None or pair[0] < acc.best_loss):
            acc.best_loss = pair[0]
        # The next lines of this shape are batched if every name of it is kept.
        kept, batch = self._kept, self._batch
        batch.shaped, batch.bounds = False, None
        said = (loss is not None) + (extra is not EMPTY)
        if not said or (loss is not None and "loss" not in kept):
            return
        lows: Mapping[str, float] = EMPTY
        if len(obj) == 7 + said:
            lows, highs = get("min", EMPTY), get("max", EMPTY)
            if not lows or lows.keys() != highs.keys():
                return
        elif len(obj) != 5 + said:
            return
        if not all(name in kept for name in extra) or not all(name in kept for name in lows):
            return
        batch.shaped, batch.bounds = True, lows.keys() if lows else None
        batch.loss = loss is not None
        batch.names = None if extra is EMPTY else extra.keys()

    def _value(self, name: str, value: float, ts: float, seq: int) -> None:
        """``_Acc._metric`` for one value; for a name kept whole, its common case inline.

        Values off a JSON line are finite floats (orjson reads no NaN nor
        infinity), so the reducer's NaN test is never true here; a kept name
        is in ``metrics`` already, so its cap on names does not apply.
        """
        kept = self._kept.get(name)
        if kept is None:
            acc = self._acc
            acc._metric(name, value, ts, seq)  # the reducer's own step
            pair = acc.metrics_bounds.get(name)
            series = acc.history.get(name)
            if pair is not None and series is not None and name in acc.metrics:
                self._kept[name] = (pair, series)
            return
        self._acc.metrics[name] = value
        pair, series = kept
        if value < pair[0]:
            pair[0] = value
        elif value > pair[1]:
            pair[1] = value
        series.add(value, ts)

    def _flush(self) -> None:
        """Fold the batched lines' values into their names' latest, bounds and series.

        What ``_value`` does for each value of each line in turn: names are
        independent of each other, so each name's values are folded at once
        (``min``/``max`` keep the first of equal values, as ``_value``'s
        strict comparisons do); then ``_Acc._metrics``' last step, the best
        loss, whose bound only fell through the lines.
        """
        batch = self._batch
        stamps = batch.stamps
        if not stamps:
            return
        acc = self._acc
        given: dict[str, list[float]] = {}
        if batch.loss:
            given["loss"] = batch.losses
        if batch.names is not None:
            extras = batch.extras
            for name in batch.names:
                given[name] = list(map(itemgetter(name), extras))
        for name, values in given.items():
            _pair, series = self._kept[name]
            acc.metrics[name] = values[-1]
            series.extend(values, stamps)
        if batch.bounds is None:
            for name, values in given.items():
                self._bound(name, values, None, None)
        else:
            lows, highs = batch.lows, batch.highs
            for name in {**given, **dict.fromkeys(batch.bounds)}:
                bounded = name in batch.bounds
                self._bound(
                    name,
                    given.get(name),
                    list(map(itemgetter(name), lows)) if bounded else None,
                    list(map(itemgetter(name), highs)) if bounded else None,
                )
            lows.clear()
            highs.clear()
        pair = acc.metrics_bounds.get("loss")
        if pair is not None and (acc.best_loss is None or pair[0] < acc.best_loss):
            acc.best_loss = pair[0]
        stamps.clear()
        batch.losses.clear()
        batch.extras.clear()

    def _bound(
        self,
        name: str,
        values: list[float] | None,
        lows: list[float] | None,
        highs: list[float] | None,
    ) -> None:
        """Fold a kept name's batched values and ``min``/``max`` into its bounds.

        In ``_metrics``' order, line by line: the value (which moves the lower
        bound or else the upper one), then the ``min``, then the ``max``.
        """
        pair = self._kept[name][0]
        low, high = pair
        if low.__class__ is float and high.__class__ is float and low <= high:
            # Bounds that only widen: each is the first extreme of its sequence.
            least, most = _first(min, values, lows), _first(max, values, highs)
            if least < low:
                pair[0] = least
            if most > high:
                pair[1] = most
            return
        # Odd bounds (a hostile checkpoint's): one line at a time.
        lines = len(values) if values is not None else len(lows or ())
        for k in range(lines):
            if values is not None:
                value = values[k]
                if value < pair[0]:
                    pair[0] = value
                elif value > pair[1]:
                    pair[1] = value
            if lows is not None and lows[k] < pair[0]:
                pair[0] = lows[k]
            if highs is not None and highs[k] > pair[1]:
                pair[1] = highs[k]


_NAMED: Final = ("time_per_epoch", "samples_per_second", "tokens_per_second")


def _first(
    pick: Callable[..., float], first: list[float] | None, second: list[float] | None
) -> float:
    """*pick* (min or max) of ``first[0], second[0], first[1], ...``, the first of equal ones."""
    if second is None:
        return pick(first)
    if first is None:
        return pick(second)
    a, b = pick(first), pick(second)  # each the first of its equal ones
    if a != b:
        return pick(a, b)
    return a if first.index(a) <= second.index(b) else b


def common_metrics(obj: dict[str, Any], loss: Any, extra: Any) -> bool:
    """Whether every field of a metrics line is of the type the decoder keeps as it is.

    *loss* and *extra* are its ``loss`` (or None) and ``extra`` (or :data:`EMPTY`).
    """
    get = obj.get
    lows, highs = get("min", EMPTY), get("max", EMPTY)
    names_dropped = get("names_dropped")
    return (
        (loss is None or loss.__class__ is float)
        and (extra is EMPTY or floats(extra))
        and (lows is EMPTY or floats(lows))
        and (highs is EMPTY or floats(highs))
        and (names_dropped is None or names_dropped.__class__ is int)
        and all((v := get(name)) is None or v.__class__ is float for name in _NAMED)
    )
