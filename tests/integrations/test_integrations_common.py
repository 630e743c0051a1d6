"""The rules the framework callbacks share: held per-step values, throughput, endings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.events import ErrorReported, Metrics, Progress, StatusChanged
from pulse_core.testing import FakeClock, RecordingSink
from pulse_transports.integrations._common import (
    STEP_INTERVAL,
    RunBinding,
    Throughput,
    numeric_items,
)
from pulse_transports.integrations.distributed import PeerRun

TID = "20261129-000000-000-bbbbbbbbbb"


@pytest.fixture
def bound(clock: FakeClock) -> Iterator[tuple[RunBinding, RecordingSink]]:
    """A binding that owns a run on a recording sink, both on the fake clock."""
    sink = RecordingSink()
    run = TrainingRun(
        sinks=[sink], background=False, env={}, clock=clock.monotonic, wall=clock.time
    )
    binding = RunBinding(run, framework="test")
    binding.owned = True
    binding._clock = clock.monotonic
    binding.rates.reset(clock.monotonic())
    binding.running("go")
    binding.rates.reset(clock.monotonic())
    yield binding, sink
    run.close()


class TestHeldSteps:
    """Per-step values are held and forwarded at most every STEP_INTERVAL seconds."""

    def test_forwarded_by_time(
        self, bound: tuple[RunBinding, RecordingSink], clock: FakeClock
    ) -> None:
        """Steps within one interval make one forward; the next interval makes another."""
        binding, sink = bound
        assert binding.step(1, 0.9)
        assert not binding.step(2, 0.8)
        assert not binding.step(3, 0.7)
        clock.advance(STEP_INTERVAL)
        assert binding.step(4, 0.6)
        assert [p.step for p in sink.of_type(Progress)] == [1, 4]
        assert [m.loss for m in sink.of_type(Metrics)] == [0.9, 0.6]

    def test_flushed_before_the_end(
        self, bound: tuple[RunBinding, RecordingSink], clock: FakeClock
    ) -> None:
        """Held values go out before the run's last status: the log ends on the last step."""
        binding, sink = bound
        binding.step(1, 0.9)
        binding.step(7, 0.1)
        binding.finish()
        assert sink.of_type(Progress)[-1].step == 7
        assert sink.of_type(Metrics)[-1].loss == 0.1
        assert sink.of_type(StatusChanged)[-1].status == "done"

    def test_flushed_before_an_error(self, bound: tuple[RunBinding, RecordingSink]) -> None:
        """A failure reports the step it happened at, not the last one forwarded."""
        binding, sink = bound
        binding.step(1)
        binding.step(5)
        binding.fail(RuntimeError("CUDA out of memory."))
        (error,) = sink.of_type(ErrorReported)
        assert (error.error_code, error.step) == ("CUDA_OOM", 5)

    def test_throughput(self, bound: tuple[RunBinding, RecordingSink], clock: FakeClock) -> None:
        """Counted samples become samples_per_second once a window is over."""
        binding, sink = bound
        for step in range(1, 12):
            clock.advance(0.1)
            binding.step(step, samples=32)
        rates = [m.samples_per_second for m in sink.of_type(Metrics) if m.samples_per_second]
        assert rates == [pytest.approx(320.0)]


class TestEndings:
    """How training that returns ends an owned run."""

    def test_stop_flag_is_cancelled(self, bound: tuple[RunBinding, RecordingSink]) -> None:
        """A stop flag set by something other than early stopping ends it cancelled."""
        binding, sink = bound
        binding.finish(stopped_early=True, early_stopping=False, flag="x.stop", where="epoch 2")
        last = sink.of_type(StatusChanged)[-1]
        assert (last.status, last.message) == (
            "cancelled",
            "training stopped early at epoch 2: x.stop was set",
        )

    def test_early_stopping_is_done(self, bound: tuple[RunBinding, RecordingSink]) -> None:
        """Early stopping, or a stop whose cause is unknown, is a normal finish."""
        binding, sink = bound
        binding.finish(stopped_early=True, early_stopping=None)
        assert sink.of_type(StatusChanged)[-1].status == "done"

    def test_lent_run_is_not_ended(self) -> None:
        """finish() leaves a run it does not own open."""
        sink = RecordingSink()
        with TrainingRun(sinks=[sink], background=False, env={}) as run:
            binding = RunBinding(run, framework="test")
            binding.running("go")
            binding.finish()
            assert run.current_status == "running"


class TestOpening:
    """Every rank takes part in the one training_id broadcast, whatever run it uses."""

    def test_broadcast_is_symmetric(self, pulse_home: Path) -> None:
        """Rank 0 with a run of its own offers that run's id; rank 1 gets it, once each."""
        calls: list[tuple[str, str]] = []

        def rank0(value: str) -> str:
            calls.append(("rank 0", value))
            return value

        def rank1(value: str) -> str:
            calls.append(("rank 1", value))
            return TID

        with TrainingRun(TID, sinks=[RecordingSink()], background=False, env={}) as mine:
            binding = RunBinding(None, framework="test")
            assert binding.open(rank=0, world_size=2, broadcast=rank0) is mine
            assert binding.open(rank=0, world_size=2, broadcast=rank0) is mine
            assert not binding.owned
        peer = RunBinding(None, framework="test").open(rank=1, world_size=2, broadcast=rank1)
        assert isinstance(peer, PeerRun)
        assert peer.training_id == TID
        assert calls == [("rank 0", TID), ("rank 1", "")]

    def test_single_process_needs_no_broadcast(self, pulse_home: Path) -> None:
        """A job of one process opens its run without any broadcast."""

        def never(value: str) -> str:
            raise AssertionError("no broadcast in a single process")

        binding = RunBinding(None, framework="test", run_options={"sinks": [RecordingSink()]})
        run = binding.open(rank=0, world_size=1, broadcast=never)
        assert binding.owned
        assert isinstance(run, TrainingRun)
        binding.close()


class TestValues:
    """Framework values are passed on as numbers."""

    def test_numeric_items(self) -> None:
        """Numbers (and number-like objects) stay; strings, bools and None go."""

        class Scalar:
            def __float__(self) -> float:
                return 2.5

        scalar = Scalar()
        values = {"a": 1, "b": 0.5, "c": "x", "d": True, "e": None, "f": scalar, "epoch": 3}
        assert numeric_items(values, frozenset({"epoch"})) == {"a": 1, "b": 0.5, "f": scalar}

    def test_rate_of_a_short_window(self) -> None:
        """A window cut short gives its rate only when asked for a partial one."""
        rates = Throughput(window=1.0)
        rates.reset(10.0)
        rates.add(50)
        assert rates.rate(10.5) is None
        assert rates.rate(10.5, partial=True) == pytest.approx(100.0)
