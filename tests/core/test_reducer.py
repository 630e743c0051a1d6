"""The total reducer: properties over arbitrary streams, and the rules by example."""

from __future__ import annotations

import copy
from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    HOSTILE,
    REALISTIC,
    WIRE,
    events,
    final_status,
    run_events,
    training_ids,
    well_formed_runs,
)

from pulse_core.events import (
    TERMINAL_STATUSES,
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
from pulse_core.projections import to_history_record, to_view
from pulse_core.reducer import INITIAL_STATE, Folder, reduce, replay, replay_runs
from pulse_core.state import (
    HEAD_KEPT,
    MAX_ANOMALIES,
    MAX_ERRORS,
    MAX_GAPS,
    MAX_METRIC_NAMES,
    MAX_SERIES,
    MAX_TIMELINE,
    MAX_WINDOWS,
    PROTOCOL_METRICS,
    RunState,
    Series,
)

TID = "run-1"


def status(seq: int, target: str, ts: float | None = None, message: str = "") -> StatusChanged:
    return StatusChanged(TID, seq, float(seq) if ts is None else ts, target, message)


def progress(seq: int, **fields: Any) -> Progress:
    return Progress(TID, seq, float(seq), **fields)


def metrics(seq: int, ts: float | None = None, **fields: Any) -> Metrics:
    return Metrics(TID, seq, float(seq) if ts is None else ts, **fields)


def kinds(state: RunState) -> list[str]:
    return [a.kind for a in state.anomalies]


def assert_series_invariants(series: Series) -> None:
    """Windows tile the sample index: contiguous, full but the last, consistent."""
    assert len(series.windows) <= MAX_WINDOWS
    assert sum(w[1] for w in series.windows) == series.count
    expected_x = 0
    for i, (x, n, first, last, lo, hi, t0, t1) in enumerate(series.windows):
        assert x == expected_x
        assert x % series.width == 0
        if i < len(series.windows) - 1:
            assert n == series.width
        else:
            assert 1 <= n <= series.width
        assert lo <= first <= hi
        assert lo <= last <= hi
        assert t0 <= t1  # every caller feeds increasing timestamps
        expected_x += n


#: State fields that only bookkeeping may change once a run has ended.
CONTENT_FIELDS = (
    "status",
    "message",
    "meta",
    "epoch",
    "total_epochs",
    "step",
    "total_steps",
    "metrics",
    "best_loss",
    "history",
    "errors",
    "error_count",
    "timeline",
    "timeline_count",
    "status_durations",
    "created_at",
    "started_at",
    "finished_at",
    "status_since",
    "unknown_events",
)


def content(state: RunState) -> dict[str, Any]:
    return {name: getattr(state, name) for name in CONTENT_FIELDS}


class TestTotality:
    """Any events in any order fold into a state without raising."""

    @given(st.lists(events(HOSTILE), max_size=30))
    def test_arbitrary_events(self, stream: list[Event]) -> None:
        """Hostile events of any runs, seqs and types give a RunState."""
        state = replay(stream)
        assert isinstance(state, RunState)
        assert state.status in {"idle", "preparing", "running", "cooling_down", *TERMINAL_STATUSES}
        folded = INITIAL_STATE
        for event in stream:
            folded = reduce(folded, event)
        assert folded == state
        runs = replay_runs(stream)
        assert set(runs) == {e.training_id for e in stream}

    @given(run_events(HOSTILE))
    def test_hostile_runs(self, stream: list[Event]) -> None:
        """One run with hostile values keeps its counters consistent."""
        state = replay(stream)
        assert state.event_count + state.duplicates <= len(stream)
        assert state.event_count <= state.last_seq
        assert 0 <= state.missing <= state.last_seq - state.event_count
        assert state.dropped >= 0
        if stream:
            assert state.training_id == stream[0].training_id
            assert state.last_seq == max(e.seq for e in stream)


class TestDeterminism:
    """The same events always give the same state, however they are folded."""

    @given(run_events(HOSTILE))
    def test_replay_twice(self, stream: list[Event]) -> None:
        """Replaying one log twice gives equal states."""
        assert replay(stream) == replay(list(stream))

    @given(run_events(REALISTIC))
    def test_reduce_equals_replay(self, stream: list[Event]) -> None:
        """Folding with reduce one event at a time equals replay."""
        state = INITIAL_STATE
        for event in stream:
            state = reduce(state, event)
        assert state == replay(stream)

    @given(run_events(HOSTILE), st.data())
    def test_folder_equals_replay(self, stream: list[Event], data: st.DataObject) -> None:
        """A Folder read at any point equals replay of the prefix applied so far."""
        folder = Folder()
        for index, event in enumerate(stream, start=1):
            folder.apply(event)
            if data.draw(st.booleans()):
                assert folder.state == replay(stream[:index])
        assert folder.state == replay(stream)
        assert folder.last_seq == replay(stream).last_seq

    def test_reduce_never_mutates(self) -> None:
        """reduce returns a new state and leaves its input as it was."""
        before = replay([status(1, "running"), metrics(2, loss=1.0)])
        snapshot = copy.deepcopy(before)
        after = reduce(before, metrics(3, loss=0.5, extra={"acc": 0.9}))
        assert before == snapshot
        assert after.metrics == {"loss": 0.5, "acc": 0.9}
        assert before.metrics == {"loss": 1.0}


class TestCheckpoint:
    """A checkpoint plus the tail equals the full replay."""

    @given(run_events(HOSTILE), st.data())
    def test_split_anywhere(self, stream: list[Event], data: st.DataObject) -> None:
        """replay(a + b) == replay(b, start=replay(a)) for any split."""
        cut = data.draw(st.integers(0, len(stream)))
        head, tail = stream[:cut], stream[cut:]
        assert replay(tail, replay(head)) == replay(stream)

    @given(st.lists(events(HOSTILE), max_size=20), st.lists(events(HOSTILE), max_size=20))
    def test_split_arbitrary_events(self, head: list[Event], tail: list[Event]) -> None:
        """The checkpoint rule holds for events of any runs too."""
        assert replay(tail, replay(head)) == replay(head + tail)

    @given(st.integers(1, 4000), st.data())
    def test_split_inside_long_history(self, samples: int, data: st.DataObject) -> None:
        """Downsampled metric windows do not depend on where the fold was cut."""
        long = [metrics(seq, loss=float((seq * 7919) % 101)) for seq in range(1, samples + 1)]
        cut = data.draw(st.integers(0, samples))
        assert replay(long[cut:], replay(long[:cut])) == replay(long)


class TestIdempotence:
    """Delivering an event again changes nothing but the duplicates counter."""

    @given(run_events(REALISTIC), st.data())
    def test_duplicated_events(self, stream: list[Event], data: st.DataObject) -> None:
        """Copies inserted anywhere after their original are counted, not applied."""
        copies = data.draw(st.lists(st.integers(0, max(0, len(stream) - 1)), max_size=10))
        noisy = list(stream)
        for index in sorted(copies, reverse=True) if stream else []:
            where = data.draw(st.integers(index + 1, len(stream)))
            noisy.insert(where, stream[index])
        base, dup = replay(stream), replay(noisy)
        inserted = len(noisy) - len(stream)
        assert dup.duplicates == base.duplicates + inserted
        assert attrs.evolve(dup, duplicates=base.duplicates) == base

    @given(well_formed_runs())
    def test_whole_log_twice(self, run: list[Event]) -> None:
        """Replaying a log after itself (a re-sent log) leaves the state as it was."""
        once, twice = replay(run), replay(run + run)
        assert twice.duplicates == len(run)
        assert attrs.evolve(twice, duplicates=0) == once


class TestTerminal:
    """done, error and cancelled are absorbing."""

    @given(well_formed_runs(), run_events(REALISTIC, training_id=TID))
    def test_nothing_leaves_a_terminal_state(self, run: list[Event], tail: list[Event]) -> None:
        """After a terminal status only bookkeeping changes, never the content."""
        run = [attrs.evolve(e, training_id=TID) for e in run]
        ended = replay(run)
        if not ended.is_terminal:
            ended = reduce(ended, status(ended.last_seq + 1, "cancelled", 2.1e9))
        later = [attrs.evolve(e, seq=e.seq + ended.last_seq) for e in tail]
        after = replay(later, ended)
        assert after.status == ended.status
        assert content(after) == content(ended)
        last, refused = ended.last_seq, 0
        for event in later:
            if event.seq > last:
                last = event.seq
                refused += not isinstance(event, Heartbeat | Dropped)
        added = after.anomaly_count - ended.anomaly_count
        assert added >= refused
        new_kinds = kinds(after)[len(after.anomalies) - min(added, len(after.anomalies)) :]
        assert set(new_kinds) <= {"after_terminal", "late_event"}

    def test_dropped_after_terminal_is_counted(self) -> None:
        """A sink's late report of dropped events still counts, without an anomaly."""
        ended = replay([status(1, "running"), status(2, "done")])
        after = reduce(ended, Dropped(TID, 3, 50.0, count=4))
        assert after.dropped == 4
        assert after.anomalies == ()
        assert after.status == "done"

    def test_heartbeat_after_terminal_is_not_an_anomaly(self) -> None:
        """A heartbeat after the end updates last_event_at only."""
        ended = replay([status(1, "running"), status(2, "done")])
        after = reduce(ended, Heartbeat(TID, 3, 50.0))
        assert after.anomalies == ()
        assert after.last_event_at == 50.0
        assert content(after) == content(ended)


class TestBoundedMemory:
    """However many events are folded, the state stays bounded."""

    @given(
        st.lists(
            st.tuples(st.sampled_from([f"m{i}" for i in range(80)]), st.floats(-1e6, 1e6)),
            max_size=200,
        ),
        st.integers(0, 3000),
    )
    def test_metric_history(self, extras: list[tuple[str, float]], ramp: int) -> None:
        """Series, names and windows never exceed their limits."""
        stream: list[Event] = [metrics(i, loss=float(i % 13)) for i in range(1, ramp + 1)]
        stream += [
            metrics(ramp + i, extra={name: value}) for i, (name, value) in enumerate(extras, 1)
        ]
        state = replay(stream)
        # The protocol's four named metrics are kept on top of the extra-name caps.
        assert len(state.history) <= MAX_SERIES + len(PROTOCOL_METRICS)
        assert len(state.metrics) <= MAX_METRIC_NAMES + len(PROTOCOL_METRICS)
        assert set(state.metrics_min) == set(state.metrics_max) == set(state.metrics)
        for series in state.history.values():
            assert_series_invariants(series)
        if ramp:
            assert state.history["loss"].count == ramp

    def test_many_samples(self) -> None:
        """200,000 samples of one metric keep at most MAX_WINDOWS windows."""
        folder = Folder()
        for seq in range(1, 200_001):
            folder.apply(Metrics(TID, seq, float(seq), loss=float(seq % 97)))
        series = folder.state.history["loss"]
        assert series.count == 200_000
        assert MAX_WINDOWS // 2 <= len(series.windows) <= MAX_WINDOWS
        assert_series_invariants(series)

    @given(run_events(HOSTILE, max_size=200))
    def test_lists_bounded(self, stream: list[Event]) -> None:
        """errors, timeline, anomalies and gaps stay within their limits."""
        state = replay(stream)
        assert len(state.errors) <= MAX_ERRORS
        assert len(state.timeline) <= MAX_TIMELINE
        assert len(state.anomalies) <= MAX_ANOMALIES
        assert len(state.gaps) <= MAX_GAPS
        assert state.anomaly_count >= len(state.anomalies)
        assert state.error_count >= len(state.errors)

    def test_many_runs_of_many_kinds(self) -> None:
        """Thousands of errors, restatements and illegal moves stay bounded."""
        stream: list[Event] = [status(1, "running")]
        seq = 1
        for i in range(3000):
            seq += 1
            stream.append(ErrorReported(TID, seq, float(seq), "CUDA_OOM", f"e{i}"))
            seq += 1
            stream.append(status(seq, "running", message=f"note {i}"))
            seq += 1
            stream.append(status(seq, "idle"))
            seq += 2  # a gap of two
        state = replay(stream)
        assert state.error_count == 3000
        assert len(state.errors) == MAX_ERRORS
        assert state.timeline_count == 3001
        assert len(state.timeline) == MAX_TIMELINE
        assert state.anomaly_count == 3000
        assert len(state.anomalies) == MAX_ANOMALIES
        assert len(state.gaps) == MAX_GAPS
        assert state.missing == 2 * 2999


class TestSeq:
    """seq orders events: duplicates, gaps and late events by example."""

    def test_duplicate_ignored_and_counted(self) -> None:
        """A second event with an applied seq is counted and not applied."""
        state = replay([progress(1, epoch=1), progress(2, epoch=2), progress(2, epoch=99)])
        assert state.epoch == 2
        assert state.duplicates == 1
        assert state.event_count == 2
        assert state.anomalies == ()

    def test_gap_recorded(self) -> None:
        """A jump in seq records the missing range and count."""
        state = replay([progress(1), progress(5), progress(6), progress(10)])
        assert state.gaps == ((2, 4), (7, 9))
        assert state.missing == 6
        assert state.last_seq == 10

    def test_late_event(self) -> None:
        """An event filling a gap is a late_event anomaly, not applied, the gap split."""
        state = replay([progress(1, epoch=1), progress(5, epoch=5), progress(3, epoch=3)])
        assert state.epoch == 5
        assert state.gaps == ((2, 2), (4, 4))
        assert state.missing == 2
        assert kinds(state) == ["late_event"]
        assert state.anomalies[0].seq == 3
        assert state.duplicates == 0
        again = reduce(state, progress(3, epoch=3))
        assert again.duplicates == 1
        assert again.missing == 2

    def test_bad_seq(self) -> None:
        """A seq below 1 is a bad_seq anomaly."""
        state = replay([progress(0, epoch=1), progress(-5, epoch=2)])
        assert kinds(state) == ["bad_seq", "bad_seq"]
        assert state.epoch is None
        assert state.event_count == 0

    def test_first_seq_above_one_is_a_gap(self) -> None:
        """A reader that starts mid-log records the seqs before as missing."""
        state = replay([progress(4, epoch=2)])
        assert state.gaps == ((1, 3),)
        assert state.missing == 3


class TestLifecycleRules:
    """Status events move the run only along the lifecycle table."""

    @given(well_formed_runs())
    def test_well_formed_run_has_no_anomalies(self, run: list[Event]) -> None:
        """A legal run folds to its last status without any anomaly."""
        state = replay(run)
        assert state.status == final_status(run)
        assert state.anomalies == ()
        assert state.duplicates == 0
        assert state.missing == 0
        assert state.event_count == len(run)

    def test_illegal_transition_recorded_not_applied(self) -> None:
        """idle -> done is illegal: recorded as an anomaly, status unchanged."""
        state = replay([status(1, "done", message="finished?")])
        assert state.status == "idle"
        assert state.message == ""
        assert kinds(state) == ["illegal_transition"]
        assert state.anomalies[0].detail == "idle -> done"
        assert state.timeline == ()
        assert state.finished_at is None

    def test_unknown_status(self) -> None:
        """A status name outside the seven is an unknown_status anomaly."""
        state = replay([status(1, "paused")])
        assert state.status == "idle"
        assert kinds(state) == ["unknown_status"]

    def test_after_terminal(self) -> None:
        """Anything but a heartbeat after the end is an after_terminal anomaly."""
        state = replay(
            [
                status(1, "running"),
                status(2, "error", message="oom"),
                status(3, "running"),
                progress(4, epoch=7),
                metrics(5, loss=0.1),
            ]
        )
        assert state.status == "error"
        assert state.message == "oom"
        assert state.epoch is None
        assert state.metrics == {}
        assert kinds(state) == ["after_terminal"] * 3
        assert state.last_seq == 5

    def test_foreign_event(self) -> None:
        """An event of another training_id is recorded and not applied."""
        state = replay([status(1, "running"), Progress("other", 2, 2.0, epoch=3)])
        assert state.training_id == TID
        assert state.epoch is None
        assert kinds(state) == ["foreign_event"]
        assert state.last_seq == 1

    def test_unknown_events_counted(self) -> None:
        """Unknown event types are counted and otherwise skipped."""
        state = replay(
            [
                status(1, "running"),
                UnknownEvent(TID, 2, 2.0, "gpu", {"util": 0.9}),
                UnknownEvent(TID, 3, 3.0, "gpu", {}),
            ]
        )
        assert state.unknown_events == 2
        assert state.status == "running"
        assert state.anomalies == ()
        assert state.last_seq == 3

    def test_restatement_updates_message(self) -> None:
        """Restating the current status keeps it and replaces the message."""
        state = replay([status(1, "running", message="a"), status(2, "running", message="b")])
        assert state.status == "running"
        assert state.message == "b"
        assert state.timeline_count == 2

    def test_status_durations(self) -> None:
        """Time spent in each left status is summed; started and finished recorded."""
        state = replay(
            [
                RunMeta(TID, 1, 100.0),
                status(2, "preparing", 110.0),
                status(3, "running", 130.0),
                status(4, "running", 150.0, message="still"),
                status(5, "cooling_down", 200.0),
                status(6, "done", 205.0),
            ]
        )
        assert state.status_durations == {
            "idle": 10.0,
            "preparing": 20.0,
            "running": 70.0,
            "cooling_down": 5.0,
        }
        assert state.created_at == 100.0
        assert state.started_at == 110.0
        assert state.finished_at == 205.0
        assert state.status_since == 205.0

    def test_clock_going_back_spends_no_time(self) -> None:
        """A status event stamped before status_since adds zero, never negative."""
        state = replay([status(1, "running", 100.0), status(2, "done", 90.0)])
        assert state.status_durations == {"idle": 0.0, "running": 0.0}
        assert state.last_event_at == 100.0


class TestProgressAndMetrics:
    """Progress fields and metrics: the latest value wins, best loss is the minimum."""

    def test_progress_latest_wins_fields_independent(self) -> None:
        """A field left out keeps its previous value."""
        state = replay(
            [
                progress(1, epoch=1, total_epochs=10),
                progress(2, step=5, total_steps=50),
                progress(3, epoch=2),
            ]
        )
        assert (state.epoch, state.total_epochs, state.step, state.total_steps) == (2, 10, 5, 50)

    def test_meta_fills_totals_only_when_unknown(self) -> None:
        """RunMeta totals do not override totals progress already said."""
        state = replay(
            [progress(1, total_epochs=5), RunMeta(TID, 2, 2.0, total_epochs=9, total_steps=100)]
        )
        assert state.total_epochs == 5
        assert state.total_steps == 100
        assert state.meta is not None
        assert state.meta.total_epochs == 9

    def test_best_loss(self) -> None:
        """best_loss is the smallest loss seen; NaN is ignored."""
        state = replay(
            [
                metrics(1, loss=0.9),
                metrics(2, loss=0.3),
                metrics(3, loss=float("nan")),
                metrics(4, loss=0.5),
            ]
        )
        assert state.best_loss == 0.3
        assert state.metrics["loss"] == 0.5
        assert state.history["loss"].count == 3

    def test_metrics_merge_extra(self) -> None:
        """Named metrics and extra values land in one latest-values map."""
        state = replay(
            [
                metrics(1, loss=1.0, samples_per_second=300.0, extra={"acc": 0.5}),
                metrics(2, extra={"acc": 0.7, "lr": 1e-3}),
            ]
        )
        assert state.metrics == {"loss": 1.0, "samples_per_second": 300.0, "acc": 0.7, "lr": 1e-3}

    def test_too_many_metric_names(self) -> None:
        """Names past MAX_METRIC_NAMES are not kept and are recorded once each."""
        extra = {f"m{i}": float(i) for i in range(MAX_METRIC_NAMES + 5)}
        state = replay([metrics(1, extra=extra)])
        assert len(state.metrics) == MAX_METRIC_NAMES
        assert kinds(state) == ["too_many_metrics"] * 5
        assert len(state.history) == MAX_SERIES

    def test_dropped_sums_non_negative(self) -> None:
        """Dropped counts add up; a negative count adds nothing."""
        state = replay([Dropped(TID, 1, 1.0, 5), Dropped(TID, 2, 2.0, -7), Dropped(TID, 3, 3.0, 2)])
        assert state.dropped == 7

    def test_errors_kept_in_order(self) -> None:
        """ErrorReported events are kept and counted, without ending the run."""
        state = replay(
            [status(1, "running"), ErrorReported(TID, 2, 2.0, "CUDA_OOM", "oom", is_retryable=True)]
        )
        assert state.status == "running"
        assert state.error_count == 1
        assert state.errors[0].error_code == "CUDA_OOM"


class TestMetricHistory:
    """Windows keep first, last, min, max and count; a spike is never lost."""

    @staticmethod
    def curve(values: list[float]) -> Series:
        return replay([metrics(i, loss=v) for i, v in enumerate(values, 1)]).history["loss"]

    @given(st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=100), st.integers(1, 40))
    def test_summary_survives_downsampling(self, chunk: list[float], repeat: int) -> None:
        """first, last, min, max and count of the whole series are exact."""
        values = [v * (1 + i % 3) for i in range(repeat) for v in chunk]
        series = self.curve(values)
        assert_series_invariants(series)
        assert series.count == len(values)
        assert series.windows[0][2] == values[0]
        assert series.windows[-1][3] == values[-1]
        assert min(w[4] for w in series.windows) == min(values)
        assert max(w[5] for w in series.windows) == max(values)

    @given(st.integers(0, 10_000), st.integers(1, 10_000))
    def test_spike_not_lost(self, where: int, length: int) -> None:
        """One sample far above the rest is some window's max however long the series."""
        where = where % length
        values = [1.0] * length
        values[where] = 1e6
        series = self.curve(values)
        assert len(series.windows) <= MAX_WINDOWS
        holders = [w for w in series.windows if w[0] <= where < w[0] + w[1]]
        assert len(holders) == 1
        assert holders[0][5] == 1e6

    def test_window_contents(self) -> None:
        """Each window's numbers are those of its own samples."""
        n = MAX_WINDOWS * 4 + 3
        values = [float((i * 37) % 11) for i in range(n)]
        series = self.curve(values)
        assert series.width == 8  # merged at 128, 256 and 512 samples
        for x, count, first, last, lo, hi, t0, t1 in series.windows:
            chunk = values[x : x + count]
            assert (first, last, lo, hi) == (chunk[0], chunk[-1], min(chunk), max(chunk))
            assert (t0, t1) == (float(x + 1), float(x + count))

    def test_same_log_same_curve(self) -> None:
        """The same log always gives the same windows, in one fold or many."""
        values = [float((i * 7919) % 1000) / 10 for i in range(5000)]
        one = self.curve(values)
        assert self.curve(values) == one
        stream = [metrics(i, loss=v) for i, v in enumerate(values, 1)]
        state = INITIAL_STATE
        for start in range(0, len(stream), 333):
            state = replay(stream[start : start + 333], state)
        assert state.history["loss"] == one


