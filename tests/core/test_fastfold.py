"""The fast fold over decoded lines: the same state as decoding and reducing every line."""

from __future__ import annotations

import json
from typing import Any

import attrs
import orjson
from foldcheck import check_batches_cut_short, check_state_read_mid_batch, slow_fold
from hypothesis import given
from hypothesis import strategies as st
from strategies import HOSTILE, REALISTIC, WIRE, events, run_events, well_formed_runs

from pulse_core._fastfold import LineFolder, fold_lines
from pulse_core._series import SeriesAcc
from pulse_core.codec import decode, encode, to_dict
from pulse_core.errors import DecodeError
from pulse_core.events import Event, Heartbeat, Metrics, Progress, RunMeta, StatusChanged
from pulse_core.reducer import INITIAL_STATE, replay
from pulse_core.state import RunState, Series

TID = "fast-run"


def line_of(event: Event) -> bytes:
    """The event's log line (without newline); json's where the codec cannot write it."""
    try:
        return encode(event).rstrip(b"\n")
    except TypeError:  # a hostile integer beyond 64 bits in the envelope (v)
        return json.dumps(to_dict(event), allow_nan=True).encode()


#: Values a field of a line may be given instead of its own: wrong JSON types,
#: integers where floats go (and the reverse), huge integers, NaN/inf literals.
ODD_VALUES = st.sampled_from(
    [
        None,
        True,
        False,
        "",
        "1.5",
        [],
        [1.0],
        {},
        {"a": 1},
        {"a": "x"},
        {"a": None},
        {"a": 1.5, "b": 2},
        0,
        -1,
        1,
        2,
        3,
        2**63,
        2**64 + 1,
        10**30,
        -(10**30),
        1.0,
        2.0,
        -0.0,
        1e308,
        float("nan"),
        float("inf"),
    ]
)
FIELDS = st.sampled_from(
    [
        "type",
        "v",
        "training_id",
        "seq",
        "timestamp",
        "epoch",
        "total_epochs",
        "step",
        "total_steps",
        "loss",
        "time_per_epoch",
        "samples_per_second",
        "tokens_per_second",
        "extra",
        "min",
        "max",
        "names_dropped",
        "format",
        "state",
        "lines",
        "unknown_field",
    ]
)


@st.composite
def mutated_line(draw: Any, event: Event) -> bytes:
    """The event's wire object with some fields removed or replaced by odd values."""
    wire = to_dict(event)
    for _ in range(draw(st.integers(0, 2))):
        field = draw(FIELDS)
        if draw(st.booleans()):
            wire.pop(field, None)
        else:
            wire[field] = draw(ODD_VALUES)
    # json writes what orjson cannot (huge ints, NaN): lines the decoder must refuse.
    return json.dumps(wire, allow_nan=True).encode()


@st.composite
def log_lines(draw: Any, stream: list[Event]) -> list[bytes]:
    """The encoded lines of *stream*, some mutated, with blank and garbage lines between."""
    out: list[bytes] = []
    for event in stream:
        roll = draw(st.integers(0, 9))
        if roll == 0:
            out.append(draw(mutated_line(event)))
        elif roll == 1:
            out.append(draw(st.sampled_from([b"", b"  ", b"garbage", b"[]", b"null", b"{}"])))
            out.append(line_of(event))
        else:
            out.append(line_of(event))
    return out


def checkpoint_line(state: RunState, seq: int, fmt: Any = "1") -> bytes:
    wire = {
        "type": "state_checkpoint",
        "v": 2,
        "training_id": state.training_id or TID,
        "seq": seq,
        "timestamp": 5.0,
        "format": fmt,
        "state": {},
        "lines": 3,
    }
    return orjson.dumps(wire)


def fast_fold(lines: list[bytes], state: RunState = INITIAL_STATE) -> tuple[RunState, int]:
    """:func:`fold_lines` by hand: the state and how many lines took the fast path."""
    folder = LineFolder(state)
    for line in lines:
        if not folder.fold_line(line):
            try:
                folder.apply(decode(line))
            except DecodeError:
                continue
    return folder.state, folder.folded


