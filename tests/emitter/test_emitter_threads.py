"""Thread safety between the training thread's hot path and the run's background thread."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.events import Metrics, Progress, StatusChanged
from pulse_core.reducer import replay
from pulse_core.testing import RecordingSink


@pytest.fixture
def busy_gil() -> Iterator[None]:
    """Switch threads as often as CPython allows, so races show up."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


class TestHotPathAndBackground:
    """Values written by the loop are never seen half-updated, lost or out of order."""

    def test_no_torn_progress_or_metrics(self, busy_gil: None) -> None:
        """Every forwarded event is one whole call's values (epoch and step move together)."""
        sinks = [RecordingSink(interval=0.0005), RecordingSink(interval=0.002, boundaries=True)]
        with TrainingRun(
            "torn-1", sinks=sinks, env={}, heartbeat_interval=0.01, strict=True
        ) as run:
            for i in range(1, 60_001):
                # epoch, step and totals all derive from i: a torn read breaks the relation
                run.progress(epoch=i, total_epochs=i + 1, step=2 * i, total_steps=3 * i)
                run.metrics(loss=float(i), time_per_epoch=float(i), samples_per_second=float(-i))
        for sink in sinks:
            progress = sink.of_type(Progress)
            metrics = sink.of_type(Metrics)
            assert len(progress) > 10
            for p in progress:
                assert p.epoch is not None
                assert (p.total_epochs, p.step, p.total_steps) == (
                    p.epoch + 1,
                    2 * p.epoch,
                    3 * p.epoch,
                )
            for m in metrics:
                assert m.loss == m.time_per_epoch == -(m.samples_per_second or 0)
            assert progress[-1].epoch == 60_000
            assert metrics[-1].loss == 60_000.0
            assert sink.seqs == sorted(set(sink.seqs))
            assert replay(sink.events).anomalies == ()

    def test_status_from_another_thread(self, busy_gil: None) -> None:
        """Status notes from a second thread interleave with the loop in seq order."""
        sink = RecordingSink(interval=0.0)
        stop = threading.Event()
        with TrainingRun("torn-2", sinks=[sink], env={}, heartbeat_interval=0.005) as run:
            run.status("running")

            def notes() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    run.status("running", f"note {n}")

            t = threading.Thread(target=notes)
            t.start()
            for i in range(20_000):
                run.progress(epoch=1, step=i)
            stop.set()
            t.join()
        assert sink.seqs == list(range(1, len(sink.events) + 1))
        state = replay(sink.events)
        assert state.anomalies == ()
        assert state.status == "done"
        assert state.step == 19_999
        assert len(sink.of_type(StatusChanged)) > 3

    def test_extra_metrics_from_the_loop_while_building(self, busy_gil: None) -> None:
        """New metric names added while the background builds events never break it."""
        sink = RecordingSink(interval=0.0005)
        with TrainingRun("torn-3", sinks=[sink], env={}) as run:
            for i in range(20_000):
                run.metrics(**{f"m{i % 50}": float(i)})
        last = sink.of_type(Metrics)[-1]
        assert len(last.extra) == 50
        assert last.extra["m49"] == 19_999.0
