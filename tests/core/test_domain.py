"""The typed domain: phases as a StrEnum of wire strings, one terminality, hashable events."""

from __future__ import annotations

import pytest

from pulse_core import lifecycle
from pulse_core.codec import decode, encode
from pulse_core.errors import InvalidTrainingId
from pulse_core.events import (
    STATUSES,
    TERMINAL_STATUSES,
    ErrorReported,
    Metrics,
    Phase,
    RunMeta,
    StatusChanged,
    UnknownEvent,
    is_terminal,
    validate_training_id,
)
from pulse_core.reducer import replay
from pulse_core.state import RunState, StatusEntry


class TestPhase:
    """A phase is its wire string; an unknown status never becomes a phase."""

    def test_values_are_the_wire_strings(self) -> None:
        """Phase values are STATUSES, in lifecycle order, and equal their strings."""
        assert tuple(phase.value for phase in Phase) == STATUSES
        for phase in Phase:
            assert phase == phase.value
            assert hash(phase) == hash(phase.value)
            assert f"{phase}" == phase.value

    def test_terminal_said_once(self) -> None:
        """Every spelling of "is terminal" agrees with TERMINAL_STATUSES."""
        for phase in Phase:
            expected = phase.value in ("done", "error", "cancelled")
            assert phase.is_terminal is expected
            assert is_terminal(phase.value) is expected
            assert lifecycle.is_terminal(phase.value) is expected
            assert RunState(status=phase.value).is_terminal is expected
        assert {"done", "error", "cancelled"} == TERMINAL_STATUSES

    def test_state_holds_phases(self) -> None:
        """A replayed state's status and timeline entries are Phases."""
        events = [
            StatusChanged(training_id="r", seq=1, timestamp=1.0, status="preparing"),
            StatusChanged(training_id="r", seq=2, timestamp=2.0, status="running"),
        ]
        state = replay(events)
        assert state.status is Phase.RUNNING
        assert [entry.status for entry in state.timeline] == [Phase.PREPARING, Phase.RUNNING]
        assert all(type(entry.status) is Phase for entry in state.timeline)
        assert all(type(key) is str for key in state.status_durations)

    def test_unknown_status_is_an_anomaly(self) -> None:
        """An unknown status stays a raw string on the event and is recorded, not applied."""
        event = StatusChanged(training_id="r", seq=1, timestamp=1.0, status="canceled")
        assert decode(encode(event)).status == "canceled"
        state = replay([event])
        assert state.status is Phase.IDLE
        assert [a.kind for a in state.anomalies] == ["unknown_status"]

    def test_state_refuses_unknown_phase(self) -> None:
        """RunState and StatusEntry accept only known phases."""
        with pytest.raises(ValueError, match="canceled"):
            RunState(status="canceled")
        with pytest.raises(ValueError, match="canceled"):
            StatusEntry(status="canceled", message="", timestamp=0.0, seq=1)


class TestHashableEvents:
    """Events with mappings inside can key a dict (the web stream's encoding cache)."""

    def test_events_with_mappings_hash(self) -> None:
        """Equal events hash equal; events with mappings are hashable."""
        events = [
            RunMeta(training_id="r", seq=1, timestamp=1.0, labels={"a": "b"}),
            Metrics(training_id="r", seq=2, timestamp=2.0, extra={"lr": 0.1}, min={"lr": 0.1}),
            ErrorReported(
                training_id="r",
                seq=3,
                timestamp=3.0,
                error_code="CUDA_OOM",
                message="m",
                details={"trace": [1, 2]},
            ),
            UnknownEvent(training_id="r", seq=4, timestamp=4.0, type="x", data={"k": {}}),
        ]
        cache = {event: index for index, event in enumerate(events)}
        for index, event in enumerate(events):
            twin = decode(encode(event)) if not isinstance(event, UnknownEvent) else event
            assert hash(twin) == hash(event)
            assert cache[twin] == index


class TestCheckedIds:
    """Ids already checked are remembered, but not every id a hub ever hears."""

    def test_the_remembered_ids_stay_few(self) -> None:
        from pulse_core import events

        for n in range(1_000):
            assert validate_training_id(f"run-{n:05d}") == f"run-{n:05d}"
        assert 0 < len(events._valid_ids) <= events._VALID_IDS_KEPT
        assert validate_training_id("run-00999") == "run-00999"
        with pytest.raises(InvalidTrainingId):
            validate_training_id("-not an id")

    def test_a_hub_forgets_them_all(self) -> None:
        from pulse_core import events

        validate_training_id("run-forgotten")
        assert events._valid_ids
        events.forget_checked_ids()
        assert not events._valid_ids
        assert validate_training_id("run-forgotten") == "run-forgotten"