class TestSameStateAsTheReducer:
    """Folding lines fast gives exactly the state decoding and reducing them gives."""

    @given(run_events(HOSTILE, training_id=TID).flatmap(log_lines))
    def test_hostile_runs(self, lines: list[bytes]) -> None:
        """Hostile values, duplicates, gaps, late and reordered seqs, odd lines."""
        assert fold_lines(lines) == slow_fold(lines)

    @given(run_events(REALISTIC, training_id=TID, max_size=80).flatmap(log_lines))
    def test_realistic_runs(self, lines: list[bytes]) -> None:
        """What a training loop writes, with the odd damaged line."""
        state, _ = fast_fold(lines)
        assert state == slow_fold(lines)

    @given(run_events(HOSTILE).flatmap(log_lines))
    def test_any_training_id(self, lines: list[bytes]) -> None:
        """Runs of any valid id (more than the decoder's cache of checked ids holds)."""
        assert fold_lines(lines) == slow_fold(lines)

    def test_batches_are_taken(self) -> None:
        """Lines of one shape after the first are batched: their values wait for the state."""
        lines = [line_of(RunMeta(TID, 1, 1.0)), line_of(StatusChanged(TID, 2, 1.0, "running"))]
        lines += [
            line_of(Metrics(TID, seq, float(seq), loss=1.0 / seq, extra={"acc": seq / 1e3}))
            for seq in range(3, 103)
        ]
        folder, unfolded = LineFolder(), []
        for i in folder.unfolded(lines):
            unfolded.append(i)
            folder.apply(decode(lines[i]))
        assert unfolded == [0, 1]  # meta and running: decoded
        assert len(folder._batch.stamps) == 99
        assert exact(folder.state) == exact(slow_fold(lines))
        assert folder._batch.stamps == []

    def test_the_fast_path_is_taken(self) -> None:
        """The properties exercise it: most lines of a started run take the fast path."""
        run: list[Event] = [RunMeta(TID, 1, 1.0), StatusChanged(TID, 2, 1.0, "running")]
        for seq in range(3, 103):
            run.append(Metrics(TID, seq, float(seq), loss=1.0 / seq, extra={"acc": 0.5}))
        state, folded = fast_fold([line_of(e) for e in run])
        assert (state, folded) == (replay(run), 100)

    @given(st.lists(events(WIRE), max_size=30).flatmap(log_lines))
    def test_arbitrary_events(self, lines: list[bytes]) -> None:
        """Events of any runs and types in any order."""
        assert fold_lines(lines) == slow_fold(lines)

    @given(well_formed_runs(max_work=30), st.data())
    def test_from_a_checkpoint(self, run: list[Event], data: st.DataObject) -> None:
        """Continuing from any state (a checkpoint's) folds the tail as the reducer does."""
        cut = data.draw(st.integers(0, len(run)))
        start = replay(run[:cut])
        lines = [line_of(e) for e in run[cut:]]
        assert fold_lines(lines, start) == slow_fold(lines, start) == replay(run)

    @given(run_events(HOSTILE, max_size=60), st.data())
    def test_checkpoint_lines(self, stream: list[Event], data: st.DataObject) -> None:
        """Checkpoint lines, valid or not, anywhere: they change nothing either way."""
        lines = [line_of(e) for e in stream]
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(lines)))
            seq = data.draw(st.integers(-1, 50))
            fmt = data.draw(st.sampled_from(["1", 1, None]))
            lines.insert(at, checkpoint_line(slow_fold(lines[:at]), seq, fmt))
        assert fold_lines(lines) == slow_fold(lines)

    @given(st.lists(st.sampled_from(["next", "gap", "dup", "late", "odd"]), max_size=60))
    def test_seq_patterns(self, steps: list[str]) -> None:
        """Gaps, duplicates and late seqs between common lines, from a started run."""
        run: list[Event] = [RunMeta(TID, 1, 1.0), StatusChanged(TID, 2, 1.0, "running")]
        seq = 2
        for i, step in enumerate(steps):
            if step == "gap":
                seq += 3
            elif step in ("next", "odd"):
                seq += 1
            this = max(1, seq - 2) if step == "late" else seq
            if step == "dup":
                this = seq
            ts = 1.0 + i * (-0.5 if step == "odd" else 1.0)
            run.append(
                Metrics(TID, this, ts, loss=1.0 / (i + 1), extra={"acc": i / 100.0})
                if i % 3
                else Progress(TID, this, ts, epoch=i, step=i * 10)
                if i % 2
                else Heartbeat(TID, this, ts)
            )
        lines = [line_of(e) for e in run]
        state, folded = fast_fold(lines)
        assert state == slow_fold(lines)
        assert folded >= steps.count("next") + steps.count("gap") - steps.count("odd") - 1


