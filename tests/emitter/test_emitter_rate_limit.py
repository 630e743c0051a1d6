"""Built-in rate limiting: coalescing, leading and trailing edge, per-sink rates, order."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

from pulse_core.emitter import TrainingRun
from pulse_core.events import ErrorReported, Heartbeat, Metrics, Progress, StatusChanged
from pulse_core.testing import FakeClock, RecordingSink

MakeRun = Callable[..., TrainingRun]


def forwards(sink: RecordingSink) -> list[tuple[float, int | None]]:
    return [(e.timestamp, e.step) for e in sink.of_type(Progress)]


class TestCoalescing:
    """progress/metrics are coalesced per sink: last value wins, at most one per interval."""

    def test_live_rate(self, make_run: MakeRun, clock: FakeClock) -> None:
        """1,000 calls over 1 s reach a 0.1 s sink ~10 times, a 1 s sink ~1 time (+ trailing)."""
        live = RecordingSink(interval=0.1)
        durable = RecordingSink(interval=1.0)
        run = make_run("rate-1", sinks=[live, durable])
        for step in range(1000):
            run.progress(epoch=1, step=step)
            run.metrics(loss=1.0 / (step + 1))
            clock.advance(0.001)
        live_steps = [s for _, s in forwards(live)]
        assert 10 <= len(live_steps) <= 11
        assert len(forwards(durable)) == 1  # the leading edge; the rest is still coalesced
        stamps = [t for t, _ in forwards(live)]
        assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(stamps))
        run.tick()  # trailing edge: the background work delivers the last values
        clock.advance(1.0)
        run.tick()
        assert forwards(live)[-1][1] == 999
        assert forwards(durable)[-1][1] == 999
        assert live.of_type(Metrics)[-1].loss == 1.0 / 1000

    def test_leading_edge(self, make_run: MakeRun) -> None:
        """The first value goes out at once (the run starts running with it)."""
        sink = RecordingSink(interval=10.0)
        run = make_run("rate-2", sinks=[sink])
        run.progress(epoch=1, step=1)
        assert [type(e).__name__ for e in sink.events[-2:]] == ["StatusChanged", "Progress"]
        assert sink.of_type(StatusChanged)[-1].status == "running"

    def test_coalesced_calls_cost_no_seq(self, make_run: MakeRun, clock: FakeClock) -> None:
        """Values coalesced away get no event and no seq: one sink sees contiguous seqs."""
        sink = RecordingSink(interval=0.1)
        run = make_run("rate-3", sinks=[sink])
        for step in range(2000):
            run.progress(epoch=1, step=step)
            run.metrics(loss=float(step))
            clock.advance(0.0013)
            if step % 7 == 0:
                run.tick()  # the background thread also runs between calls
        run.close()
        assert sink.seqs == list(range(1, len(sink.events) + 1))
        assert len(sink.of_type(Progress)) <= 2000 * 0.0013 / 0.1 + 2

    def test_trailing_edge_within_one_interval(self, make_run: MakeRun, clock: FakeClock) -> None:
        """A value held back reaches every sink by the first tick after its interval."""
        live = RecordingSink(interval=0.1)
        durable = RecordingSink(interval=1.0)
        run = make_run("rate-4", sinks=[live, durable])
        run.progress(epoch=1, step=1)
        clock.advance(0.01)
        run.progress(epoch=1, step=2)  # held by both
        for _ in range(200):  # the background thread ticks every 0.05 s
            clock.advance(0.05)
            run.tick()
            if forwards(live)[-1][1] == 2 and forwards(durable)[-1][1] == 2:
                break
        live_at = next(t for t, s in forwards(live) if s == 2)
        durable_at = next(t for t, s in forwards(durable) if s == 2)
        start = forwards(live)[0][0]
        assert live_at - start <= 0.1 + 0.05 + 1e-9
        assert durable_at - start <= 1.0 + 0.05 + 1e-9

    def test_trailing_edge_with_background_thread(self) -> None:
        """With real time and the background thread, the last value arrives without more calls."""
        live = RecordingSink(interval=0.05)
        with TrainingRun("rate-5", sinks=[live], env={}, heartbeat_interval=5.0) as run:
            for step in range(1, 5001):
                run.progress(epoch=1, step=step)
            for _ in range(500):
                if forwards(live) and forwards(live)[-1][1] == 5000:
                    break
                time.sleep(0.01)
            assert forwards(live)[-1][1] == 5000

    def test_extra_metrics_accumulate(self, make_run: MakeRun) -> None:
        """Named metrics keep their latest values across calls."""
        sink = RecordingSink()
        run = make_run("rate-6", sinks=[sink])
        run.metrics(loss=1.0, lr=0.1)
        run.metrics(acc=0.5)
        run.metrics(lr=0.05)
        assert sink.of_type(Metrics)[-1].extra == {"lr": 0.05, "acc": 0.5}
        assert sink.of_type(Metrics)[-1].loss == 1.0


class TestEpochBoundaries:
    """The durable log also gets the last values of every epoch, whatever its rate."""

    def test_every_epoch_end_reaches_the_log(self, make_run: MakeRun, clock: FakeClock) -> None:
        """Epochs of 0.2 s and a 1 s log: each epoch's last step is in the log."""
        durable = RecordingSink(interval=1.0, boundaries=True)
        live = RecordingSink(interval=1.0)
        run = make_run("epoch-1", sinks=[durable, live])
        for epoch in range(1, 11):
            for step in range(1, 21):
                run.progress(epoch=epoch, total_epochs=10, step=step, total_steps=20)
                run.metrics(loss=epoch + step / 100)
                clock.advance(0.01)
        run.close()
        ends = {(e.epoch, e.step) for e in durable.of_type(Progress)}
        for epoch in range(1, 11):
            assert (epoch, 20) in ends
        losses = {m.loss for m in durable.of_type(Metrics)}
        for epoch in range(1, 11):
            assert epoch + 0.2 in losses
        assert len(live.of_type(Progress)) < len(durable.of_type(Progress))
        assert durable.seqs == sorted(durable.seqs)


