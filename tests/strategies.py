"""Shared hypothesis strategies: training ids, every event type, runs of events.

Values come in three flavours (:class:`Values`):

* ``HOSTILE``: anything Python code could construct -- unbounded ints, negative
  counts, NaN/inf metrics, extreme timestamps, odd unicode. For totality.
* ``WIRE``: anything one JSON line can carry -- 64-bit ints, finite
  timestamps, no lone surrogates. For the codec and for projections, whose
  output must serialise.
* ``REALISTIC``: what a training loop sends. For the semantic properties.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from pulse_core.codec import TAGS
from pulse_core.events import (
    KNOWN_EVENT_TYPES,
    STATUSES,
    TERMINAL_STATUSES,
    WELL_KNOWN_ERROR_CODES,
    Dropped,
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
    UnknownEvent,
)

#: Every event class, the unknown one included.
EVENT_TYPES: tuple[type[Any], ...] = (*KNOWN_EVENT_TYPES, UnknownEvent)
#: Fields every event has, which UnknownEvent.data must not repeat.
ENVELOPE = frozenset({"v", "type", "training_id", "seq", "timestamp"})

_ID_REST = string.ascii_letters + string.digits + "._-"

#: Valid training ids: 1-128 characters of [A-Za-z0-9._-], alphanumeric first.
training_ids: SearchStrategy[str] = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(string.ascii_letters + string.digits),
    st.text(_ID_REST, max_size=127),
)

#: Strings that must survive as-is: messages, names, hosts (no lone surrogates).
_ODD = [
    "",
    "\x00",
    "line\nbreak",
    "\u2028\u2029",
    "\u202eRTL override",
    "e\u0301",
    "\U0001f525 loss \U0001f4c9",
    "\ufeffBOM",
    '"quoted" \\ back',
    "x" * 2000,
]
texts: SearchStrategy[str] = st.sampled_from(_ODD) | st.text(
    st.characters(codec="utf-8"), max_size=40
)
#: Names of things (metric names, label keys).
names: SearchStrategy[str] = st.sampled_from(
    ["acc", "lr", "grad_norm", "val_loss", "perplexity"]
) | st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)

_HUGE = [2**63, 2**64, -(2**63) - 1, 10**30, -(10**30), 2**200]
#: Integers a JSON line can carry and orjson writes back as integers.
wire_ints: SearchStrategy[int] = st.integers(-(2**63), 2**63 - 1)
hostile_ints: SearchStrategy[int] = st.integers() | st.sampled_from(_HUGE) | wire_ints

#: Metric values: anything a float can be, NaN and infinities included.
metric_floats: SearchStrategy[float] = st.floats() | st.sampled_from(
    [float("nan"), float("inf"), float("-inf"), -0.0, 1e308, -1e308, 5e-324]
)
realistic_metric_floats: SearchStrategy[float] = st.floats(0.0, 1e4)

#: Unix seconds around now.
realistic_timestamps: SearchStrategy[float] = st.floats(1.6e9, 2.0e9)
wire_timestamps: SearchStrategy[float] = (
    st.floats(allow_nan=False, allow_infinity=False) | realistic_timestamps
)

json_scalars: SearchStrategy[Any] = (
    st.none() | st.booleans() | wire_ints | st.floats(allow_nan=False, allow_infinity=False) | texts
)
#: Any JSON value (what ``details`` and unknown events may hold).
json_values: SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)

#: Wire tags no version knows: the type of an UnknownEvent.
unknown_tags: SearchStrategy[str] = st.sampled_from(
    ["checkpoint", "artifact", "gpu_stats", "meta.v3"]
) | st.text(st.characters(codec="utf-8"), min_size=1, max_size=20).filter(
    lambda tag: tag not in TAGS
)

error_codes: SearchStrategy[str] = st.sampled_from(sorted(WELL_KNOWN_ERROR_CODES)) | st.from_regex(
    r"[A-Z][A-Z0-9]{0,8}(_[A-Z0-9]{1,5}){0,2}", fullmatch=True
)


@attrs.frozen
class Values:
    """The value strategies events are built from."""

    ints: SearchStrategy[int]
    counts: SearchStrategy[int]
    seqs: SearchStrategy[int]
    timestamps: SearchStrategy[float]
    metrics: SearchStrategy[float]
    statuses: SearchStrategy[str]
    error_codes: SearchStrategy[str]
    versions: SearchStrategy[int]


HOSTILE = Values(
    ints=hostile_ints,
    counts=hostile_ints,
    seqs=hostile_ints,
    timestamps=st.floats(allow_nan=False) | realistic_timestamps,
    metrics=metric_floats,
    statuses=st.sampled_from(STATUSES) | texts,
    error_codes=error_codes | texts,
    versions=st.integers(2, 9) | hostile_ints,
)
WIRE = Values(
    ints=wire_ints,
    counts=wire_ints,
    seqs=wire_ints,
    timestamps=wire_timestamps,
    metrics=metric_floats,
    statuses=st.sampled_from(STATUSES) | texts,
    error_codes=error_codes | texts,
    versions=st.just(2) | st.integers(2, 2**31),
)
REALISTIC = Values(
    ints=st.integers(0, 10_000),
    counts=st.integers(0, 1_000),
    seqs=st.integers(1, 10_000),
    timestamps=realistic_timestamps,
    metrics=realistic_metric_floats,
    statuses=st.sampled_from(STATUSES),
    error_codes=st.sampled_from(sorted(WELL_KNOWN_ERROR_CODES)),
    versions=st.just(2),
)


def _opt(strategy: SearchStrategy[Any]) -> SearchStrategy[Any]:
    return st.none() | strategy


def _builders(
    values: Values,
    training_id: SearchStrategy[str],
    seq: SearchStrategy[int],
    timestamp: SearchStrategy[float],
) -> dict[type[Any], SearchStrategy[Any]]:
    env = {"training_id": training_id, "seq": seq, "timestamp": timestamp, "v": values.versions}
    ints = _opt(values.ints)
    return {
        RunMeta: st.builds(
            RunMeta,
            name=_opt(texts),
            flow_id=_opt(texts),
            flow_run_id=_opt(texts),
            flow_step_id=_opt(texts),
            attempt=ints,
            total_epochs=ints,
            total_steps=ints,
            pid=ints,
            host=_opt(texts),
            world_size=ints,
            labels=st.dictionaries(names, texts, max_size=3),
            **env,
        ),
        StatusChanged: st.builds(StatusChanged, status=values.statuses, message=texts, **env),
        Progress: st.builds(
            Progress, epoch=ints, total_epochs=ints, step=ints, total_steps=ints, **env
        ),
        Metrics: st.builds(
            Metrics,
            loss=_opt(values.metrics),
            time_per_epoch=_opt(values.metrics),
            samples_per_second=_opt(values.metrics),
            tokens_per_second=_opt(values.metrics),
            extra=st.dictionaries(names, values.metrics, max_size=4),
            **env,
        ),
        ErrorReported: st.builds(
            ErrorReported,
            error_code=values.error_codes,
            message=texts,
            is_retryable=st.booleans(),
            details=_opt(st.dictionaries(names, json_values, max_size=4)),
            epoch=ints,
            step=ints,
            **env,
        ),
        Heartbeat: st.builds(Heartbeat, **env),
        Dropped: st.builds(Dropped, count=values.counts, reason=texts, **env),
        UnknownEvent: st.builds(
            UnknownEvent,
            type=unknown_tags,
            data=st.dictionaries(
                names.filter(lambda n: n not in ENVELOPE), json_values, max_size=4
            ),
            **env,
        ),
    }


def events_of(
    cls: type[Any],
    values: Values = WIRE,
    *,
    training_id: SearchStrategy[str] = training_ids,
    seq: SearchStrategy[int] | None = None,
    timestamp: SearchStrategy[float] | None = None,
) -> SearchStrategy[Any]:
    """Events of one class (any of :data:`EVENT_TYPES`) built from *values*."""
    builders = _builders(
        values,
        training_id,
        values.seqs if seq is None else seq,
        values.timestamps if timestamp is None else timestamp,
    )
    return builders[cls]


#: How often each event type appears in a run: mostly progress and metrics.
_RUN_MIX: tuple[type[Any], ...] = (
    Progress,
    Progress,
    Progress,
    Metrics,
    Metrics,
    Metrics,
    StatusChanged,
    StatusChanged,
    ErrorReported,
    Heartbeat,
    RunMeta,
    Dropped,
    UnknownEvent,
)


def events(
    values: Values = WIRE,
    *,
    training_id: SearchStrategy[str] = training_ids,
    seq: SearchStrategy[int] | None = None,
    timestamp: SearchStrategy[float] | None = None,
) -> SearchStrategy[Event]:
    """Any event of any type, built from *values*."""
    return st.sampled_from(_RUN_MIX).flatmap(
        lambda cls: events_of(cls, values, training_id=training_id, seq=seq, timestamp=timestamp)
    )


#: How the next event of a run relates to the previous ones.
_STEPS = ("next",) * 8 + ("gap", "duplicate", "swap", "late")


@st.composite
def run_events(
    draw: Callable[[SearchStrategy[Any]], Any],
    values: Values = REALISTIC,
    training_id: str | None = None,
    max_size: int = 40,
) -> list[Event]:
    """Events of one run in arrival order, with realistic ``seq`` numbers.

    Seq mostly increases by one; sometimes it jumps (a gap), an earlier event
    repeats (a duplicate), two neighbours swap, or an old seq comes back
    with new content (a late event or a conflicting duplicate).
    """
    tid = draw(training_ids) if training_id is None else training_id
    steps = draw(st.lists(st.sampled_from(_STEPS), max_size=max_size))
    now = draw(realistic_timestamps)
    seq = 0
    out: list[Event] = []
    for step in steps:
        if step == "duplicate" and out:
            out.append(draw(st.sampled_from(out)))
            continue
        if step == "swap" and len(out) >= 2:
            out[-1], out[-2] = out[-2], out[-1]
            continue
        if step == "late" and seq >= 1:
            this = draw(st.integers(1, seq))
        else:
            seq += draw(st.integers(2, 50)) if step == "gap" else 1
            this = seq
        now += draw(st.floats(0.0, 30.0))
        body = draw(_bodies(values))
        out.append(attrs.evolve(body, training_id=tid, seq=this, timestamp=now))
    return out


_BODIES: dict[int, SearchStrategy[Event]] = {}


def _bodies(values: Values) -> SearchStrategy[Event]:
    """Events with a placeholder envelope, built once per Values (drawing is hot)."""
    key = id(values)
    if key not in _BODIES:
        _BODIES[key] = events(
            values, training_id=st.just("x"), seq=st.just(1), timestamp=st.just(0.0)
        )
    return _BODIES[key]


@st.composite
def lifecycle_paths(draw: Callable[[SearchStrategy[Any]], Any]) -> list[str]:
    """A legal sequence of statuses from idle, possibly unfinished.

    The happy path is preparing? -> running -> cooling_down? -> done; it may
    be cut anywhere and end in error or cancelled (or not end at all), and
    non-terminal statuses may be restated.
    """
    full = ["preparing"] if draw(st.booleans()) else []
    full.append("running")
    if draw(st.booleans()):
        full.append("cooling_down")
    full.append("done")
    cut = draw(st.integers(0, len(full)))
    path = full[:cut]
    if cut < len(full):
        ending = draw(st.sampled_from(["error", "cancelled", None]))
        if ending is not None:
            path.append(ending)
    restated: list[str] = []
    for status in path:
        restated.append(status)
        if status not in TERMINAL_STATUSES and draw(st.integers(0, 3)) == 0:
            restated.append(status)
    return restated


@st.composite
def well_formed_runs(
    draw: Callable[[SearchStrategy[Any]], Any],
    training_id: str | None = None,
    max_work: int = 8,
) -> list[Event]:
    """A clean run: meta, a legal lifecycle path, progress and metrics while running.

    Seq goes 1, 2, 3, ... without gaps and timestamps never go back.
    """
    tid = draw(training_ids) if training_id is None else training_id
    path = draw(lifecycle_paths())
    now = draw(realistic_timestamps)
    total_epochs = draw(st.integers(1, 100))
    bodies: list[Callable[[int, float], Event]] = []
    if draw(st.booleans()):
        bodies.append(partial(RunMeta, tid, name="run", total_epochs=total_epochs))
    epoch = 0
    for status in path:
        if status == "error" and draw(st.booleans()):
            code = draw(st.sampled_from(sorted(WELL_KNOWN_ERROR_CODES)))
            bodies.append(partial(ErrorReported, tid, error_code=code, message="boom"))
        bodies.append(partial(StatusChanged, tid, status=status, message=status))
        if status != "running":
            continue
        for _ in range(draw(st.integers(0, max_work))):
            if draw(st.booleans()):
                epoch = min(epoch + 1, total_epochs)
                bodies.append(partial(Progress, tid, epoch=epoch, total_epochs=total_epochs))
            else:
                loss = draw(realistic_metric_floats)
                bodies.append(partial(Metrics, tid, loss=loss))
            if draw(st.integers(0, 4)) == 0:
                bodies.append(partial(Heartbeat, tid))
    out: list[Event] = []
    for seq, body in enumerate(bodies, start=1):
        now += draw(st.floats(0.0, 60.0))
        out.append(body(seq, now))
    return out


def final_status(run: list[Event]) -> str:
    """The status a well-formed run ends in (the last status event's)."""
    statuses = [e.status for e in run if isinstance(e, StatusChanged)]
    return statuses[-1] if statuses else "idle"


# --- hostile arguments for the emitter's public methods (issue 14.4) ---------


def _raise(*_: Any, **__: Any) -> Any:
    raise RuntimeError("hostile dunder")


class Hostile:
    """An object every conversion and comparison of which raises."""

    __str__ = __repr__ = __float__ = __int__ = __index__ = __bool__ = _raise
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __len__ = __iter__ = _raise  # type: ignore[assignment]
    __hash__ = _raise  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"hostile attribute {name}")