class TestFastPath:
    """The common lines of a started run take the fast path; the rest is left alone."""

    def test_common_lines_folded_fast(self) -> None:
        """After meta and running, progress, metrics and heartbeat lines are folded fast."""
        folder = LineFolder()
        for event in (RunMeta(TID, 1, 1.0), StatusChanged(TID, 2, 1.0, "running")):
            assert not folder.fold_line(encode(event))
            folder.apply(decode(encode(event)))  # decoding checks the id
        common = [
            Progress(TID, 3, 2.0, epoch=1, step=5),
            Metrics(TID, 4, 2.0, loss=0.5, extra={"acc": 0.9}, min={"loss": 0.4}),
            Heartbeat(TID, 5, 3.0),
            Metrics(TID, 9, 4.0, loss=0.25, samples_per_second=10.0, names_dropped=2),
        ]
        for event in common:
            assert folder.fold_line(line_of(event))
        assert folder.folded == 4
        assert folder.state == replay(
            [RunMeta(TID, 1, 1.0), StatusChanged(TID, 2, 1.0, "running"), *common]
        )

    def test_uncommon_lines_left_alone(self) -> None:
        """Another type, an int where a float goes, another run, a duplicate: not folded."""
        folder = LineFolder()
        for event in (RunMeta(TID, 1, 1.0), StatusChanged(TID, 2, 1.0, "running")):
            folder.apply(decode(encode(event)))  # decoding checks the id
        before = folder.state
        refused = [
            encode(StatusChanged(TID, 3, 2.0, "done")),
            b'{"type":"metrics","v":2,"training_id":"fast-run","seq":3,"timestamp":2.0,"loss":1}',
            b'{"type":"progress","v":3,"training_id":"fast-run","seq":3,"timestamp":2.0}',
            b'{"type":"progress","v":2,"training_id":"fast-run","seq":3,"timestamp":2}',
            b'{"type":"progress","v":2,"training_id":"other","seq":3,"timestamp":2.0}',
            b'{"type":"progress","v":2,"training_id":"fast-run","seq":2,"timestamp":2.0}',
            b'{"type":"progress","v":2,"training_id":"fast-run","seq":3,"timestamp":2.0,"step":true}',
            b'{"type":"heartbeat","v":2,"training_id":"fast-run","timestamp":2.0}',
            b"not json",
            b"",
        ]
        for line in refused:
            assert not folder.fold_line(line), line
        assert folder.state == before
        assert folder.folded == 0

    def test_nothing_after_the_end(self) -> None:
        """Once the run ended, every line goes the ordinary way (after_terminal anomalies)."""
        folder = LineFolder()
        for event in (StatusChanged(TID, 1, 1.0, "running"), StatusChanged(TID, 2, 1.0, "done")):
            folder.apply(decode(encode(event)))  # decoding checks the id
        assert folder.state.status == "done"
        assert not folder.fold_line(encode(Progress(TID, 3, 2.0, epoch=1)))

    def test_null_training_id_after_an_ordinary_line(self) -> None:
        """A line with a null training_id is never taken for the run's (found by hypothesis)."""
        lines = [
            b'{"type":"heartbeat","training_id":"fast-run","seq":1,"timestamp":1.0,"v":2}',
            b'{"type":"progress","training_id":"fast-run","seq":3,"timestamp":1.0,"v":2}',
            b'{"type":"progress","training_id":"fast-run","seq":2,"timestamp":1.0,"v":2}',
            b'{"type":"progress","training_id":null,"seq":6,"timestamp":1.0,"v":2}',
        ]
        assert fold_lines(lines) == slow_fold(lines)
        assert fold_lines(lines).last_seq == 3

    def test_floor(self) -> None:
        """Seqs at or below the floor (a follower's already-read ones) are left alone."""
        folder = LineFolder()
        for event in (RunMeta(TID, 1, 1.0), StatusChanged(TID, 2, 1.0, "running")):
            folder.apply(decode(encode(event)))  # decoding checks the id
        assert not folder.fold_line(encode(Progress(TID, 3, 2.0)), floor=3)
        assert folder.fold_line(encode(Progress(TID, 4, 2.0)), floor=3)
        assert attrs.evolve(folder.state).last_seq == 4


#: Metric values where the batched fold could differ from one at a time: ties
#: of 0.0 and -0.0 (equal, yet kept apart in JSON), repeats, extremes.
BATCH_VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.5, 1e308, -1e308, 5e-324, 3.0])
#: The shapes a metrics line of a loop takes: loss, extra names, both.
SHAPES = st.sampled_from(
    [("loss",), ("acc",), ("loss", "acc"), ("loss", "acc", "lr"), ("acc", "loss"), ("lr",)]
)


