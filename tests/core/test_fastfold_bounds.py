"""Metrics lines with ``min`` and ``max`` (the emitter's) batched: the reducer's state, exactly.

The emitter writes, on every metrics event, the run's bounds of every name
so far. The fast fold batches lines of one such shape and folds each name's
values and bounds at once: the same state as one line at a time, ties of
0.0 and -0.0 included, and bounds that are not the running ones (a hostile
or an older writer's).
"""

from __future__ import annotations

from typing import Any

import attrs
import orjson
from foldcheck import check_batches_cut_short, check_state_read_mid_batch, slow_fold
from hypothesis import given
from hypothesis import strategies as st

from pulse_core._fastfold import LineFolder, fold_lines
from pulse_core.codec import decode, encode
from pulse_core.events import Metrics, Progress, RunMeta, StatusChanged
from pulse_core.state import RunState

TID = "fast-run"
#: Values where a batched fold could differ from one at a time: ties of 0.0 and -0.0.
VALUES = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, 2.5, 1e308, -1e308, 5e-324, 3.0])
SHAPES = st.sampled_from(
    [("loss",), ("acc",), ("loss", "acc"), ("loss", "acc", "lr"), ("acc", "loss"), ("lr",)]
)


def exact(state: RunState) -> str:
    """The state with what ``==`` does not see: -0.0 apart from 0.0, the order of names."""
    return repr(state)


@st.composite
def bounded_lines(draw: Any) -> list[bytes]:
    """A started run's metrics lines with the emitter's ``min`` and ``max``, odd lines between."""
    lines = [encode(RunMeta(TID, 1, 1.0)), encode(StatusChanged(TID, 2, 1.0, "running"))]
    seq = 2
    seen: dict[str, list[float]] = {}  # the emitter's running bounds
    for _ in range(draw(st.integers(0, 6))):
        shape = draw(SHAPES)
        for _ in range(draw(st.integers(1, 30))):
            seq += draw(st.sampled_from([1] * 12 + [0, 2, -3]))  # a duplicate, a gap, a late one
            wire: dict[str, Any] = {"type": "metrics", "v": 2, "training_id": TID, "seq": seq}
            wire["timestamp"] = draw(st.sampled_from([1.0, 2.0, float(seq), 0.5]))
            values = {name: draw(VALUES) for name in shape}
            if "loss" in values:
                wire["loss"] = values["loss"]
            extra = {name: value for name, value in values.items() if name != "loss"}
            if extra:
                wire["extra"] = extra
            for name, value in values.items():
                pair = seen.setdefault(name, [value, value])
                pair[0], pair[1] = min(pair[0], value), max(pair[1], value)
            lows = {name: pair[0] for name, pair in seen.items()}
            highs = {name: pair[1] for name, pair in seen.items()}
            roll = draw(st.integers(0, 40))
            if roll == 0:  # bounds that are not the running ones
                lows = {name: draw(VALUES) for name in lows}
            elif roll == 1:
                highs = {name: draw(VALUES) for name in highs}
            elif roll == 2:  # a name in one bound and not the other
                highs.pop(draw(st.sampled_from(sorted(highs))))
            elif roll == 3:  # a name missing from a bound, or one more
                lows.pop(draw(st.sampled_from(sorted(lows))))
            elif roll == 8:
                lows["other"] = draw(VALUES)
            elif roll == 4:  # an integer bound: decoded the ordinary way
                lows[draw(st.sampled_from(sorted(lows)))] = 1
            elif roll == 5:
                wire["samples_per_second"] = draw(VALUES)
            elif roll == 6:
                wire["names_dropped"] = draw(st.integers(0, 3))
            wire["min"], wire["max"] = lows, highs
            if roll == 7:
                del wire["max"]
            lines.append(orjson.dumps(wire))
            roll = draw(st.integers(0, 20))
            if roll == 0:
                seq += 1
                lines.append(encode(Progress(TID, seq, float(seq), epoch=1, step=seq)))
            elif roll == 1:
                seq += 1
                lines.append(encode(StatusChanged(TID, seq, float(seq), "running", "again")))
            elif roll == 2:
                lines.append(b"garbage")
            elif roll == 3:  # a line without bounds: another shape
                seq += 1
                lines.append(encode(Metrics(TID, seq, float(seq), extra={"acc": 0.25})))
    return [line.rstrip(b"\n") for line in lines]