class TestBoundedLists:
    """Bounded lists keep the first HEAD_KEPT entries and the newest."""

    def test_errors(self) -> None:
        """Of 100 errors the first 8 and the newest 24 are kept."""
        stream = [ErrorReported(TID, i, float(i), "X", f"e{i}") for i in range(1, 101)]
        state = replay(stream)
        kept = [e.seq for e in state.errors]
        assert kept == list(range(1, HEAD_KEPT + 1)) + list(
            range(101 - (MAX_ERRORS - HEAD_KEPT), 101)
        )
        assert state.error_count == 100

    def test_timeline(self) -> None:
        """Of 200 restatements the first 8 and the newest 56 are kept."""
        state = replay([status(i, "running", message=str(i)) for i in range(1, 201)])
        kept = [t.seq for t in state.timeline]
        assert kept == list(range(1, HEAD_KEPT + 1)) + list(
            range(201 - (MAX_TIMELINE - HEAD_KEPT), 201)
        )

    def test_anomalies(self) -> None:
        """Of 100 illegal transitions the first 8 and the newest 24 are kept."""
        state = replay([status(i, "done") for i in range(1, 101)])
        kept = [a.seq for a in state.anomalies]
        assert kept == list(range(1, HEAD_KEPT + 1)) + list(
            range(101 - (MAX_ANOMALIES - HEAD_KEPT), 101)
        )
        assert state.anomaly_count == 100


