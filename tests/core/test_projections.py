"""Projections (v1 snapshot, v2 view, history record) and the liveness rule."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import HOSTILE, WIRE, events, run_events, wire_timestamps

from pulse_core.events import (
    STATUSES,
    Dropped,
    ErrorReported,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_core.liveness import (
    ALIVE,
    ENDED,
    LOST,
    LOST_AFTER,
    STALE,
    STALE_AFTER,
    Liveness,
    liveness_of,
)
from pulse_core.projections import (
    LOST_MESSAGE,
    V1_KEYS,
    iso_utc,
    progress_fraction,
    to_history_record,
    to_metric_history,
    to_summary,
    to_v1,
    to_view,
)
from pulse_core.reducer import reduce, replay
from pulse_core.state import RunState

ISO_Z = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
TID = "run-1"
LIVENESSES: list[Liveness | None] = [None, ALIVE, STALE, LOST, ENDED]

states_of_any_stream = st.one_of(
    run_events(HOSTILE).map(replay),
    st.lists(events(HOSTILE), max_size=20).map(replay),
)
#: States a reader can reach from decoded lines: their projections must serialise.
wire_states = st.one_of(
    run_events(WIRE).map(replay),
    st.lists(events(WIRE, training_id=st.just(TID)), max_size=20).map(replay),
)


def running(**fields: Any) -> RunState:
    base: dict[str, Any] = {
        "training_id": TID,
        "status": "running",
        "message": "training",
        "created_at": 100.0,
        "started_at": 110.0,
        "status_since": 110.0,
        "last_event_at": 1700000000.5,
        "last_seq": 5,
        "event_count": 5,
    }
    base.update(fields)
    return RunState(**base)


class TestToV1:
    """to_v1 gives exactly the six v1 keys in v1's formats."""

    def test_running_run(self) -> None:
        """A running run maps field by field, the timestamp as ISO UTC with Z."""
        state = running(epoch=3, total_epochs=10, metrics={"loss": 0.25, "acc": 0.9})
        v1 = to_v1(state)
        assert list(v1) == list(V1_KEYS)
        assert v1 == {
            "status": "running",
            "epoch": 3,
            "total_epochs": 10,
            "loss": 0.25,
            "message": "training",
            "timestamp": "2023-11-14T22:13:20.500Z",
        }

    def test_empty_state(self) -> None:
        """Before any event: idle, zeros, null loss and timestamp."""
        assert to_v1(RunState()) == {
            "status": "idle",
            "epoch": 0,
            "total_epochs": 0,
            "loss": None,
            "message": "",
            "timestamp": None,
        }

    def test_lost_shows_error(self) -> None:
        """A lost run is an error whose message says the training process was lost."""
        v1 = to_v1(running(epoch=2), liveness=LOST)
        assert v1["status"] == "error"
        assert v1["message"].startswith("training process lost")
        assert v1["message"] == f"{LOST_MESSAGE} (last status running)"
        assert v1["epoch"] == 2

    @pytest.mark.parametrize("status", ["done", "error", "cancelled"])
    def test_lost_does_not_rewrite_an_ended_run(self, status: str) -> None:
        """An ended run keeps its own status and message whatever the liveness."""
        v1 = to_v1(running(status=status, message="bye"), liveness=LOST)
        assert (v1["status"], v1["message"]) == (status, "bye")

    @pytest.mark.parametrize("liveness", [ALIVE, STALE, ENDED, None])
    def test_other_liveness_changes_nothing(self, liveness: Liveness | None) -> None:
        """Only lost rewrites the status."""
        assert to_v1(running(), liveness=liveness) == to_v1(running())

    @pytest.mark.parametrize(
        ("timestamp", "expected"),
        [
            (0.0, "1970-01-01T00:00:00.000Z"),
            (0.9999, "1970-01-01T00:00:00.999Z"),
            (1700000000.5, "2023-11-14T22:13:20.500Z"),
            (-5e10, "0385-07-25T07:06:40.000Z"),
            (2.5e11, "9892-03-08T12:26:40.000Z"),
            (3e11, None),
            (1e300, None),
            (float("nan"), None),
            (None, None),
        ],
    )
    def test_iso_utc(self, timestamp: float | None, expected: str | None) -> None:
        """ISO 8601 UTC with milliseconds and Z; null when not representable."""
        assert iso_utc(timestamp) == expected

    @given(states_of_any_stream, st.sampled_from(LIVENESSES))
    def test_always_six_keys_valid_types(self, state: RunState, liveness: Liveness | None) -> None:
        """For any state the snapshot has the six keys with v1's types."""
        v1 = to_v1(state, liveness)
        assert tuple(v1) == V1_KEYS
        assert v1["status"] in STATUSES
        assert type(v1["epoch"]) is int
        assert type(v1["total_epochs"]) is int
        assert v1["loss"] is None or type(v1["loss"]) is float
        assert type(v1["message"]) is str
        assert v1["timestamp"] is None or ISO_Z.fullmatch(v1["timestamp"])
        if state.last_event_at is not None and 0 <= state.last_event_at < 2.5e11:
            assert v1["timestamp"] is not None

    def test_from_events(self) -> None:
        """The snapshot of a replayed log carries its latest values."""
        state = replay(
            [
                StatusChanged(TID, 1, 10.0, "running", "go"),
                *[Progress(TID, i, 10.0 + i, epoch=i, total_epochs=5) for i in range(2, 5)],
                Metrics(TID, 5, 20.0, loss=0.125),
            ]
        )
        assert to_v1(state) == {
            "status": "running",
            "epoch": 4,
            "total_epochs": 5,
            "loss": 0.125,
            "message": "go",
            "timestamp": "1970-01-01T00:00:20.000Z",
        }


