"""The fast fold's first part: common log lines folded from orjson's dicts.

:class:`DictFolder` is a :class:`~pulse_core.reducer.Folder` whose
:meth:`~DictFolder._fold_dicts` folds a log line from the dict
``orjson.loads`` gives, into the reducer's own accumulator, when the line is
exactly a common shape (see :mod:`pulse_core._fastfold`, which reads most
lines with msgspec first and leaves to this one the lines msgspec does not
take: a field it does not know, an integer past 64 bits, a checkpoint line).
It also holds what both ways share: the run whose lines may be folded, the
batch of metrics lines whose values wait for their series, and the steps
that fold a metrics line value by value.

An optimisation, never a second set of rules: where it folds, it does what
``_Acc.apply`` does for that event, calling the reducer's own steps where
they are not the per-value hot path; a property test
(``tests/core/test_fastfold.py``) folds arbitrary and hostile lines both ways.

Private to the core; must never import I/O modules.
"""

from __future__ import annotations

from collections.abc import Callable, KeysView, Mapping, Sequence
from operator import itemgetter
from typing import Any, Final

import orjson

from pulse_core._series import SeriesAcc
from pulse_core.errors import InvalidTrainingId
from pulse_core.events import (
    PROTOCOL_VERSION,
    TERMINAL_STATUSES,
    Event,
    _valid_ids,
    validate_training_id,
)
from pulse_core.reducer import INITIAL_STATE, MAX_COUNT, Folder
from pulse_core.state import RunState

_loads: Final = orjson.loads
#: What reading a line's envelope may raise: not JSON, not an object, a field missing.
_UNREAD: Final = (orjson.JSONDecodeError, KeyError, TypeError)
#: Compared by identity: CPython (and so orjson) gives small ints as shared objects,
#: so ``v is _VERSION`` is true exactly for the integer 2 (any other is decoded).
_VERSION: Final = PROTOCOL_VERSION
EMPTY: Final[Mapping[str, float]] = {}
#: Metrics lines batched before their values are folded (a bound on the memory held).
BATCH: Final = 4096
#: The owner while no run's lines may take the fast path: equal to no JSON value
#: (None would match a line whose training_id is null).
NOBODY: Final = object()


def floats(value: Any) -> bool:
    """True for a JSON object of floats only (what the decoder keeps as it is)."""
    if value.__class__ is not dict:
        return False
    for item in value.values():  # noqa: SIM110 - a loop: no generator per line
        if item.__class__ is not float:
            return False
    return True


def _valid_id(tid: str) -> bool:
    """Whether *tid* is a valid training id (the decoder's cache holds only the first 4096)."""
    if tid in _valid_ids:
        return True
    try:
        validate_training_id(tid)
    except InvalidTrainingId:
        return False
    return True