class HashableHostile(Hostile):
    """Like :class:`Hostile` but usable as a dict key."""

    def __hash__(self) -> int:
        return 7


class HostileNumber(float):
    """A float subclass whose comparisons raise (numbers that are not quite numbers)."""

    __eq__ = __ne__ = __lt__ = __gt__ = _raise  # type: ignore[assignment]
    __hash__ = float.__hash__


def _deep(depth: int) -> list[Any]:
    top: list[Any] = []
    current = top
    for _ in range(depth):
        nxt: list[Any] = []
        current.append(nxt)
        current = nxt
    return top


def _self_ref() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _numpy_values() -> list[Any]:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy comes with the dev extras
        return []
    return [
        np.array([1, 2]),
        np.array(3),
        np.array([4.5]),
        np.array([]),
        np.float32("nan"),
        np.float64(0.25),
        np.int64(7),
        np.array([[1.0, 2.0], [3.0, 4.0]]),
    ]


_BIG_TEXT = "x" * (2 * 1024 * 1024)  # a 2 MB message, name or details value

#: Any Python object a training script might pass by mistake, hostile ones included.
hostile_objects: SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    hostile_ints,
    st.sampled_from([10**400, -(10**5000)]),
    st.floats(),
    st.text(max_size=30),
    st.sampled_from(["\udc80bad-utf8.txt", "\ud800", _BIG_TEXT, "", "running", "done", "error"]),
    st.binary(max_size=20),
    st.builds(Hostile),
    st.builds(HostileNumber, st.floats()),
    st.sampled_from([_deep(5_000), _self_ref(), {"k": _deep(5_000)}, {HashableHostile(): 1}]),
    st.sampled_from(_numpy_values() or [None]),
    st.lists(st.integers() | st.text(max_size=5) | st.builds(Hostile), max_size=4),
    st.dictionaries(
        st.text(max_size=5), st.integers() | st.builds(Hostile) | st.floats(), max_size=4
    ),
    st.sets(st.integers(), max_size=3),
    st.sampled_from([object(), type, Ellipsis, NotImplemented, 1j, range(3)]),
)
