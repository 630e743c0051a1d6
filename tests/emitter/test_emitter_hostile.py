"""Any object into any argument: nothing escapes, and the log stays readable (issue 14.4).

Also the argument coercions the issue names (string details, numpy arrays), the
metric-name cap (13.10), text over the line limit (13.11), invalid UTF-8 (13.12)
and exact min/max (13.14), as the emitter produces them.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import Hostile, hostile_objects

from pulse_core.codec import MAX_LINE_BYTES, decode, encode
from pulse_core.emitter import TrainingRun, _hooks
from pulse_core.errors import IllegalTransition
from pulse_core.events import ErrorReported, Metrics, Progress, RunMeta, StatusChanged
from pulse_core.projections import to_history_record, to_view
from pulse_core.reducer import replay
from pulse_core.testing import FakeClock, RecordingSink

_INIT_ARGS = (
    "name",
    "flow_id",
    "flow_run_id",
    "flow_step_id",
    "attempt",
    "total_epochs",
    "total_steps",
    "heartbeat_interval",
    "labels",
    "world_size",
    "handle_signals",
)

_calls = st.one_of(
    st.tuples(st.just("progress"), st.lists(hostile_objects, max_size=4), st.just({})),
    st.tuples(
        st.just("metrics"),
        st.lists(hostile_objects, max_size=4),
        st.dictionaries(st.text(max_size=12), hostile_objects, max_size=3),
    ),
    st.tuples(st.just("status"), st.lists(hostile_objects, min_size=1, max_size=2), st.just({})),
    st.tuples(
        st.just("error"),
        st.lists(hostile_objects, min_size=2, max_size=4),
        st.fixed_dictionaries({}, optional={"fatal": hostile_objects}),
    ),
    st.tuples(st.just("cancel"), st.lists(hostile_objects, max_size=1), st.just({})),
    st.tuples(st.just("request_cancel"), st.lists(hostile_objects, max_size=1), st.just({})),
    st.tuples(
        st.just("fail_with"),
        st.lists(
            hostile_objects
            | st.sampled_from([ValueError("x"), SystemExit(Hostile()), SystemExit("1")])
            | st.builds(RuntimeError, hostile_objects),
            min_size=1,
            max_size=1,
        ),
        st.just({}),
    ),
    st.tuples(st.sampled_from(["heartbeat", "tick", "sink_stats"]), st.just([]), st.just({})),
)


def lines_of(sink: RecordingSink) -> list[bytes]:
    """Every event the sink got, encoded as the file sink would write it."""
    return [encode(event) for event in sink.events]


def assert_log_valid(sink: RecordingSink) -> None:
    """Every line fits, decodes, and the events fold."""
    lines = lines_of(sink)
    for line in lines:
        assert len(line) <= MAX_LINE_BYTES
    events = [decode(line) for line in lines]
    state = replay(events)
    to_view(state, now=2e9)
    to_history_record(state)


class TestAnyArgument:
    """Every public method of TrainingRun accepts any object for any argument."""

    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        init=st.fixed_dictionaries({}, optional=dict.fromkeys(_INIT_ARGS, hostile_objects)),
        calls=st.lists(_calls, max_size=8),
    )
    def test_nothing_escapes(
        self, init: dict[str, Any], calls: list[tuple[str, list[Any], dict[str, Any]]]
    ) -> None:
        """Hostile arguments are coerced or dropped; the log stays valid and ends terminal."""
        clock = FakeClock()
        sink = RecordingSink()
        run = TrainingRun(
            "hostile-run",
            sinks=[sink],
            clock=clock.monotonic,
            wall=clock.time,
            background=False,
            env={},
            strict=False,
            **init,
        )
        try:
            for method, args, kwargs in calls:
                getattr(run, method)(*args, **kwargs)
                clock.advance(0.3)
                run.tick()
        finally:
            run.close()
            _hooks._unwatch_signals(run)
        assert run.closed
        assert_log_valid(sink)
        statuses = [e.status for e in sink.events if isinstance(e, StatusChanged)]
        assert statuses[-1] in ("done", "error", "cancelled")

    @settings(max_examples=30, deadline=None)
    @given(st.lists(st.tuples(st.text(max_size=8), hostile_objects), max_size=6))
    def test_strict_mode_raises_only_illegal_transition(self, calls: list[tuple[str, Any]]) -> None:
        """In strict mode only IllegalTransition escapes, whatever the arguments."""
        run = TrainingRun(
            "strict-run", sinks=[RecordingSink()], background=False, env={}, strict=True
        )
        try:
            for state, message in calls:
                with contextlib.suppress(IllegalTransition):
                    run.status(state, message)
                with contextlib.suppress(IllegalTransition):
                    run.error(state, message, details=message)
        finally:
            run.close()


class TestCoercion:
    """The documented coercions of values that do not fit (issue 14.4)."""

    def test_string_details(self, make_run: Any) -> None:
        """A string ``details`` becomes ``{"text": ...}``; a list ``{"items": [...]}``."""
        sink = RecordingSink()
        run = make_run(sinks=[sink])
        run.error("BAD_INPUT", "one", details="some text", fatal=False)
        run.error("BAD_INPUT", "two", details=[1, "a"], fatal=False)
        run.error("BAD_INPUT", "three", details=42, fatal=False)
        details = [e.details for e in sink.of_type(ErrorReported)]
        assert details == [{"text": "some text"}, {"items": [1, "a"]}, {"value": 42}]

    def test_numpy_progress(self, make_run: Any) -> None:
        """A 2-element array is dropped, 0-d and 1-element arrays are scalars."""
        sink = RecordingSink()
        run = make_run(sinks=[sink])
        run.progress(epoch=1, step=1)
        run.progress(epoch=np.array([1, 2]), step=np.array(5))
        run.close()
        last = sink.of_type(Progress)[-1]
        assert (last.epoch, last.step) == (1, 5)

    def test_hostile_message_and_state(self, make_run: Any) -> None:
        """A status whose message cannot be printed is still recorded."""
        sink = RecordingSink()
        run = make_run(sinks=[sink])
        run.status("running", Hostile())
        run.status(Hostile(), "x")  # not a state: warned about, nothing sent
        assert [e.status for e in sink.of_type(StatusChanged)] == ["preparing", "running"]
        assert sink.of_type(StatusChanged)[-1].message.startswith("<unprintable")

    def test_huge_ints_dropped(self, make_run: Any) -> None:
        """Integers beyond 64 bits are not said (JSON readers cannot hold them)."""
        sink = RecordingSink()
        run = make_run(sinks=[sink], total_epochs=10**30, world_size=2**70)
        run.progress(epoch=10**40, step=3)
        run.close()
        assert sink.of_type(RunMeta)[0].total_epochs is None
        last = sink.of_type(Progress)[-1]
        assert (last.epoch, last.step) == (None, 3)
        assert_log_valid(sink)


class TestMetricNameCap:
    """Past 64 extra names, loss and the named metrics are kept; new names are counted (13.10)."""

    def test_loss_kept_past_the_cap(self, make_run: Any) -> None:
        """70 names: loss and time_per_epoch arrive; 6 names are counted as dropped."""
        sink = RecordingSink()
        run = make_run(sinks=[sink])
        run.metrics(**{f"m{i:02d}": float(i) for i in range(64)})
        run.metrics(loss=0.5, time_per_epoch=2.0, **{f"n{i}": 1.0 for i in range(6)})
        run.close()
        last = sink.of_type(Metrics)[-1]
        assert last.loss == 0.5
        assert last.time_per_epoch == 2.0
        assert len(last.extra) == 64
        assert last.names_dropped == 6
        state = replay(decode(line) for line in lines_of(sink))
        assert state.metrics["loss"] == 0.5
        assert state.metrics_dropped == 6
        assert to_view(state, now=2e9)["stats"]["metrics_dropped"] == 6

    def test_one_warning(self, make_run: Any, logs: Any) -> None:
        """Dropping names warns once, however many calls bring new names."""
        run = make_run(sinks=[RecordingSink()])
        for i in range(200):
            run.metrics(**{f"name{i}": 1.0})
        assert (
            logs.events("warning").count("pulse: too many metric names; new names are not reported")
            == 1
        )
        assert len(run._m[4]) == 64  # memory stays bounded


class TestLongText:
    """Text over the line limit is truncated, never lost (13.11)."""

    @pytest.mark.parametrize("where", ["status", "error", "details", "name", "metric"])
    def test_two_megabytes(self, where: str, make_run: Any) -> None:
        """A 2 MB string anywhere: every line fits 64 KiB and the run's end is recorded."""
        big = "é" * (1024 * 1024)
        sink = RecordingSink()
        run = make_run(sinks=[sink], name=big if where == "name" else "ok")
        run.progress(epoch=1)
        if where == "metric":
            run.metrics(**{big: 1.0})
        if where == "status":
            run.status("running", big)
        if where in ("error", "details"):
            run.error("BOOM", big if where == "error" else "short", details={"tb": big, "x": 1})
        else:
            run.close()
        lines = lines_of(sink)
        assert max(len(line) for line in lines) <= MAX_LINE_BYTES
        state = replay(decode(line) for line in lines)
        assert state.status == ("error" if where in ("error", "details") else "done")
        if where == "error":
            assert "…[truncated" in state.errors[0].message
            assert state.errors[0].error_code == "BOOM"
        if where == "details":
            assert state.errors[0].details is not None
            assert state.errors[0].details["x"] == 1
            assert "…[truncated" in state.errors[0].details["tb"]
        if where == "status":
            assert any("…[truncated" in t.message for t in state.timeline)


