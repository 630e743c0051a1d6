"""The fast fold over decoded lines: the same state as decoding and reducing every line."""

from __future__ import annotations

import json
from typing import Any

import attrs
import orjson
from hypothesis import given
from hypothesis import strategies as st
from strategies import HOSTILE, REALISTIC, WIRE, events, run_events, well_formed_runs

from pulse_core._fastfold import LineFolder, fold_lines
from pulse_core.codec import decode, encode, to_dict
from pulse_core.errors import DecodeError
from pulse_core.events import Event, Heartbeat, Metrics, Progress, RunMeta, StatusChanged
from pulse_core.reducer import INITIAL_STATE, Folder, replay
from pulse_core.state import RunState

TID = "fast-run"


def slow_fold(lines: list[bytes], state: RunState = INITIAL_STATE) -> RunState:
    """The reference: decode every line, apply what decodes, skip the rest."""
    folder = Folder(state)
    for line in lines:
        try:
            folder.apply(decode(line))
        except DecodeError:
            continue
    return folder.state


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