def interleave(data: st.DataObject, streams: list[list[Event]]) -> list[Event]:
    """Merge streams in a drawn order, keeping each stream's own order."""
    cursors = [0] * len(streams)
    merged: list[Event] = []
    while True:
        open_ = [i for i, s in enumerate(streams) if cursors[i] < len(s)]
        if not open_:
            return merged
        pick = data.draw(st.sampled_from(open_))
        merged.append(streams[pick][cursors[pick]])
        cursors[pick] += 1


class TestReplayRuns:
    """replay_runs folds mixed streams per training_id."""

    @given(st.lists(training_ids, min_size=1, max_size=4, unique=True), st.data())
    def test_interleaved_equals_per_run(self, tids: list[str], data: st.DataObject) -> None:
        """Interleaving runs changes nothing: each run's state is its own replay."""
        streams = [data.draw(run_events(WIRE, training_id=tid, max_size=15)) for tid in tids]
        merged = interleave(data, streams)
        runs = replay_runs(merged)
        expected = {tid: replay(s) for tid, s in zip(tids, streams, strict=True) if s}
        assert runs == expected

    @given(
        st.lists(events(REALISTIC, training_id=st.sampled_from(["a", "b", "c"])), max_size=40),
        st.data(),
    )
    def test_checkpoint(self, stream: list[Event], data: st.DataObject) -> None:
        """replay_runs continues from checkpoint states and keeps untouched runs."""
        cut = data.draw(st.integers(0, len(stream)))
        checkpoint = replay_runs(stream[:cut])
        assert replay_runs(stream[cut:], checkpoint) == replay_runs(stream)
        assert replay_runs([], checkpoint) == checkpoint