class TestBoundedBatches:
    """Lines of the emitter's shape fold in batches to exactly the reducer's state."""

    def test_the_emitters_lines_are_batched(self) -> None:
        """After the first line of a shape, the next ones wait in the batch."""
        lines = [encode(RunMeta(TID, 1, 1.0)), encode(StatusChanged(TID, 2, 1.0, "running"))]
        for seq in range(3, 53):
            loss = 1.0 / seq
            lines.append(
                encode(
                    Metrics(
                        TID,
                        seq,
                        float(seq),
                        loss=loss,
                        extra={"acc": 0.5},
                        min={"loss": loss, "acc": 0.5},
                        max={"loss": 1 / 3, "acc": 0.5},
                    )
                )
            )
        folder = LineFolder()
        for line in lines[:2]:
            folder.apply(decode(line))
        assert folder.fold_block([line.rstrip(b"\n") for line in lines[2:]]) == 50
        assert len(folder._batch.lows) == 49
        assert exact(folder.state) == exact(slow_fold(lines))
        assert folder.state.best_loss == 1 / 52

    def test_odd_bounds_one_line_at_a_time(self) -> None:
        """Bounds with min above max (a hostile checkpoint's): a value below both moves min only."""
        head = [encode(RunMeta(TID, 1, 1.0)), encode(StatusChanged(TID, 2, 1.0, "running"))]
        head.append(encode(Metrics(TID, 3, 1.0, extra={"acc": 20.0})))
        state = slow_fold(head)
        state = attrs.evolve(state, metrics_min={"acc": 9.0}, metrics_max={"acc": -9.0})
        tail = [
            encode(Metrics(TID, seq, 2.0, extra={"acc": value}, min=low, max={"acc": -10.0}))
            for seq, value, low in ((4, 0.0, {"acc": 0.0}), (5, -5.0, {"acc": -5.0}))
        ]
        folder = LineFolder(state)
        assert folder.fold_block([line.rstrip(b"\n") for line in tail]) == 2
        assert len(folder._batch.lows) == 1  # the second line waited in the batch
        fast = folder.state
        assert exact(fast) == exact(slow_fold(tail, state))
        assert (fast.metrics_min["acc"], fast.metrics_max["acc"]) == (-5.0, -9.0)

    @given(bounded_lines())
    def test_same_state_as_the_reducer(self, lines: list[bytes]) -> None:
        """Runs of shapes, ties of 0.0 and -0.0, odd bounds, gaps, odd lines between."""
        assert exact(fold_lines(lines)) == exact(slow_fold(lines))

    @given(bounded_lines())
    def test_batches_cut_short(self, lines: list[bytes]) -> None:
        """A batch folded whenever it holds 3 lines (the cap, made small) ends the same."""
        check_batches_cut_short(lines, exact)

    @given(bounded_lines(), st.data())
    def test_state_read_mid_batch(self, lines: list[bytes], data: st.DataObject) -> None:
        """Reading the state between lines (a follower's poll) folds the batch first."""
        reads = data.draw(st.sets(st.integers(0, len(lines) - 1), max_size=3))
        check_state_read_mid_batch(lines, reads, exact)

    @given(bounded_lines(), st.data())
    def test_from_odd_bounds(self, lines: list[bytes], data: st.DataObject) -> None:
        """From a checkpoint state whose bounds have min above max: one line at a time."""
        cut = data.draw(st.integers(2, len(lines)))
        state = slow_fold(lines[:cut])
        if state.metrics_min:
            name = data.draw(st.sampled_from(sorted(state.metrics_min)))
            low, high = data.draw(st.sampled_from([(9.0, -9.0), (0.0, -0.0), (2.5, 0.5)]))
            state = attrs.evolve(
                state,
                metrics_min={**state.metrics_min, name: low},
                metrics_max={**state.metrics_max, name: high},
            )
        tail = lines[cut:]
        assert exact(fold_lines(tail, state)) == exact(slow_fold(tail, state))