class TestInvalidUtf8:
    """A lone surrogate in text is written as U+FFFD; the event is never dropped (13.12)."""

    def test_surrogate_status(self, make_run: Any) -> None:
        """A status message from a non-UTF-8 file name: the run still ends done."""
        sink = RecordingSink()
        run = make_run(sinks=[sink], name="run \udcff")
        run.progress(epoch=1)
        run.status("running", "reading /data/\udce9t\udce9.csv")
        run.error("WARN_ONLY", "bad \ud800", details={"path\udc80": "\udc81"}, fatal=False)
        run.close()
        state = replay(decode(line) for line in lines_of(sink))
        assert state.status == "done"
        assert "reading /data/\ufffdt\ufffd.csv" in [t.message for t in state.timeline]
        assert state.errors[0].message == "bad \ufffd"
        assert state.meta is not None
        assert state.meta.name == "run \ufffd"


class TestExactMinMax:
    """min/max of every call, not only the forwarded samples (13.14)."""

    def test_best_loss_between_samples(self, make_run: Any, clock: FakeClock) -> None:
        """A low loss coalesced away between two forwards is still the best loss."""
        sink = RecordingSink(interval=1.0)
        run = make_run(sinks=[sink])
        run.metrics(loss=0.9, acc=0.1)  # forwarded: the sink is due
        run.metrics(loss=0.5955, acc=0.95)  # coalesced: never forwarded as a sample
        run.metrics(loss=0.6117, acc=0.5)
        clock.advance(5.0)
        run.tick()
        run.close()
        sent = [e.loss for e in sink.of_type(Metrics)]
        assert 0.5955 not in sent
        state = replay(decode(line) for line in lines_of(sink))
        assert state.best_loss == 0.5955
        assert state.metrics_max["loss"] == 0.9
        # Extra names are compared when an event is built: exact for every
        # value that was forwarded or still current at a forward.
        assert state.metrics_min["acc"] == 0.1
        assert state.metrics_max["acc"] == 0.5
        assert to_history_record(state)["key_metrics"]["best_loss"] == 0.5955

    def test_numpy_values_compared_when_built(self, make_run: Any) -> None:
        """numpy scalars count at least when forwarded; NaN never becomes a bound."""
        sink = RecordingSink()
        run = make_run(sinks=[sink])
        run.metrics(loss=np.float32(0.25))
        run.metrics(loss=float("nan"))
        run.close()
        last = sink.of_type(Metrics)[-1]
        assert last.min["loss"] == 0.25
        assert not math.isnan(last.max["loss"])