class TestProgressFraction:
    """progress_fraction combines epochs and steps, clamped to 0..1."""

    @pytest.mark.parametrize(
        ("fields", "expected"),
        [
            ({}, None),
            ({"status": "done"}, 1.0),
            ({"status": "done", "epoch": 1, "total_epochs": 10}, 1.0),
            ({"epoch": 3, "total_epochs": 10}, 0.2),
            ({"epoch": 3, "total_epochs": 10, "step": 50, "total_steps": 100}, 0.25),
            ({"step": 25, "total_steps": 100}, 0.25),
            ({"epoch": 1, "total_epochs": 4}, 0.0),
            ({"total_epochs": 4}, 0.0),
            ({"epoch": 20, "total_epochs": 10}, 1.0),
            ({"epoch": 1, "total_epochs": 2, "step": 500, "total_steps": 100}, 0.5),
            ({"step": -5, "total_steps": 100}, 0.0),
            ({"epoch": -3, "total_epochs": 10}, 0.0),
            ({"step": 5, "total_steps": 0}, None),
            ({"epoch": 2, "total_epochs": 0, "step": 5, "total_steps": 10}, 0.5),
            ({"epoch": 5}, None),
        ],
    )
    def test_cases(self, fields: dict[str, Any], expected: float | None) -> None:
        """Each combination of progress fields gives the documented fraction."""
        fraction = progress_fraction(RunState(**fields))
        if expected is None:
            assert fraction is None
        else:
            assert fraction == pytest.approx(expected)

    @given(states_of_any_stream)
    def test_within_bounds(self, state: RunState) -> None:
        """The fraction is None or between 0 and 1."""
        fraction = progress_fraction(state)
        assert fraction is None or 0.0 <= fraction <= 1.0


