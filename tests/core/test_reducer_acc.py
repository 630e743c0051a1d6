"""The reducer's private accumulator mirrors RunState field for field.

``_Acc`` is the mutable twin of :class:`~pulse_core.state.RunState` used
inside folds (for speed). Its slots, ``__init__`` (thaw) and ``freeze`` are
generated from RunState's fields and a table of the fields held in another
form; its attribute types are written out for mypy. These tests fail when a
RunState field is added, renamed or forgotten in any of them.
"""

from __future__ import annotations

from typing import Any

import attrs

from pulse_core.events import ErrorReported, Phase, RunMeta
from pulse_core.reducer import _Acc
from pulse_core.state import Anomaly, RunState, Series, StatusEntry

#: RunState fields the accumulator keeps in another form.
RENAMED = {"metrics_min": "metrics_bounds", "metrics_max": "metrics_bounds"}


def full_state() -> RunState:
    """A RunState in which every field differs from its default."""
    meta = RunMeta(training_id="r1", seq=1, timestamp=1.0, name="n", labels={"a": "b"})
    error = ErrorReported(
        training_id="r1",
        seq=3,
        timestamp=3.0,
        error_code="CUDA_OOM",
        message="m",
        is_retryable=True,
        details={"k": 1},
        epoch=1,
        step=2,
    )
    values: dict[str, Any] = {
        "training_id": "r1",
        "status": Phase.ERROR,
        "message": "boom",
        "meta": meta,
        "epoch": 2,
        "total_epochs": 5,
        "step": 7,
        "total_steps": 10,
        "metrics": {"loss": 0.5},
        "best_loss": 0.25,
        "metrics_min": {"loss": 0.25},
        "metrics_max": {"loss": 0.75},
        "metrics_dropped": 3,
        "history": {
            "loss": Series(width=2, count=3, windows=((0, 2, 1.0, 0.5, 0.5, 1.0, 1.0, 2.0),))
        },
        "errors": (error,),
        "error_count": 4,
        "timeline": (StatusEntry(status="running", message="go", timestamp=2.0, seq=2),),
        "timeline_count": 6,
        "status_durations": {"running": 1.5},
        "created_at": 1.0,
        "started_at": 2.0,
        "finished_at": 3.0,
        "status_since": 3.0,
        "last_event_at": 3.5,
        "last_seq": 9,
        "event_count": 8,
        "duplicates": 1,
        "missing": 2,
        "gaps": ((4, 5),),
        "anomalies": (Anomaly(seq=9, kind="late_event", detail="d"),),
        "anomaly_count": 7,
        "unknown_events": 1,
        "dropped": 11,
    }
    return RunState(**values)


class TestAccumulatorMirrorsState:
    """Every RunState field goes into the accumulator and comes back out unchanged."""

    def test_sample_sets_every_field(self) -> None:
        """The sample state differs from the default in every field (a new field must be added)."""
        state, default = full_state(), RunState()
        same = [
            f.name
            for f in attrs.fields(RunState)
            if getattr(state, f.name) == getattr(default, f.name)
        ]
        assert same == []

    def test_slots_match_fields(self) -> None:
        """The accumulator's slots are RunState's fields (min/max kept as bounds pairs)."""
        expected = {RENAMED.get(f.name, f.name) for f in attrs.fields(RunState)}
        assert set(_Acc.__slots__) == expected

    def test_annotations_match_slots(self) -> None:
        """Every slot has its type written out (mypy checks the fold against it)."""
        assert set(_Acc.__annotations__) == set(_Acc.__slots__)

    def test_round_trip(self) -> None:
        """Freezing a fresh accumulator gives back the state it was made from, field by field."""
        state = full_state()
        again = _Acc(state).freeze()
        differ = [
            f.name
            for f in attrs.fields(RunState)
            if getattr(again, f.name) != getattr(state, f.name)
        ]
        assert differ == []
        assert again == state

    def test_default_round_trip(self) -> None:
        """The empty state survives the accumulator too."""
        assert _Acc(RunState()).freeze() == RunState()
