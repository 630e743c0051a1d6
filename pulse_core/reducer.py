"""The total reducer: ``(RunState, Event) -> RunState``, and folds over logs.

This module owns how events change a run's state. It is **total**: any event
in any order -- duplicates, gaps, reordering, illegal transitions, events
after a terminal state, events of another run, unknown types -- yields a valid
state and never raises. What cannot be applied is recorded (``anomalies``,
``duplicates``, ``missing``/``gaps``, ``unknown_events``) instead.

Rules (specs/protocol.md, "Folding"):

* ``seq`` orders a run's events. An event whose seq is not above the last
  applied one is not applied: a duplicate is counted, one that fills a
  recorded gap is an anomaly ``late_event``. A jump in seq records a gap
  (gaps are normal where a sink forwards a coalesced subset).
* A status event is applied only if the lifecycle table allows it.
* Nothing is applied after a terminal status (``after_terminal``).

For speed the folds use a private mutable accumulator and freeze once at the
end; :func:`reduce` thaws, applies one event and freezes. Both give the same
state, so ``replay(a + b) == fold(replay(a), b)``.

Must never import I/O modules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, assert_never

import attrs

from pulse_core._series import SeriesAcc
from pulse_core.events import (
    PHASES,
    TERMINAL_STATUSES,
    Dropped,
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Phase,
    Progress,
    RunMeta,
    StateCheckpoint,
    StatusChanged,
    UnknownEvent,
)
from pulse_core.lifecycle import next_status
from pulse_core.state import (
    HEAD_KEPT,
    MAX_ANOMALIES,
    MAX_ERRORS,
    MAX_GAPS,
    MAX_METRIC_NAMES,
    MAX_SERIES,
    MAX_TIMELINE,
    PROTOCOL_METRICS,
    Anomaly,
    RunState,
    StatusEntry,
)

_PHASES: Final = PHASES
#: Ceiling of the ``dropped`` sum: the largest signed 64-bit integer.
MAX_COUNT = 2**63 - 1


def _push(items: list[Any], item: Any, limit: int) -> None:
    """Append, keeping the first HEAD_KEPT and the most recent entries."""
    if len(items) >= limit:
        del items[HEAD_KEPT]
    items.append(item)


#: How the accumulator holds the RunState fields it does not keep as they are:
#: field -> (thaw, freeze), expressions of the state ``s`` and the accumulator
#: ``a`` (an empty thaw sets nothing). ``metrics_min`` and ``metrics_max`` are
#: held together as ``metrics_bounds``, name -> [low, high]: one lookup per
#: value in the fold.
_HELD_AS: Final[Mapping[str, tuple[str, str]]] = {
    "metrics": ("dict(s.metrics)", "dict(a.metrics)"),
    "metrics_min": (
        "{n: [low, s.metrics_max.get(n, low)] for n, low in s.metrics_min.items()}",
        "{n: pair[0] for n, pair in a.metrics_bounds.items()}",
    ),
    "metrics_max": ("", "{n: pair[1] for n, pair in a.metrics_bounds.items()}"),
    "history": (
        "{n: SeriesAcc(x) for n, x in s.history.items()}",
        "{n: x.freeze() for n, x in a.history.items()}",
    ),
    "errors": ("list(s.errors)", "tuple(a.errors)"),
    "timeline": ("list(s.timeline)", "tuple(a.timeline)"),
    "status_durations": ("dict(s.status_durations)", "dict(a.status_durations)"),
    "gaps": ("list(s.gaps)", "tuple(a.gaps)"),
    "anomalies": ("list(s.anomalies)", "tuple(a.anomalies)"),
}
_BOUNDS_OF: Final = {"metrics_min": "metrics_bounds", "metrics_max": "metrics_bounds"}


def _compile_thaw_freeze() -> tuple[Any, Any]:
    """Generate the accumulator's ``__init__`` and ``freeze`` from RunState's fields.

    Generated once at import (as :mod:`pulse_core._structure` does for
    decoding) so they cannot drift from RunState and cost what hand-written
    ones do: one attribute copy per field.
    """
    thaw, freeze = ["def __init__(a, s):"], ["def freeze(a):", "    return RunState("]
    for field in attrs.fields(RunState):
        name = field.name
        into, out = _HELD_AS.get(name, (f"s.{name}", f"a.{name}"))
        if into:
            thaw.append(f"    a.{_BOUNDS_OF.get(name, name)} = {into}")
        freeze.append(f"        {name}={out},")
    freeze.append("    )")
    namespace: dict[str, Any] = {"RunState": RunState, "SeriesAcc": SeriesAcc}
    exec("\n".join(thaw + freeze), namespace)  # noqa: S102 - source built from RunState's fields
    return namespace["__init__"], namespace["freeze"]


class _Acc:
    """The private mutable twin of RunState used inside folds.

    Its attributes are RunState's fields (see :data:`_HELD_AS` for the ones
    held in another form); ``__init__`` (thaw) and ``freeze`` are generated.
    """

    __slots__ = tuple(dict.fromkeys(_BOUNDS_OF.get(f.name, f.name) for f in attrs.fields(RunState)))

    training_id: str | None
    status: Phase
    message: str
    meta: RunMeta | None
    epoch: int | None
    total_epochs: int | None
    step: int | None
    total_steps: int | None
    metrics: dict[str, float]
    best_loss: float | None
    metrics_bounds: dict[str, list[float]]
    metrics_dropped: int
    history: dict[str, SeriesAcc]
    errors: list[ErrorReported]
    error_count: int
    timeline: list[StatusEntry]
    timeline_count: int
    status_durations: dict[str, float]
    created_at: float | None
    started_at: float | None
    finished_at: float | None
    status_since: float | None
    last_event_at: float | None
    last_seq: int
    event_count: int
    duplicates: int
    missing: int
    gaps: list[tuple[int, int]]
    anomalies: list[Anomaly]
    anomaly_count: int
    unknown_events: int
    dropped: int

    if TYPE_CHECKING:

        def __init__(self, s: RunState) -> None: ...

        def freeze(self) -> RunState: ...

    else:
        __init__, freeze = _compile_thaw_freeze()

    # -- applying ---------------------------------------------------------

    def anomaly(self, seq: int, kind: str, detail: str) -> None:
        self.anomaly_count += 1
        _push(self.anomalies, Anomaly(seq=seq, kind=kind, detail=detail), MAX_ANOMALIES)

    def apply(self, event: Event) -> None:
        """Apply one event; never raises for any Event value."""
        if event.__class__ is StateCheckpoint:
            return  # a log's checkpoint says what was folded already: no change
        seq = event.seq
        tid = event.training_id
        if tid != self.training_id:
            if self.training_id is not None:
                self.anomaly(seq, "foreign_event", f"event of run {tid!r:.140}")
                return
            self.training_id = tid
        last = self.last_seq
        if seq.__class__ is not int or seq < 1:
            self.anomaly(0, "bad_seq", f"seq {seq!r:.40} is not a positive integer")
            return
        if seq <= last:
            self._late_or_duplicate(seq)
            return
        if seq != last + 1:
            self._gap(last, seq)
        self.last_seq = seq
        self.event_count += 1
        ts = event.timestamp
        if self.created_at is None:
            self.created_at = ts
            self.status_since = ts
        if self.last_event_at is None or ts > self.last_event_at:
            self.last_event_at = ts
        status = self.status
        if isinstance(event, Dropped):
            # Counted even after the end: a sink may report its losses late.
            # Saturate: hostile counts must not grow past what JSON readers take.
            self.dropped = min(self.dropped + max(0, event.count), MAX_COUNT)
            return
        if status in TERMINAL_STATUSES and not isinstance(event, Heartbeat):
            self.anomaly(seq, "after_terminal", f"{_tag(event)} event after {status}")
            return

        if isinstance(event, Progress):
            if event.epoch is not None:
                self.epoch = event.epoch
            if event.total_epochs is not None:
                self.total_epochs = event.total_epochs
            if event.step is not None:
                self.step = event.step
            if event.total_steps is not None:
                self.total_steps = event.total_steps
        elif isinstance(event, Metrics):
            self._metrics(event, ts)
        elif isinstance(event, StatusChanged):
            self._status(event, ts)
        elif isinstance(event, ErrorReported):
            self.error_count += 1
            _push(self.errors, event, MAX_ERRORS)
        elif isinstance(event, RunMeta):
            self.meta = event
            if event.total_epochs is not None and self.total_epochs is None:
                self.total_epochs = event.total_epochs
            if event.total_steps is not None and self.total_steps is None:
                self.total_steps = event.total_steps
        elif isinstance(event, Heartbeat | Dropped | StateCheckpoint):  # the last two: above
            pass
        elif isinstance(event, UnknownEvent):
            self.unknown_events += 1
        else:
            assert_never(event)

    def _gap(self, last: int, seq: int) -> None:
        """Record the seqs between *last* and *seq* as missing (a gap)."""
        self.missing += seq - last - 1
        self.gaps.append((last + 1, seq - 1))
        if len(self.gaps) > MAX_GAPS:
            del self.gaps[0]  # keep the most recent gaps

    def _late_or_duplicate(self, seq: int) -> None:
        for index, (lo, hi) in enumerate(self.gaps):
            if lo <= seq <= hi:
                pieces = [(a, b) for a, b in ((lo, seq - 1), (seq + 1, hi)) if a <= b]
                self.gaps[index : index + 1] = pieces
                del self.gaps[: max(0, len(self.gaps) - MAX_GAPS)]
                self.missing -= 1
                self.anomaly(seq, "late_event", f"seq {seq} arrived after seq {self.last_seq}")
                return
        self.duplicates += 1

    def _metrics(self, event: Metrics, ts: float) -> None:
        extra = event.extra
        if (
            event.time_per_epoch is None
            and event.samples_per_second is None
            and event.tokens_per_second is None
        ):
            # The common shape: loss and a few extra names (no tuple list built).
            if event.loss is not None:
                self._metric("loss", event.loss, ts, event.seq)
            if extra:
                for name, value in extra.items():
                    self._metric(name, value, ts, event.seq)
        else:
            for name, value in (
                ("loss", event.loss),
                ("time_per_epoch", event.time_per_epoch),
                ("samples_per_second", event.samples_per_second),
                ("tokens_per_second", event.tokens_per_second),
                *(extra.items() if extra else ()),
            ):
                if value is not None:
                    self._metric(name, value, ts, event.seq)
        bounds = self.metrics_bounds
        # Exact bounds from the writer (every call, not only these samples).
        if event.min:
            for name, value in event.min.items():
                pair = bounds.get(name)
                if pair is not None and value < pair[0]:  # kept names only
                    pair[0] = value
        if event.max:
            for name, value in event.max.items():
                pair = bounds.get(name)
                if pair is not None and value > pair[1]:
                    pair[1] = value
        if event.names_dropped is not None and event.names_dropped > self.metrics_dropped:
            self.metrics_dropped = min(event.names_dropped, MAX_COUNT)
        pair = bounds.get("loss")
        if pair is not None and (self.best_loss is None or pair[0] < self.best_loss):
            self.best_loss = pair[0]

    def _metric(self, name: str, value: float, ts: float, seq: int) -> None:
        """One metric value said (not None): latest, bounds and history."""
        if value != value:  # NaN: nothing said
            return
        metrics = self.metrics
        if name not in metrics and name not in PROTOCOL_METRICS:
            kept = len(metrics) - len(PROTOCOL_METRICS.intersection(metrics))
            if kept >= MAX_METRIC_NAMES:
                self.anomaly(seq, "too_many_metrics", f"metric {name!r:.80} not kept")
                return
        metrics[name] = value
        pair = self.metrics_bounds.get(name)
        if pair is None:
            self.metrics_bounds[name] = [value, value]
        elif value < pair[0]:
            pair[0] = value
        elif value > pair[1]:
            pair[1] = value
        series = self.history.get(name)
        if series is None:
            history = self.history
            if name not in PROTOCOL_METRICS:
                extra = len(history) - len(PROTOCOL_METRICS.intersection(history))
                if extra >= MAX_SERIES:
                    return
            series = history[name] = SeriesAcc()
        series.add(value, ts)

    def _status(self, event: StatusChanged, ts: float) -> None:
        target = _PHASES.get(event.status)
        current = self.status
        if target is None:  # an unknown status stays a raw string, here an anomaly
            self.anomaly(event.seq, "unknown_status", f"status {event.status!r:.40}")
            return
        if next_status(current, target) is None:
            self.anomaly(event.seq, "illegal_transition", f"{current} -> {target}")
            return
        self.message = event.message
        self.timeline_count += 1
        _push(
            self.timeline,
            StatusEntry(status=target, message=event.message, timestamp=ts, seq=event.seq),
            MAX_TIMELINE,
        )
        if target == current:
            return
        since = self.status_since if self.status_since is not None else ts
        spent = ts - since if ts > since else 0.0
        key = current.value  # plain str keys: the mapping goes to JSON as is
        self.status_durations[key] = self.status_durations.get(key, 0.0) + spent
        self.status_since = ts
        self.status = target
        if self.started_at is None and target in (Phase.PREPARING, Phase.RUNNING):
            self.started_at = ts
        if target in TERMINAL_STATUSES:
            self.finished_at = ts


def _tag(event: Event) -> str:
    """The wire tag of *event* (for anomaly details; never a class name)."""
    if isinstance(event, UnknownEvent):
        return event.type
    from pulse_core.codec import TAG_OF  # rare path: only anomalies need the tag

    return TAG_OF.get(type(event), "unknown")


INITIAL_STATE = RunState()


def reduce(state: RunState, event: Event) -> RunState:
    """Apply one event to a run's state.

    Args:
        state: the state so far (``RunState()`` for a new run).
        event: any event.

    Returns:
        The next state; *state* itself is never modified. Never raises.
    """
    acc = _Acc(state)
    acc.apply(event)
    return acc.freeze()


def replay(events: Iterable[Event], state: RunState = INITIAL_STATE) -> RunState:
    """Fold a run's events into its state, starting from *state*.

    Events of another training_id than the first one seen are recorded as
    ``foreign_event`` anomalies; use :func:`replay_runs` for mixed streams.
    """
    acc = _Acc(state)
    apply = acc.apply
    for event in events:
        apply(event)
    return acc.freeze()


def replay_runs(
    events: Iterable[Event], states: Mapping[str, RunState] | None = None
) -> dict[str, RunState]:
    """Fold events of many runs, keyed by training_id.

    Args:
        events: events of any runs, in arrival order.
        states: states to continue from (a checkpoint), if any.

    Returns:
        A new dict training_id -> RunState, including untouched *states*.
    """
    accs: dict[str, _Acc] = {}
    base = dict(states or {})
    for event in events:
        tid = event.training_id
        acc = accs.get(tid)
        if acc is None:
            acc = accs[tid] = _Acc(base.get(tid, INITIAL_STATE))
        acc.apply(event)
    for tid, acc in accs.items():
        base[tid] = acc.freeze()
    return base


class Folder:
    """An incremental fold for one run that freezes only when asked.

    Live readers (followers, the hub) apply events one at a time and read the
    state far less often; this avoids a thaw/freeze per event.
    """

    __slots__ = ("_acc", "_cached")

    def __init__(self, state: RunState = INITIAL_STATE) -> None:
        self._acc = _Acc(state)
        self._cached: RunState | None = state

    def apply(self, event: Event) -> None:
        """Apply one event (never raises)."""
        self._cached = None
        self._acc.apply(event)

    @property
    def state(self) -> RunState:
        """The state after everything applied so far."""
        if self._cached is None:
            self._cached = self._acc.freeze()
        return self._cached

    @property
    def last_seq(self) -> int:
        """The highest seq applied."""
        return self._acc.last_seq