class TestJsonReady:
    """Every projection of a reachable state serialises with orjson."""

    @given(wire_states, wire_timestamps, st.sampled_from(LIVENESSES))
    def test_orjson_dumps(self, state: RunState, now: float, liveness: Liveness | None) -> None:
        """to_v1, to_view, to_history_record and to_metric_history give plain JSON."""
        for projection in (
            to_v1(state, liveness),
            to_view(state, now=now, liveness=liveness),
            to_view(state, now=now),
            to_history_record(state, liveness, now),
            to_history_record(state),
            to_metric_history(state),
        ):
            loaded = orjson.loads(orjson.dumps(projection))
            assert isinstance(loaded, dict)
            assert set(loaded) == set(projection)

    def test_hostile_dropped_counts(self) -> None:
        """Dropped counts that sum past 64 bits saturate, so the view still serialises."""
        huge = [Dropped(TID, seq, 1.0, 2**63 - 1) for seq in (1, 2, 3)]
        state = replay(huge)
        assert state.dropped == 2**63 - 1
        assert orjson.loads(orjson.dumps(to_view(state, now=2.0)))["stats"]["dropped"] == 2**63 - 1

    def test_view_shape(self) -> None:
        """The view has its documented sections and completes the current duration."""
        state = running(
            status_durations={"idle": 10.0},
            dropped=3,
            errors=(ErrorReported(TID, 4, 150.0, "CUDA_OOM", "oom", is_retryable=True),),
            error_count=1,
            meta=RunMeta(TID, 1, 100.0, name="n", flow_id="f", flow_run_id="fr", labels={"a": "b"}),
        )
        view = to_view(state, now=130.0, liveness=ALIVE)
        assert view["liveness"] == ALIVE
        assert view["terminal"] is False
        assert view["degraded"] is True
        assert view["timings"]["status_durations"] == {"idle": 10.0, "running": 20.0}
        assert view["timings"]["duration"] == 20.0
        assert view["last_error"]["error_code"] == "CUDA_OOM"
        assert view["flow"] == {
            "flow_id": "f",
            "flow_run_id": "fr",
            "flow_step_id": None,
            "attempt": None,
        }
        assert view["run"]["labels"] == {"a": "b"}
        assert view["stats"]["events"] == 5

    def test_view_computes_liveness(self) -> None:
        """Without a liveness the view derives it from last_event_at and now."""
        state = running(last_event_at=1000.0)
        assert to_view(state, now=1001.0)["liveness"] == ALIVE
        assert to_view(state, now=1000.0 + STALE_AFTER + 1)["liveness"] == STALE
        assert to_view(state, now=1000.0 + LOST_AFTER + 1)["liveness"] == LOST


class TestSummary:
    """to_summary is the ``pulse ls`` row, and it agrees with the v2 view."""

    def test_never_started_has_no_duration(self) -> None:
        """A run that never started (idle since created) has no duration, as in the view."""
        state = running(status="idle", started_at=None, status_since=100.0)
        row = to_summary(state, liveness=ALIVE, now=200.0)
        assert row["duration"] is None
        assert to_view(state, now=200.0, liveness=ALIVE)["timings"]["duration"] is None

    @given(wire_states, st.sampled_from([ALIVE, STALE, LOST, ENDED]))
    def test_duration_is_the_views(self, state: RunState, liveness: Liveness) -> None:
        """For any state and liveness, the row's duration is the view's."""
        now = 1_800_000_000.0
        view = to_view(state, now=now, liveness=liveness)
        assert (
            to_summary(state, liveness=liveness, now=now)["duration"]
            == (view["timings"]["duration"])
        )

    def test_id_falls_back_to_the_given_one(self) -> None:
        """A state without an id (nothing decodable yet) shows the source's id."""
        row = to_summary(RunState(), liveness=ALIVE, now=1.0, training_id="from-file")
        assert row["training_id"] == "from-file"
        assert to_summary(running(), liveness=ALIVE, now=1.0, training_id="x")["training_id"] == TID