@st.composite
def metric_lines(draw: Any, start: int = 3) -> list[bytes]:
    """A started run's lines: runs of metrics lines of a few shapes, odd lines between."""
    lines = [line_of(RunMeta(TID, 1, 1.0)), line_of(StatusChanged(TID, 2, 1.0, "running"))]
    seq = start - 1
    for _ in range(draw(st.integers(0, 8))):
        shape = draw(SHAPES)
        for _ in range(draw(st.integers(1, 30))):
            seq += draw(st.sampled_from([1] * 12 + [0, 2, -3]))  # a duplicate, a gap, a late one
            wire: dict[str, Any] = {"type": "metrics", "v": 2, "training_id": TID, "seq": seq}
            wire["timestamp"] = draw(st.sampled_from([1.0, 2.0, float(seq), 0.5]))
            extra = {name: draw(BATCH_VALUES) for name in shape if name != "loss"}
            if "loss" in shape:
                wire["loss"] = draw(BATCH_VALUES)
            if extra:
                wire["extra"] = extra
            roll = draw(st.integers(0, 30))
            if roll == 0:  # a line of another shape for one step: the writer's bounds
                wire["min"] = {name: draw(BATCH_VALUES) for name in shape}
            elif roll == 1:
                wire["samples_per_second"] = draw(BATCH_VALUES)
            elif roll == 2:
                wire["names_dropped"] = draw(st.integers(0, 3))
            elif roll == 3:  # an integer value: decoded the ordinary way
                wire.setdefault("extra", {})["acc"] = 1
            lines.append(orjson.dumps(wire))
            roll = draw(st.integers(0, 20))
            if roll == 0:
                seq += 1
                lines.append(line_of(Progress(TID, seq, float(seq), epoch=1, step=seq)))
            elif roll == 1:
                seq += 1
                lines.append(line_of(StatusChanged(TID, seq, float(seq), "running", "again")))
            elif roll == 2:
                lines.append(b"garbage")
    return lines


def exact(state: RunState) -> str:
    """The state with what ``==`` does not see: -0.0 apart from 0.0, the order of names."""
    return repr(state)


class TestBatchedMetrics:
    """Metrics lines of one shape are folded a batch at a time: the same state, exactly."""

    @given(metric_lines())
    def test_same_state_as_the_reducer(self, lines: list[bytes]) -> None:
        """Runs of shapes, ties of 0.0 and -0.0, gaps, duplicates, odd lines between."""
        fast, slow = fold_lines(lines), slow_fold(lines)
        assert fast == slow
        assert exact(fast) == exact(slow)

    @given(metric_lines())
    def test_batches_cut_short(self, lines: list[bytes]) -> None:
        """A batch folded whenever it holds 3 lines (the cap, made small) ends the same."""
        check_batches_cut_short(lines, exact)

    @given(metric_lines(), st.data())
    def test_state_read_mid_batch(self, lines: list[bytes], data: st.DataObject) -> None:
        """Reading the state between lines (a follower's poll) folds the batch first."""
        reads = data.draw(st.sets(st.integers(0, len(lines) - 1), max_size=3))
        check_state_read_mid_batch(lines, reads, exact)

    @given(metric_lines(), st.data())
    def test_from_odd_bounds(self, lines: list[bytes], data: st.DataObject) -> None:
        """From a checkpoint state whose bounds or windows have min above max, folded one by one."""
        cut = data.draw(st.integers(2, len(lines)))
        state = slow_fold(lines[:cut])
        if state.metrics_min:
            name = data.draw(st.sampled_from(sorted(state.metrics_min)))
            state = attrs.evolve(
                state,
                metrics_min={**state.metrics_min, name: 9.0},
                metrics_max={**state.metrics_max, name: -9.0},
            )
        if state.history:
            name = data.draw(st.sampled_from(sorted(state.history)))
            series = state.history[name]
            last = (*series.windows[-1][:4], 9.0, -9.0, *series.windows[-1][6:])
            odd = attrs.evolve(series, windows=(*series.windows[:-1], last))
            state = attrs.evolve(state, history={**state.history, name: odd})
        tail = lines[cut:]
        assert exact(fold_lines(tail, state)) == exact(slow_fold(tail, state))


class TestSeriesExtend:
    """``SeriesAcc.extend`` leaves exactly the windows ``add`` one value at a time leaves."""

    @given(
        st.lists(BATCH_VALUES, max_size=60),
        st.lists(st.lists(BATCH_VALUES, max_size=300), max_size=4),
        st.integers(1, 8),
    )
    def test_same_windows(
        self, before: list[float], batches: list[list[float]], width: int
    ) -> None:
        """Across window boundaries and merges, from any series a fold left."""
        one, many = SeriesAcc(), SeriesAcc()
        for acc in (one, many):
            acc.width = width
            for i, value in enumerate(before):
                acc.add(value, float(i))
        for batch in batches:
            stamps = [float(i) for i in range(len(batch))]
            for value, ts in zip(batch, stamps, strict=True):
                one.add(value, ts)
            many.extend(batch, stamps)
            assert repr(many.freeze()) == repr(one.freeze())

    def test_odd_window_bounds(self) -> None:
        """A window with min above max (a hostile checkpoint's) is updated value by value."""
        series = Series(width=4, count=1, windows=((0, 1, 1.0, 1.0, 9.0, -9.0, 0.0, 0.0),))
        one, many = SeriesAcc(series), SeriesAcc(series)
        for value in (0.5, 2.0, 1.0):
            one.add(value, 1.0)
        many.extend([0.5, 2.0, 1.0], [1.0, 1.0, 1.0])
        assert many.freeze() == one.freeze()
        assert many.freeze().windows[0][4:6] == (0.5, 2.0)