_TRACK_CASES = [
    pytest.param({"total": Hostile()}, id="total-hostile"),
    pytest.param({"total": "3"}, id="total-str"),
    pytest.param({"total": np.array([1, 2])}, id="total-array"),
    pytest.param({"desc": Hostile()}, id="desc-hostile"),
    pytest.param({"unit": Hostile()}, id="unit-hostile"),
    pytest.param({"unit": [1]}, id="unit-list"),
    pytest.param({"run": Hostile()}, id="run-hostile"),
    pytest.param({"run": 5}, id="run-int"),
    pytest.param({"interval": Hostile()}, id="interval-hostile"),
    pytest.param({"interval": "x"}, id="interval-str"),
    pytest.param({"interval": float("nan")}, id="interval-nan"),
]


class TestTrackArguments:
    """``track()`` with any argument still iterates and reports (issue 14.4)."""

    @pytest.mark.parametrize("kwargs", _TRACK_CASES)
    def test_loop_runs(self, kwargs: dict[str, Any], make_run: Any) -> None:
        """The loop body runs for every item and nothing escapes."""
        from pulse_transports.integrations.tracking import track

        kwargs = {"run": make_run(sinks=[RecordingSink()]), **kwargs}
        seen = [item for item in track(range(3), **kwargs)]
        assert seen == [0, 1, 2]


class TestInProcessText:
    """In-process sinks see the same bounded, valid text the log holds."""

    def test_status_and_error_messages_bounded(self, make_run: Any) -> None:
        """A 2 MB message with a lone surrogate reaches a sink as ≤ 16 KiB of valid text."""
        sink = RecordingSink()
        run = make_run(sinks=[sink])
        run.status("running", "\udc80" + "m" * 2_000_000)
        run.error("BOOM", "e" * 2_000_000)
        for event in sink.of_type(StatusChanged)[1:] + sink.of_type(ErrorReported):
            data = event.message.encode("utf-8")  # valid: would raise on a surrogate
            assert len(data) <= 16 * 1024
            assert "…[truncated" in event.message