class TestHistoryRecord:
    """to_history_record maps a run to the Flow History outcome."""

    @pytest.mark.parametrize(
        ("status", "liveness", "outcome"),
        [
            ("done", None, "success"),
            ("done", LOST, "success"),
            ("error", None, "error"),
            ("cancelled", None, "cancelled"),
            ("running", LOST, "lost"),
            ("preparing", LOST, "lost"),
            ("idle", LOST, "lost"),
            ("idle", None, "not_started"),
            ("running", None, "running"),
            ("running", STALE, "running"),
            ("cooling_down", ALIVE, "running"),
        ],
    )
    def test_outcome(self, status: str, liveness: Liveness | None, outcome: str) -> None:
        """Ended runs map by status, a lost writer gives lost, else running."""
        record = to_history_record(running(status=status), liveness)
        assert record["outcome"] == outcome
        assert record["kind"] == "train"
        assert record["status"] == status

    def test_retryable_only_for_errors(self) -> None:
        """retryable is true only for an error outcome whose last error is retryable."""
        error = ErrorReported(TID, 3, 3.0, "CUDA_OOM", "oom", is_retryable=True)
        failed = running(status="error", errors=(error,), error_count=1)
        record = to_history_record(failed)
        assert record["retryable"] is True
        assert record["error"] == {
            "error_code": "CUDA_OOM",
            "message": "oom",
            "is_retryable": True,
            "count": 1,
        }
        assert to_history_record(running(errors=(error,), error_count=1))["retryable"] is False

    def test_record_of_a_finished_run(self) -> None:
        """Duration, key metrics and flow identity come from the state."""
        state = running(
            status="done",
            finished_at=170.0,
            best_loss=0.1,
            metrics={"loss": 0.2, "samples_per_second": 900.0},
            meta=RunMeta(TID, 1, 100.0, flow_id="f", flow_step_id="s", attempt=2),
        )
        record = to_history_record(state)
        assert record["ran"] is True
        assert record["duration"] == 60.0
        assert record["key_metrics"]["final_loss"] == 0.2
        assert record["key_metrics"]["best_loss"] == 0.1
        assert record["key_metrics"]["tokens_per_second"] is None
        assert (record["flow_id"], record["flow_step_id"], record["attempt"]) == ("f", "s", 2)
        assert record["error"] is None
        assert to_history_record(RunState())["ran"] is False


class TestLiveness:
    """liveness_of: ended, lost, stale or alive."""

    def test_ended_wins(self) -> None:
        """A terminal run is ended even if its writer is gone."""
        for status in ("done", "error", "cancelled"):
            state = running(status=status)
            assert liveness_of(state, now=1e12, writer_alive=False) == ENDED

    def test_writer_gone_is_lost(self) -> None:
        """writer_alive False makes a live run lost at once."""
        assert liveness_of(running(), now=1700000000.5, writer_alive=False) == LOST

    @pytest.mark.parametrize(
        ("silence", "expected"),
        [
            (0.0, ALIVE),
            (STALE_AFTER, ALIVE),
            (STALE_AFTER + 0.1, STALE),
            (LOST_AFTER, STALE),
            (LOST_AFTER + 0.1, LOST),
            (-30.0, ALIVE),
        ],
    )
    def test_silence(self, silence: float, expected: Liveness) -> None:
        """Silence past stale_after is stale, past lost_after is lost."""
        state = running(last_event_at=1000.0)
        assert liveness_of(state, now=1000.0 + silence) == expected
        if expected != LOST:
            assert liveness_of(state, now=1000.0 + silence, writer_alive=True) == expected

    def test_custom_thresholds(self) -> None:
        """stale_after and lost_after are parameters."""
        state = running(last_event_at=0.0)
        assert liveness_of(state, now=3.0, stale_after=2.0, lost_after=10.0) == STALE
        assert liveness_of(state, now=11.0, stale_after=2.0, lost_after=10.0) == LOST

    def test_no_event_yet(self) -> None:
        """Before any event a run is alive only if its writer is known to be alive."""
        assert liveness_of(RunState(), now=0.0, writer_alive=True) == ALIVE
        assert liveness_of(RunState(), now=0.0) == STALE
        assert liveness_of(RunState(), now=0.0, writer_alive=False) == LOST

    def test_stale_then_alive_again(self) -> None:
        """A stale run is alive again after its next event."""
        state = replay([StatusChanged(TID, 1, 1000.0, "running")])
        now = 1000.0 + STALE_AFTER + 5
        assert liveness_of(state, now=now) == STALE
        state = reduce(state, Heartbeat(TID, 2, now))
        assert liveness_of(state, now=now + 1) == ALIVE

    @given(states_of_any_stream, wire_timestamps, st.sampled_from([None, True, False]))
    def test_total(self, state: RunState, now: float, writer_alive: bool | None) -> None:
        """Any state and time give one of the four answers."""
        answer = liveness_of(state, now=now, writer_alive=writer_alive)
        assert answer in (ALIVE, STALE, LOST, ENDED)
        assert (answer == ENDED) is state.is_terminal
