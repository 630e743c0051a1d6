"""The fast fold's dict way: a common line msgspec does not take, read with orjson.

:class:`DictFolder` is a :class:`~pulse_core.reducer.Folder` for the fast
fold (:mod:`pulse_core._fastfold`), which has most lines decoded by msgspec
into the structs of :mod:`pulse_core._linetype` and folds them in one loop.
A line msgspec does not take (a field it does not know, an integer past 64
bits, a checkpoint line) is read here with ``orjson.loads`` and, if it is a
common line of the run all the same, given to that loop as the struct
msgspec would have made of it (:meth:`~DictFolder._read_dict`). It also holds
the run whose lines may be folded.

An optimisation, never a second set of rules: a line is given only if the
fold would take it from msgspec's struct; a property test
(``tests/core/test_fastfold.py``) folds arbitrary and hostile lines both ways.

Private to the core; must never import I/O modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import orjson

from pulse_core._linetype import (
    NOT_COMMON,
    UNSET,
    CommonHeartbeat,
    CommonMetrics,
    CommonProgress,
)
from pulse_core._metricfold import EMPTY, MetricsFolder
from pulse_core.errors import InvalidTrainingId
from pulse_core.events import (
    PROTOCOL_VERSION,
    TERMINAL_STATUSES,
    Event,
    _valid_ids,
    validate_training_id,
)
from pulse_core.reducer import INITIAL_STATE
from pulse_core.state import RunState

_loads: Final = orjson.loads
#: What reading a line's envelope may raise: not JSON, not an object, a field missing.
_UNREAD: Final = (orjson.JSONDecodeError, KeyError, TypeError)
#: Compared by identity: CPython (and so orjson) gives small ints as shared objects,
#: so ``v is _VERSION`` is true exactly for the integer 2 (any other is decoded).
_VERSION: Final = PROTOCOL_VERSION
#: The owner while no run's lines may take the fast path: equal to no JSON value
#: (None would match a line whose training_id is null).
NOBODY: Final = object()
#: A line's struct, from msgspec or orjson's dict (the fold reads its attributes).
Common = CommonProgress | CommonMetrics | CommonHeartbeat
#: What gives the fold a line's struct: msgspec's decoder, or :meth:`DictFolder._read_dict`.
Read = Callable[[bytes], Any]


class Uncommon(Exception):
    """Raised by :meth:`DictFolder._read_dict` for a line not of a common shape."""


class Checkpoint(Exception):
    """Raised by :meth:`DictFolder._read_dict` for a valid checkpoint line of the run."""


#: What reading a line raises when the fold stops at it (msgspec's or the dict way's).
STOP: Final = (*NOT_COMMON, Uncommon)


def _valid_id(tid: str) -> bool:
    """Whether *tid* is a valid training id (the decoder's cache holds only the first 4096)."""
    if tid in _valid_ids:
        return True
    try:
        validate_training_id(tid)
    except InvalidTrainingId:
        return False
    return True


class DictFolder(MetricsFolder):
    """A :class:`~pulse_core.reducer.Folder` folding log lines, some read as dicts (module doc).

    Attributes:
        folded: events folded from their lines (checkpoint lines not counted).
    """

    __slots__ = ("_owner", "folded")

    def __init__(self, state: RunState = INITIAL_STATE) -> None:
        super().__init__(state)
        self.folded = 0
        # The run whose lines the fast path takes: set once its state allows it
        # (see _open), reset by every ordinary apply (it may end the run).
        self._owner: object = NOBODY

    def apply(self, event: Event) -> None:
        """Apply one event the ordinary way (never raises)."""
        self._owner = NOBODY
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

    def _read_dict(self, line: bytes) -> Common:
        """The struct msgspec would make of a common *line* it does not take, read with orjson.

        Its fields are orjson's values, each as the ordinary decoder gets it
        (an integer past 64 bits as orjson reads it; the fold checks the
        types msgspec would have), and fields msgspec does not know are left
        out (the decoder ignores them).

        Raises:
            Uncommon: not a line of the run of a common shape.
            Checkpoint: a checkpoint line of the run that decodes (it changes nothing).
        """
        try:
            obj = _loads(line)
            tag, tid, seq, ts = obj["type"], obj["training_id"], obj["seq"], obj["timestamp"]
            version = obj["v"]
        except _UNREAD:
            raise Uncommon from None
        if (
            version is not _VERSION
            or seq.__class__ is not int
            or ts.__class__ is not float  # an integer timestamp: decoded (may overflow)
            or tid != self._owner
        ):
            raise Uncommon
        get = obj.get
        # The struct's fields in their order. The progress numbers and metrics objects are
        # checked here (msgspec checks them); a metrics line's numbers by the fold, as msgspec's.
        if tag == "progress":
            numbers = get("epoch"), get("total_epochs"), get("step"), get("total_steps")
            if all(number.__class__ is int or number is None for number in numbers):
                return CommonProgress(tid, seq, ts, version, *numbers)
        elif tag == "metrics":
            named = get("time_per_epoch"), get("samples_per_second"), get("tokens_per_second")
            objects = get("extra", UNSET), get("min", UNSET), get("max", UNSET)
            if all(value.__class__ is dict or value is UNSET for value in objects):
                dropped = get("names_dropped")
                return CommonMetrics(tid, seq, ts, version, get("loss"), *named, *objects, dropped)
        elif tag == "heartbeat":
            return CommonHeartbeat(tid, seq, ts, version)
        elif tag == "state_checkpoint" and _checkpoint(obj):
            raise Checkpoint
        raise Uncommon


def _checkpoint(obj: dict[str, Any]) -> bool:
    """Whether a checkpoint line (its envelope checked) decodes: then it changes nothing."""
    state = obj.get("state", EMPTY)
    return (
        obj.get("format").__class__ is str
        and obj.get("lines", 0).__class__ is int
        and (state is EMPTY or state.__class__ is dict)
    )