class TestOrder:
    """Pending values go out before a later status or error; those are never held back."""

    def test_pending_values_before_status(self, make_run: MakeRun, clock: FakeClock) -> None:
        """A held value reaches a slow sink just before the status change that follows it."""
        slow = RecordingSink(interval=100.0)
        run = make_run("order-1", sinks=[slow])
        run.progress(epoch=1, step=1)
        clock.advance(0.5)
        run.progress(epoch=1, step=42)
        run.metrics(loss=0.42)
        run.status("cooling_down", "saving")
        tail = slow.events[-3:]
        assert isinstance(tail[0], Progress)
        assert tail[0].step == 42
        assert isinstance(tail[1], Metrics)
        assert tail[1].loss == 0.42
        assert isinstance(tail[2], StatusChanged)
        assert tail[2].status == "cooling_down"
        assert slow.seqs == sorted(slow.seqs)

    def test_pending_values_before_error(self, make_run: MakeRun, clock: FakeClock) -> None:
        """The error event carries, and follows, the latest values."""
        slow = RecordingSink(interval=100.0)
        run = make_run("order-2", sinks=[slow])
        run.progress(epoch=1, step=1)
        clock.advance(0.5)
        run.progress(epoch=3, step=7)
        run.error("CUDA_OOM", "oom")
        kinds = [type(e).__name__ for e in slow.events[-3:]]
        assert kinds == ["Progress", "ErrorReported", "StatusChanged"]
        assert slow.of_type(ErrorReported)[0].epoch == 3

    def test_status_not_rate_limited(self, make_run: MakeRun) -> None:
        """Status changes within one interval all reach a slow sink at once."""
        slow = RecordingSink(interval=100.0)
        run = make_run("order-3", sinks=[slow])
        run.status("running", "a")
        run.status("running", "b")
        run.status("cooling_down", "c")
        run.status("done", "d")
        assert [e.message for e in slow.of_type(StatusChanged)][-4:] == ["a", "b", "c", "d"]

    def test_seq_order_on_every_sink(self, make_run: MakeRun, clock: FakeClock) -> None:
        """Sinks of different rates each see strictly increasing seqs, heartbeats included."""
        sinks = [
            RecordingSink(interval=0.0),
            RecordingSink(interval=0.1),
            RecordingSink(interval=1.0, boundaries=True),
            RecordingSink(interval=7.0),
        ]
        run = make_run("order-4", sinks=sinks, heartbeat_interval=2.0)
        for step in range(3000):
            run.progress(epoch=1 + step // 500, step=step % 500)
            if step % 3:
                run.metrics(loss=1.0 / (step + 1))
            clock.advance(0.004 if step % 400 else 6.0)
            if step % 11 == 0:
                run.tick()
            if step == 1500:
                run.status("running", "half way")
        run.close()
        for sink in sinks:
            assert sink.seqs == sorted(set(sink.seqs)), sink.interval
        assert sinks[3].of_type(Heartbeat)


class TestNoSinks:
    """A run without sinks still follows the lifecycle."""

    def test_no_sinks(self, make_run: MakeRun) -> None:
        """The first progress moves it to running, so close() ends it done."""
        run = make_run("nosink-1", sinks=[])
        run.progress(epoch=1)
        assert run.current_status == "running"
        run.close()
        assert run.current_status == "done"


class TestBackgroundNeverBlocks:
    """The hot path never waits for the lock the background work holds."""

    def test_progress_while_lock_is_held(self, make_run: MakeRun, clock: FakeClock) -> None:
        """progress()/metrics() return while another thread holds the run's lock."""
        sink = RecordingSink(interval=0.0)
        run = make_run("block-1", sinks=[sink])
        run.status("running")
        held = threading.Event()
        release = threading.Event()

        def holder() -> None:
            with run._lock:
                held.set()
                release.wait(30)

        finished = threading.Event()

        def loop() -> None:
            for step in range(1000):
                clock.advance(0.01)
                run.progress(epoch=1, step=step)
                run.metrics(loss=1.0)
            finished.set()

        t = threading.Thread(target=holder)
        t.start()
        assert held.wait(10)
        worker = threading.Thread(target=loop)
        worker.start()
        worker.join(20)
        try:
            assert finished.is_set()
        finally:
            release.set()
            t.join()
        run.tick()  # the values held back meanwhile go out at the next chance
        assert sink.of_type(Progress)[-1].step == 999


class TestHeartbeatOrder:
    """An explicit heartbeat never overtakes values already built for a slower sink."""

    def test_heartbeat_after_pending_values(self, make_run: MakeRun, clock: FakeClock) -> None:
        """A slow sink gets the values built for a fast one before the heartbeat."""
        fast = RecordingSink(interval=0.0)
        slow = RecordingSink(interval=100.0)
        run = make_run("hb-order-1", sinks=[fast, slow])
        run.progress(epoch=1, step=1)
        clock.advance(1.0)
        run.progress(epoch=1, step=2)  # built for the fast sink, held for the slow one
        run.heartbeat()
        held, beat = slow.events[-2:]
        assert isinstance(held, Progress)
        assert held.step == 2
        assert isinstance(beat, Heartbeat)
        assert slow.seqs == sorted(slow.seqs)
