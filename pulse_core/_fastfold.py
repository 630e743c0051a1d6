"""The fast fold: common log lines folded straight from their decoded JSON objects.

A whole-log read that wants only the final state (``pulse replay``, cold
recovery, ``load_run``) spent most of its time building event objects
(:mod:`pulse_core._structure`) that the reducer read once and dropped. Here
the common lines -- ``progress``, ``metrics`` and ``heartbeat`` of the run
being folded, and the ``state_checkpoint`` lines the reducer skips -- are
folded from the dict ``orjson.loads`` gives, into the reducer's own
accumulator (:class:`LineFolder` is a :class:`~pulse_core.reducer.Folder`).

An optimisation, never a second set of rules: a line is folded here only when
it is exactly the common shape -- every field of the right JSON type, protocol
version 2, the run's own (already validated) training_id, a seq above the last
one, a run started and not ended. Anything else (another type, an odd, missing
or mistyped field, an integer where a float is expected, a duplicate or late
seq, the run's first event, a bad line) is left untouched: the caller decodes
it and applies it the ordinary way (``Folder.apply(decode(line))``). Where it
folds, it does what ``_Acc.apply`` does for that event, calling the
reducer's own steps where they are not the per-value hot path; a property test
(``tests/core/test_fastfold.py``) folds arbitrary and hostile lines both ways.

Private to the core; must never import I/O modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import orjson

from pulse_core._series import SeriesAcc
from pulse_core.codec import decode
from pulse_core.errors import DecodeError, InvalidTrainingId
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
_EMPTY: Final[Mapping[str, float]] = {}
_UNSAID: Final = (None, None, None)
#: The owner while no run's lines may take the fast path: equal to no JSON value
#: (None would match a line whose training_id is null).
_NOBODY: Final = object()


def _floats(value: Any) -> bool:
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


class LineFolder(Folder):
    """A :class:`~pulse_core.reducer.Folder` that also folds raw log lines (module doc).

    Attributes:
        folded: events folded by :meth:`fold_line` (checkpoint lines not counted).
    """

    __slots__ = ("_kept", "_owner", "folded")

    def __init__(self, state: RunState = INITIAL_STATE) -> None:
        super().__init__(state)
        self.folded = 0
        # The run whose lines the fast path takes: set once its state allows it
        # (see _open), reset by every ordinary apply (it may end the run).
        self._owner: object = _NOBODY
        # metric name -> its [min, max] pair and series in the accumulator, for
        # names the reducer keeps whole (latest, bounds, history): neither is
        # ever replaced or removed once made, so the pair stays valid.
        self._kept: dict[str, tuple[list[Any], SeriesAcc]] = {}

    def apply(self, event: Event) -> None:
        """Apply one event the ordinary way (never raises)."""
        self._owner = _NOBODY
        super().apply(event)

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

    def fold_line(self, line: bytes, floor: int = 0) -> bool:
        """Fold one log line if it is a common event of exactly the common shape.

        Args:
            line: one line of a log, without its newline.
            floor: only seqs above this are folded (a follower's already-read seqs).

        Returns:
            True if the line was folded (or is a valid checkpoint line, which
            changes nothing); False if nothing was done: decode it and apply
            it the ordinary way (it may be a bad line).
        """
        try:
            obj = _loads(line)
            tag = obj["type"]
            tid = obj["training_id"]
            seq = obj["seq"]
            ts = obj["timestamp"]
            version = obj["v"]
        except _UNREAD:
            return False
        if (
            version is not _VERSION
            or seq.__class__ is not int
            or ts.__class__ is not float  # an integer timestamp: decoded (it may overflow)
            or (tid != self._owner and not self._open(tid))
        ):
            return False
        acc = self._acc
        last = acc.last_seq
        if seq <= last or seq <= floor:
            return tag == "state_checkpoint" and _checkpoint(obj)
        get = obj.get
        if tag == "progress":
            epoch, total_epochs = get("epoch"), get("total_epochs")
            step, total_steps = get("step"), get("total_steps")
            if not (
                (epoch is None or epoch.__class__ is int)
                and (total_epochs is None or total_epochs.__class__ is int)
                and (step is None or step.__class__ is int)
                and (total_steps is None or total_steps.__class__ is int)
            ):
                return False
        elif tag == "metrics":
            loss = get("loss")
            named = (get("time_per_epoch"), get("samples_per_second"), get("tokens_per_second"))
            extra, lows, highs = get("extra", _EMPTY), get("min", _EMPTY), get("max", _EMPTY)
            names_dropped = get("names_dropped")
            if not (
                (loss is None or loss.__class__ is float)
                and (extra is _EMPTY or _floats(extra))
                and (lows is _EMPTY or _floats(lows))
                and (highs is _EMPTY or _floats(highs))
                and (names_dropped is None or names_dropped.__class__ is int)
                and (named == _UNSAID or all(v is None or v.__class__ is float for v in named))
            ):
                return False
        elif tag != "heartbeat":
            return tag == "state_checkpoint" and _checkpoint(obj)
        # Folded: _Acc.apply's envelope step, then the event's own step.
        self._cached = None
        self.folded += 1
        if seq != last + 1:
            acc._gap(last, seq)  # the reducer's own step
        acc.last_seq = seq
        acc.event_count += 1
        latest = acc.last_event_at
        if latest is None or ts > latest:
            acc.last_event_at = ts
        if tag == "progress":
            if epoch is not None:
                acc.epoch = epoch
            if total_epochs is not None:
                acc.total_epochs = total_epochs
            if step is not None:
                acc.step = step
            if total_steps is not None:
                acc.total_steps = total_steps
        elif tag == "metrics":
            # _Acc._metrics: the values in its order, then the writer's bounds.
            value = self._value
            if loss is not None:
                value("loss", loss, ts, seq)
            if named != _UNSAID:
                for name, number in zip(_NAMED, named, strict=True):
                    if number is not None:
                        value(name, number, ts, seq)
            for name, number in extra.items():
                value(name, number, ts, seq)
            bounds = acc.metrics_bounds
            for name, number in lows.items():
                pair = bounds.get(name)
                if pair is not None and number < pair[0]:  # kept names only
                    pair[0] = number
            for name, number in highs.items():
                pair = bounds.get(name)
                if pair is not None and number > pair[1]:
                    pair[1] = number
            if names_dropped is not None and names_dropped > acc.metrics_dropped:
                acc.metrics_dropped = min(names_dropped, MAX_COUNT)
            pair = bounds.get("loss")
            if pair is not None and (acc.best_loss is None or pair[0] < acc.best_loss):
                acc.best_loss = pair[0]
        return True

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


_NAMED: Final = ("time_per_epoch", "samples_per_second", "tokens_per_second")


def _checkpoint(obj: dict[str, Any]) -> bool:
    """Whether a checkpoint line (its envelope checked) decodes: then it changes nothing."""
    state = obj.get("state", _EMPTY)
    return (
        obj.get("format").__class__ is str
        and obj.get("lines", 0).__class__ is int
        and (state is _EMPTY or state.__class__ is dict)
    )


def fold_lines(lines: Iterable[bytes], state: RunState = INITIAL_STATE) -> RunState:
    """Fold log lines into *state*: ``Folder.apply(decode(line))`` for every line that decodes.

    Lines that do not decode are skipped (a caller that reports them reads
    the log with a follower).
    """
    folder = LineFolder(state)
    fold_line = folder.fold_line
    apply = folder.apply
    for line in lines:
        if not fold_line(line):
            try:
                apply(decode(line))
            except DecodeError:
                continue
    return folder.state