class TestMetricCaps:
    """Past the metric-name caps the protocol's metrics are still kept (issue 13.10)."""

    def test_loss_kept_after_many_names(self) -> None:
        """With 64 extra names already kept, loss and the named metrics still apply."""
        many = {f"m{i}": float(i) for i in range(MAX_METRIC_NAMES)}
        state = replay(
            [
                metrics(1, extra=many),
                metrics(2, loss=0.5, time_per_epoch=3.0, extra={"val_loss": 0.7}),
            ]
        )
        assert state.metrics["loss"] == 0.5
        assert state.metrics["time_per_epoch"] == 3.0
        assert "val_loss" not in state.metrics
        assert state.best_loss == 0.5
        assert "loss" in state.history
        assert kinds(state) == ["too_many_metrics"]

    def test_loss_history_after_many_series(self) -> None:
        """Sixteen extra series first do not keep loss from getting its history."""
        first = {f"m{i}": 1.0 for i in range(MAX_SERIES)}
        state = replay([metrics(1, extra=first), metrics(2, loss=0.25)])
        assert state.history["loss"].count == 1
        assert len(state.history) == MAX_SERIES + 1

    def test_names_dropped_counted(self) -> None:
        """The writer's count of names left out is the state's metrics_dropped (never falls)."""
        state = replay(
            [
                metrics(1, loss=1.0, names_dropped=3),
                metrics(2, loss=1.0, names_dropped=7),
                metrics(3, loss=1.0, names_dropped=2),
            ]
        )
        assert state.metrics_dropped == 7
        assert to_view(state, now=10.0)["stats"]["metrics_dropped"] == 7