class _Batch:
    """Metrics lines of one shape whose values are not in their series yet.

    The shape: the envelope plus ``loss`` (if :attr:`loss`) and ``extra``
    with exactly the names :attr:`names` (if not None), and ``min`` and
    ``max`` with exactly the names :attr:`bounds` (if not None: the emitter's
    lines; batched from msgspec's structs only), every name kept whole
    (:attr:`DictFolder._kept`), no other field -- so nothing of the line but
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
        "width",
    )

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.losses: list[float] = []
        self.extras: list[dict[str, float]] = []
        self.lows: list[dict[str, float]] = []
        self.highs: list[dict[str, float]] = []
        self.shaped = False  # whether a shape is batched
        self.width = 0  # the lines' field count if the dict way batches them too; else 0
        self.loss = False
        self.names: KeysView[str] | None = None
        self.bounds: KeysView[str] | None = None


class DictFolder(Folder):
    """A :class:`~pulse_core.reducer.Folder` folding log lines from their dicts (module doc).

    Attributes:
        folded: events folded from their lines (checkpoint lines not counted).
    """

    __slots__ = ("_batch", "_kept", "_owner", "folded")

    def __init__(self, state: RunState = INITIAL_STATE) -> None:
        super().__init__(state)
        self.folded = 0
        # The run whose lines the fast path takes: set once its state allows it
        # (see _open), reset by every ordinary apply (it may end the run).
        self._owner: object = NOBODY
        # metric name -> its [min, max] pair and series in the accumulator, for
        # names the reducer keeps whole (latest, bounds, history): neither is
        # ever replaced or removed once made, so the pair stays valid.
        self._kept: dict[str, tuple[list[Any], SeriesAcc]] = {}
        self._batch = _Batch()

    def apply(self, event: Event) -> None:
        """Apply one event the ordinary way (never raises)."""
        self._flush()
        self._owner = NOBODY
        super().apply(event)

    @property
    def state(self) -> RunState:
        """The state after everything folded and applied so far."""
        self._flush()
        return super().state

    def _open(self, tid: Any) -> bool:
        """Whether lines of *tid* may take the fast path now (and remember it)."""
        acc = self._acc
        if (
            tid.__class__ is not str
            or tid != acc.training_id  # another run's, or the run's first event
            or not _valid_id(tid)
            or acc.created_at is None
            or acc.last_seq < 0
            or acc.status in TERMINAL_STATUSES
        ):
            return False
        self._owner = tid
        return True

    def _hoist(self, floor: int) -> tuple[Any, ...]:
        """What every common line changes, as a fold loop's locals, with its seq bar.

        The loop writes them back with :meth:`_store` (the steps it calls never read them).
        """
        acc, last = self._acc, self._acc.last_seq
        fields = (acc.event_count, acc.last_event_at, acc.epoch, acc.total_epochs, acc.step)
        return (self._owner, last, max(last, floor), *fields, acc.total_steps)

    def _store(self, count: int, *fields: Any) -> None:
        """Write back a fold loop's locals (:meth:`_hoist`) once it folded *count* lines."""
        if count:
            acc = self._acc
            self._cached = None
            self.folded += count
            (acc.last_seq, acc.event_count, acc.last_event_at, acc.epoch) = fields[:4]
            acc.total_epochs, acc.step, acc.total_steps = fields[4:]

    def _fold_dicts(self, lines: Sequence[bytes], start: int, end: int, floor: int) -> int:
        """Fold ``lines[start:end]`` from orjson's dicts, up to the first not folded.

        Args:
            lines: lines of a log, without their newlines.
            start: the index of the first line to fold.
            end: the index after the last line to fold.
            floor: only seqs above this are folded (a follower's already-read seqs).

        Returns:
            The index of the first line not folded (*end* if none). The caller
            has checked that the run's lines may be folded (:meth:`_open`).
        """
        acc = self._acc
        owner, last, bar, events, latest, epoch, total_epochs, step, total_steps = self._hoist(
            floor
        )
        batch = self._batch
        width, want_loss, names = batch.width, batch.loss, batch.names
        stamp, lose, add_extra = batch.stamps.append, batch.losses.append, batch.extras.append
        loads, count, i = _loads, 0, start
        try:
            # Not ``while i < end``: 3.11 specializes a function's bytecode only
            # after a few unconditional backward jumps, which that loop lacks.
            while True:
                if i >= end:
                    break
                try:
                    obj = loads(lines[i])
                    tag = obj["type"]
                    tid = obj["training_id"]
                    seq = obj["seq"]
                    ts = obj["timestamp"]
                    version = obj["v"]
                except _UNREAD:
                    break
                if (
                    version is not _VERSION
                    or seq.__class__ is not int
                    or ts.__class__ is not float  # an integer timestamp: decoded (may overflow)
                    or tid != owner
                ):
                    break
                if seq <= bar:
                    if tag == "state_checkpoint" and _checkpoint(obj):
                        i += 1
                        continue
                    break
                # Is it folded, and how: checked before anything changes.
                get = obj.get
                batched = False
                if tag == "progress":
                    new_epoch, new_total_epochs = get("epoch"), get("total_epochs")
                    new_step, new_total_steps = get("step"), get("total_steps")
                    if (
                        (new_epoch.__class__ is not int and new_epoch is not None)
                        or (new_step.__class__ is not int and new_step is not None)
                        or (new_total_epochs.__class__ is not int and new_total_epochs is not None)
                        or (new_total_steps.__class__ is not int and new_total_steps is not None)
                    ):
                        break
                elif tag == "metrics":
                    loss, extra = get("loss"), get("extra", EMPTY)
                    if (
                        len(obj) == width
                        and (loss.__class__ is float if want_loss else loss is None)
                        and (
                            extra is EMPTY
                            if names is None
                            else extra.__class__ is dict and extra.keys() == names
                        )
                    ):
                        batched = True
                        for item in extra.values():
                            if item.__class__ is not float:
                                batched = False
                                break
                    if not batched and not common_metrics(obj, loss, extra):
                        break
                elif tag != "heartbeat":
                    if tag == "state_checkpoint" and _checkpoint(obj):
                        i += 1
                        continue
                    break
                # Folded: _Acc.apply's envelope step, then the event's own step.
                count += 1
                if seq != last + 1:
                    acc._gap(last, seq)  # the reducer's own step
                last = bar = seq
                events += 1
                if latest is None or ts > latest:
                    latest = ts
                i += 1
                if tag == "progress":
                    if new_epoch is not None:
                        epoch = new_epoch
                    if new_total_epochs is not None:
                        total_epochs = new_total_epochs
                    if new_step is not None:
                        step = new_step
                    if new_total_steps is not None:
                        total_steps = new_total_steps
                elif batched:
                    stamp(ts)
                    if want_loss:
                        lose(loss)
                    if names is not None:
                        add_extra(extra)
                    if len(batch.stamps) >= BATCH:
                        self._flush()
                elif tag == "metrics":
                    self._flush()
                    self._metrics(obj, seq, ts, loss, extra)
                    width, want_loss, names = batch.width, batch.loss, batch.names
        finally:
            self._store(count, last, events, latest, epoch, total_epochs, step, total_steps)
        return i

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
        batch.shaped, batch.width, batch.bounds = False, 0, None
        said = (loss is not None) + (extra is not EMPTY)
        if not said or (loss is not None and "loss" not in kept):
            return
        lows: Mapping[str, float] = EMPTY
        if len(obj) == 5 + said:
            batch.width = 5 + said
        elif len(obj) == 7 + said:
            lows, highs = get("min", EMPTY), get("max", EMPTY)
            if not lows or lows.keys() != highs.keys():
                return
        else:
            return
        if not all(name in kept for name in extra) or not all(name in kept for name in lows):
            batch.width = 0
            return
        batch.shaped, batch.bounds = True, None if batch.width else lows.keys()
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


def _checkpoint(obj: dict[str, Any]) -> bool:
    """Whether a checkpoint line (its envelope checked) decodes: then it changes nothing."""
    state = obj.get("state", EMPTY)
    return (
        obj.get("format").__class__ is str
        and obj.get("lines", 0).__class__ is int
        and (state is EMPTY or state.__class__ is dict)
    )
