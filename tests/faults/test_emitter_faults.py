"""Reporting never harms training: injected sink failures are contained, retried, counted."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pytest

from pulse_core.emitter import (
    TrainingRun,
    _hooks,
    _lifecycle,
    _route,
    _run,
    _settings,
    _value,
    _writer,
)
from pulse_core.errors import RunLocked
from pulse_core.events import (
    Dropped,
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_core.projections import to_view
from pulse_core.reducer import replay
from pulse_core.testing import FailingSink, FakeClock, RecordingSink


class Recorder:
    """Stands in for the emitter's structlog logger."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Callable[..., None]:
        def keep(event: str, **kw: Any) -> None:
            self.records.append((level, event, kw))

        return keep

    def messages(self, level: str) -> list[str]:
        return [event for lvl, event, _ in self.records if lvl == level]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """The emitter's log records."""
    recorder = Recorder()
    for module in (_run, _lifecycle, _writer, _route, _hooks, _settings, _value):  # own `log`s
        monkeypatch.setattr(module, "log", recorder)
    return recorder


def train(run: TrainingRun, clock: FakeClock, steps: int, start: int = 0) -> None:
    """A loop: progress + loss each 10 ms, a tick every 50 ms."""
    for step in range(start, start + steps):
        run.progress(epoch=1 + step // 100, total_epochs=100, step=step % 100, total_steps=100)
        run.metrics(loss=1.0 / (step + 1))
        clock.advance(0.01)
        if step % 5 == 0:
            run.tick()


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


class TestFailingSink:
    """A sink that raises is buffered, retried with backoff and recovers in order."""

    def test_nothing_raises_and_healthy_sinks_get_everything(
        self, make_run: Callable[..., TrainingRun], clock: FakeClock, logs: Recorder
    ) -> None:
        """A sink failing all run long never raises into the loop or starves the others."""
        bad = FailingSink(interval=0.1)
        good = RecordingSink(interval=0.1)
        run = make_run("fault-1", sinks=[bad, good])
        bad.failing = True
        run.status("running")
        train(run, clock, 500)
        run.error("CUDA_OOM", "oom", fatal=False)
        run.status("cooling_down")
        run.close()
        assert bad.failures > 0
        assert [e.status for e in good.of_type(StatusChanged)] == [
            "preparing",
            "running",
            "cooling_down",
            "done",
        ]
        assert replay(good.events).anomalies == ()
        assert "pulse sink still failing at close; events lost" in logs.messages("warning")

    def test_recovery_delivers_in_order(
        self, make_run: Callable[..., TrainingRun], clock: FakeClock, logs: Recorder
    ) -> None:
        """After recovery the buffered status/error events arrive in order, samples coalesced."""
        bad = FailingSink(interval=0.1)
        run = make_run("fault-2", sinks=[bad])
        bad.failing = True
        run.status("running", "go")
        train(run, clock, 300)
        run.error("SINK_FAILURE", "noted", fatal=False)
        train(run, clock, 300, start=300)
        assert run.degraded
        stats = run.sink_stats()[0]
        assert stats["buffered"] <= 6  # status, error and the latest progress/metrics
        assert stats["coalesced"] > 100
        assert stats["failures"] > 0
        bad.failing = False
        clock.advance(10.0)
        run.tick()
        assert not run.degraded
        assert run.sink_stats()[0]["failures"] == 0
        assert run.sink_stats()[0]["failures_total"] > 0
        assert bad.seqs == sorted(bad.seqs)
        assert kinds(bad.events)[:4] == ["RunMeta", "StatusChanged", "StatusChanged", "Progress"]
        assert bad.of_type(ErrorReported)[0].message == "noted"
        assert bad.of_type(Progress)[-1].step == 99
        warnings = logs.messages("warning")
        assert warnings.count("pulse sink failed; buffering and retrying") == 1
        assert "pulse sink recovered" in logs.messages("info")
        run.close()
        state = replay(bad.events)
        assert state.status == "done"
        assert state.anomalies == ()

    def test_backoff(self, make_run: Callable[..., TrainingRun], clock: FakeClock) -> None:
        """A sink failing for 60 s is retried with growing pauses, not on every tick."""
        bad = FailingSink(interval=0.1)
        run = make_run("fault-3", sinks=[bad])
        bad.failing = True
        run.status("running")
        before = bad.attempts
        for _ in range(6000):  # 60 s of ticks every 10 ms
            clock.advance(0.01)
            run.tick()
        retries = bad.attempts - before
        assert 5 < retries < 40

    def test_bounded_buffer_and_dropped_event(
        self,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A full buffer drops (counts) events; a dropped event reports them on recovery."""
        monkeypatch.setattr(_route, "BUFFER_EVENTS", 20)
        bad = FailingSink(interval=0.0)
        run = make_run("fault-4", sinks=[bad])
        bad.failing = True
        run.status("running")
        for n in range(50):
            run.status("running", f"note {n}")
            run.progress(epoch=1, step=n)
        stats = run.sink_stats()[0]
        assert stats["buffered"] == 20
        assert stats["dropped"] == stats["dropped_total"] > 0
        dropped = stats["dropped"]
        bad.failing = False
        clock.advance(10.0)
        run.tick()
        reports = bad.of_type(Dropped)
        assert [d.count for d in reports] == [dropped]
        assert bad.events[-1] is reports[0]
        assert run.sink_stats()[0]["dropped"] == 0
        assert not run.degraded
        run.close()
        assert bad.seqs == sorted(bad.seqs)
        state = replay(bad.events)
        assert state.dropped == dropped
        assert to_view(state, now=clock.now)["degraded"] is True
        assert state.timeline[-1].status == "done"

    def test_full_buffer_of_statuses_refuses_samples(
        self,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A buffer full of statuses drops a new progress value, never a held status."""
        monkeypatch.setattr(_route, "BUFFER_EVENTS", 10)
        bad = FailingSink(interval=0.0)
        run = make_run("fault-4b", sinks=[bad])
        bad.failing = True
        run.status("running")
        for n in range(9):
            run.status("running", f"note {n}")
        assert run.sink_stats()[0]["buffered"] == 10
        run.progress(epoch=1, step=1)
        assert run.sink_stats()[0]["buffered"] == 10
        assert run.sink_stats()[0]["dropped"] == 1
        bad.failing = False
        clock.advance(10.0)
        run.tick()
        notes = [e.message for e in bad.of_type(StatusChanged) if e.status == "running"]
        assert notes == ["", *(f"note {n}" for n in range(9))]
        assert [d.count for d in bad.of_type(Dropped)] == [1]
        run.close()

    def test_drops_reported_before_the_end(
        self,
        make_run: Callable[..., TrainingRun],
        clock: FakeClock,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Still failing when the run ends: the dropped event is queued before the end status."""
        monkeypatch.setattr(_route, "BUFFER_EVENTS", 10)
        bad = FailingSink(interval=0.0)
        run = make_run("fault-5", sinks=[bad])
        bad.failing = True
        run.status("running")
        for n in range(30):
            run.status("running", f"note {n}")
        run.status("cooling_down")
        run.status("done")
        bad.failing = False
        run.close()
        tail = bad.events[-2:]
        assert isinstance(tail[0], Dropped)
        assert tail[0].count > 0
        assert isinstance(tail[1], StatusChanged)
        assert tail[1].status == "done"
        state = replay(bad.events)
        assert state.dropped == tail[0].count  # a reader counts it: it came before the end
        assert state.anomalies == ()

    def test_unopenable_sink_is_opened_later(
        self, make_run: Callable[..., TrainingRun], clock: FakeClock
    ) -> None:
        """A sink whose open() fails (e.g. read-only home) is opened on a later retry."""
        bad = FailingSink(fail_open=True)
        bad.failing = True
        good = RecordingSink()
        run = make_run("fault-6", sinks=[bad, good])
        assert run.degraded
        assert run.sink_stats()[0]["opened"] is False
        train(run, clock, 50)
        bad.failing = False
        clock.advance(10.0)
        run.tick()
        assert bad.opened == 1
        assert isinstance(bad.events[0], RunMeta)
        assert bad.seqs == sorted(bad.seqs)
        run.close()
        assert replay(bad.events).status == "done"

    def test_run_locked_at_open_propagates(self) -> None:
        """A sink refusing the run (RunLocked) fails the start; sinks already open are closed."""

        class Locked(RecordingSink):
            def open(self, training_id: str) -> int | None:
                raise RunLocked("held by pid 1")

        first = RecordingSink()
        with pytest.raises(RunLocked, match="pid 1"):
            TrainingRun("fault-7", sinks=[first, Locked()], env={}, background=False)
        assert first.closed

    def test_type_error_sink(
        self, make_run: Callable[..., TrainingRun], clock: FakeClock, logs: Recorder
    ) -> None:
        """A sink whose write always raises TypeError never blocks the run; its events drop."""
        broken = FailingSink(error=lambda: TypeError("unsupported type"))
        good = RecordingSink()
        run = make_run("fault-8", sinks=[good, broken])
        broken.failing = True
        train(run, clock, 200)
        for _ in range(100):
            clock.advance(1.0)
            run.tick()
        stats = run.sink_stats()[1]
        assert stats["dropped_total"] > 0
        assert stats["buffered"] <= 4
        assert "pulse sink dropped an event" in logs.messages("warning")
        run.close()
        assert good.of_type(StatusChanged)[-1].status == "done"

    def test_one_poisonous_event(
        self, make_run: Callable[..., TrainingRun], clock: FakeClock
    ) -> None:
        """A sink that cannot take one event drops just that one and goes on."""

        class NoErrors(RecordingSink):
            def write(self, event: Event) -> None:
                if isinstance(event, ErrorReported):
                    raise TypeError("cannot serialise this error")
                super().write(event)

        picky = NoErrors()
        run = make_run("fault-9", sinks=[picky])
        run.status("running")
        run.error("CUDA_OOM", "oom", fatal=False)
        run.status("running", "after the error")
        for _ in range(10):
            clock.advance(1.0)
            run.tick()
        run.close()
        assert picky.of_type(ErrorReported) == []
        assert [d.count for d in picky.of_type(Dropped)] == [1]
        assert [e.message for e in picky.of_type(StatusChanged)][-2:] == [
            "after the error",
            "finished",
        ]
        assert picky.seqs == sorted(picky.seqs)

    def test_closed_socket_sink(
        self, make_run: Callable[..., TrainingRun], clock: FakeClock
    ) -> None:
        """BrokenPipeError (a closed socket) is retried until the peer is back."""
        pipe = FailingSink(error=lambda: BrokenPipeError(errno.EPIPE, "Broken pipe"))
        run = make_run("fault-10", sinks=[pipe])
        pipe.fail_next(8)  # about 11 s of backoff; the loop runs 30 s
        run.status("running")
        train(run, clock, 3000)
        run.close()
        assert pipe.failures == 8
        assert replay(pipe.events).status == "done"
        assert pipe.of_type(Dropped) == []

    def test_flush_and_close_failures(
        self, make_run: Callable[..., TrainingRun], logs: Recorder
    ) -> None:
        """A sink raising in flush() and close() does not make close() raise."""

        class BadClose(RecordingSink):
            def flush(self, durable: bool) -> None:
                raise OSError(errno.EIO, "flush")

            def close(self) -> None:
                raise RuntimeError("close")

        good = RecordingSink()
        run = make_run("fault-11", sinks=[BadClose(), good])
        run.close()
        assert good.closed
        assert logs.messages("exception").count("pulse cleanup step failed") == 2

    def test_heartbeats_coalesce_while_failing(
        self, make_run: Callable[..., TrainingRun], clock: FakeClock
    ) -> None:
        """An idle run with a failing sink holds one heartbeat, not one per interval."""
        bad = FailingSink()
        run = make_run("fault-12", sinks=[bad], heartbeat_interval=1.0)
        run.status("running")
        bad.failing = True
        for _ in range(600):
            clock.advance(0.5)
            run.tick()
        assert run.sink_stats()[0]["buffered"] == 1
        bad.failing = False
        clock.advance(10.0)
        run.tick()
        assert bad.of_type(Heartbeat)
        assert bad.of_type(Metrics) == []