class TestExactMinMax:
    """A writer's exact min/max beat the sampled values (issue 13.14)."""

    def test_wire_min_max_in_state_view_and_record(self) -> None:
        """best_loss is the writer's exact min, not the lowest forwarded sample."""
        state = replay(
            [
                metrics(1, loss=0.7, min={"loss": 0.7}, max={"loss": 0.7}),
                metrics(2, loss=0.6117, min={"loss": 0.5955}, max={"loss": 0.9}),
            ]
        )
        assert state.best_loss == 0.5955
        assert state.metrics_min == {"loss": 0.5955}
        assert state.metrics_max == {"loss": 0.9}
        view = to_view(state, now=10.0)
        assert view["best_loss"] == 0.5955
        assert view["metrics_min"] == {"loss": 0.5955}
        assert view["metrics_max"] == {"loss": 0.9}
        assert to_history_record(state)["key_metrics"]["best_loss"] == 0.5955

    def test_without_wire_field_samples_count(self) -> None:
        """Readers of writers that send no min/max get the min/max of the samples."""
        state = replay(
            [metrics(1, loss=0.5, extra={"acc": 0.1}), metrics(2, loss=0.8, extra={"acc": 0.9})]
        )
        assert state.metrics_min == {"loss": 0.5, "acc": 0.1}
        assert state.metrics_max == {"loss": 0.8, "acc": 0.9}
        assert state.best_loss == 0.5

    def test_min_max_of_unkept_names_ignored(self) -> None:
        """min/max of a name the state does not keep add nothing (bounded state)."""
        state = replay([metrics(1, loss=0.5, min={"loss": 0.4, "ghost": -1.0})])
        assert state.metrics_min == {"loss": 0.4}
        assert state.metrics_max == {"loss": 0.5}
