"""The in-process bus and the ``inprocess`` sink: same rules as the hub, no bytes."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.events import (
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
    UnknownEvent,
)
from pulse_core.testing import FakeClock, RecordingSink
from pulse_transports.inprocess import (
    Bus,
    EncodedEvents,
    InProcessSink,
    Item,
    StateSnapshot,
    default_bus,
)
from pulse_transports.wire import Live, Resync

TID = "run-1"


def p(seq: int, step: int | None = None, tid: str = TID) -> Progress:
    return Progress(tid, seq, float(seq), step=seq if step is None else step)


def m(seq: int, tid: str = TID) -> Metrics:
    return Metrics(tid, seq, float(seq), loss=1.0 / seq)


def s(seq: int, value: str = "running", message: str = "", tid: str = TID) -> StatusChanged:
    return StatusChanged(tid, seq, float(seq), value, message)


def events(items: list[Item]) -> list[Event]:
    return [i for i in items if not isinstance(i, StateSnapshot | Live | Resync)]


class Recorder:
    """A callback that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def __call__(self, item: Item) -> None:
        self.items.append(item)


@pytest.fixture
def bus(clock: FakeClock) -> Bus:
    return Bus(clock=clock.monotonic, timer=False)


class TestCallbacks:
    """Callback subscribers get a snapshot, then the very event objects, rate limited."""

    def test_snapshot_then_same_objects(self, bus: Bus, clock: FakeClock) -> None:
        first = RunMeta(TID, 1, 1.0, name="demo")
        bus.publish(first)
        bus.publish(s(2))
        got = Recorder()
        bus.subscribe(got)
        assert len(got.items) == 1
        snapshot = got.items[0]
        assert isinstance(snapshot, StateSnapshot)
        assert snapshot.training_id == TID
        assert snapshot.state.status == "running"
        assert snapshot.state.meta is first
        event = s(3, "done")
        bus.publish(event)
        assert got.items[-1] is event

    def test_leading_and_trailing_edge(self, bus: Bus, clock: FakeClock) -> None:
        got = Recorder()
        bus.subscribe(got)
        sent = [p(seq) for seq in range(1, 101)]
        for event in sent:
            bus.publish(event)
        assert events(got.items) == [sent[0]]  # leading edge; the rest is held
        clock.advance(0.06)
        bus.tick()
        assert events(got.items) == [sent[0]]
        clock.advance(0.06)
        bus.tick()
        assert events(got.items) == [sent[0], sent[-1]]  # trailing edge: the latest
        clock.advance(1.0)
        bus.tick()
        assert len(events(got.items)) == 2  # nothing new: nothing sent

    def test_restate_replaces_held_values(self, bus: Bus, clock: FakeClock) -> None:
        # The hub restates a run it found lost; a progress value held back by
        # the rate limit must not follow that snapshot (it would read as the
        # run being alive again), and it is in the snapshot anyway.
        got = Recorder()
        bus.subscribe(got)
        bus.publish(s(1))
        bus.publish(p(2))
        bus.publish(p(3))  # held: the leading edge (seq 2) went out
        assert events(got.items) == [s(1), p(2)]
        assert bus.restate(TID) == 1
        snapshot = got.items[-1]
        assert isinstance(snapshot, StateSnapshot)
        assert snapshot.state.last_seq == 3
        clock.advance(1.0)
        bus.tick()
        assert got.items[-1] is snapshot  # nothing held comes after it
        bus.publish(p(3))  # a late duplicate of what the snapshot holds
        bus.publish(p(4))
        assert events(got.items)[-1] == p(4)
        assert [e.seq for e in events(got.items)] == [1, 2, 4]

    def test_streams_are_limited_separately(self, bus: Bus, clock: FakeClock) -> None:
        got = Recorder()
        bus.subscribe(got)
        for seq in range(1, 40, 4):
            bus.publish(p(seq))
            bus.publish(m(seq + 1))
            bus.publish(Heartbeat(TID, seq + 2, 0.0))
            bus.publish(UnknownEvent(TID, seq + 3, 0.0, "gpu_stats"))
        kinds = [type(e).__name__ for e in events(got.items)]
        assert kinds == ["Progress", "Metrics", "Heartbeat", "UnknownEvent"]

    def test_runs_are_limited_separately(self, bus: Bus) -> None:
        got = Recorder()
        bus.subscribe(got)
        for seq in range(1, 10):
            bus.publish(p(seq, tid="run-a"))
            bus.publish(p(seq, tid="run-b"))
        assert [e.training_id for e in events(got.items)] == ["run-a", "run-b"]

    def test_status_waits_behind_the_held_value(self, bus: Bus, clock: FakeClock) -> None:
        got = Recorder()
        bus.subscribe(got)
        for event in (p(1), p(2), m(3), m(4), s(5, "done")):
            bus.publish(event)
        # p2 is held, and nothing of the run may overtake it (seq order):
        # m3 waits behind it and is superseded by m4; the status waits too.
        assert [e.seq for e in events(got.items)] == [1]
        clock.advance(0.11)
        bus.tick()
        assert [e.seq for e in events(got.items)] == [1, 2, 4, 5]

    def test_a_newer_value_lets_the_status_through(self, bus: Bus, clock: FakeClock) -> None:
        got = Recorder()
        bus.subscribe(got)
        for event in (p(1), p(2), s(3, message="note"), p(4)):
            bus.publish(event)
        # p2 is superseded by p4, so the status goes at once; p4 waits its turn
        assert [e.seq for e in events(got.items)] == [1, 3]
        clock.advance(0.11)
        bus.tick()
        assert [e.seq for e in events(got.items)] == [1, 3, 4]

    def test_never_more_than_one_value_per_interval_even_with_many_statuses(
        self, bus: Bus, clock: FakeClock
    ) -> None:
        got = Recorder()
        bus.subscribe(got)
        seq = 0
        for _ in range(200):  # 2 s of progress every 10 ms and a status every 20 ms
            for _ in range(2):
                seq += 1
                bus.publish(p(seq))
                clock.advance(0.01)
                bus.tick()
            seq += 1
            bus.publish(s(seq, message=str(seq)))
        clock.advance(0.2)
        bus.tick()
        sent = events(got.items)
        assert [e.seq for e in sent] == sorted(e.seq for e in sent)
        assert len([e for e in sent if isinstance(e, StatusChanged)]) == 200
        progress_seqs = [e.seq for e in sent if isinstance(e, Progress)]
        assert 20 <= len(progress_seqs) <= 42  # 4 s at 10/s, edges included
        assert progress_seqs[-1] == seq - 1  # the last value arrived

    def test_a_slow_rate_delays_a_status_at_most_a_tenth_of_a_second(
        self, bus: Bus, clock: FakeClock
    ) -> None:
        """At 0.1 updates/s, a status behind a held value waits 0.1 s, not 10 s."""
        got = Recorder()
        bus.subscribe(got, interval=10.0)
        for event in (p(1), p(2), s(3, message="note")):
            bus.publish(event)
        assert [e.seq for e in events(got.items)] == [1]
        clock.advance(0.05)
        bus.tick()
        assert [e.seq for e in events(got.items)] == [1]
        clock.advance(0.06)
        bus.tick()
        assert [e.seq for e in events(got.items)] == [1, 2, 3]
        bus.publish(p(4))  # the forced value counts: the next one waits its interval
        clock.advance(1.0)
        bus.tick()
        assert [e.seq for e in events(got.items)] == [1, 2, 3]

    def test_per_subscriber_interval(self, bus: Bus, clock: FakeClock) -> None:
        fast, slow = Recorder(), Recorder()
        bus.subscribe(fast)
        bus.subscribe(slow, interval=1.0)
        for seq in range(1, 31):
            bus.publish(p(seq))
            clock.advance(0.15)
            bus.tick()
        assert len(events(fast.items)) == 30
        assert 4 <= len(events(slow.items)) <= 6  # 4.5 s at 1/s, leading and trailing

    def test_one_run_only(self, bus: Bus) -> None:
        got = Recorder()
        bus.publish(s(1, tid="run-a"))
        bus.publish(s(1, tid="run-b"))
        bus.subscribe(got, training_id="run-b")
        bus.publish(s(2, "done", tid="run-a"))
        bus.publish(s(2, "done", tid="run-b"))
        assert {getattr(i, "training_id", None) for i in got.items} == {"run-b"}
        assert len(got.items) == 2

    def test_duplicates_are_not_forwarded(self, bus: Bus) -> None:
        got = Recorder()
        bus.subscribe(got)
        assert bus.publish(s(1))
        assert bus.publish(s(2, message="again"))
        assert not bus.publish(s(2, message="again"))
        assert not bus.publish(s(1))
        assert [e.seq for e in events(got.items)] == [1, 2]
        assert bus.duplicates == 2

    def test_a_failing_callback_never_reaches_the_publisher(self, bus: Bus) -> None:
        def broken(item: Item) -> None:
            raise RuntimeError("subscriber bug")

        sub = bus.subscribe(broken)
        good = Recorder()
        bus.subscribe(good)
        bus.publish(s(1))
        bus.publish(s(2, "done"))
        assert sub.failures == 2
        assert len(events(good.items)) == 2

    def test_closed_subscription_gets_nothing(self, bus: Bus) -> None:
        got = Recorder()
        with bus.subscribe(got):
            bus.publish(s(1))
        bus.publish(s(2, "done"))
        assert events(got.items) == [s(1)]
        assert bus.subscribers() == 0


class TestTimerThread:
    """With the real clock, the bus's own thread delivers trailing values."""

    def test_trailing_value_arrives_without_another_publish(self) -> None:
        bus = Bus()
        try:
            got = Recorder()
            done = threading.Event()

            def callback(item: Item) -> None:
                got(item)
                if isinstance(item, Progress) and item.step == 99:
                    done.set()

            bus.subscribe(callback)
            for seq in range(1, 100):
                bus.publish(p(seq, step=seq))
            assert done.wait(5.0)
            assert [e.step for e in events(got.items)] == [1, 99]  # type: ignore[union-attr]
        finally:
            bus.close()


class TestResume:
    """A resuming subscriber gets the events after its seq, each once."""

    def test_resume_from_recent_events(self, bus: Bus) -> None:
        for seq in range(1, 21):
            bus.publish(p(seq) if seq % 5 else s(seq))
        got = Recorder()
        bus.subscribe(got, resume={TID: 12})
        assert [e.seq for e in events(got.items)] == list(range(13, 21))
        assert not any(isinstance(i, StateSnapshot) for i in got.items)
        bus.publish(s(20))  # a resend: not delivered again
        bus.publish(s(21, "done"))
        assert [e.seq for e in events(got.items)][-2:] == [20, 21]

    def test_snapshot_when_the_missed_events_are_gone(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False, recent=8)
        for seq in range(1, 31):
            bus.publish(s(seq, message=str(seq)))
        got = Recorder()
        bus.subscribe(got, resume={TID: 5})
        assert isinstance(got.items[-1], StateSnapshot)
        assert got.items[-1].state.last_seq == 30
        assert [e.seq for e in events(got.items)] == list(range(23, 31))

    def test_history_fills_what_memory_lacks(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False, recent=4)
        everything = [s(seq, message=str(seq)) for seq in range(1, 21)]
        for event in everything:
            bus.publish(event)

        async def main() -> list[Item]:
            sub = bus.stream(resume={TID: 3}, history={TID: everything[:16]}, marker=True)
            return await sub.batch()

        items = asyncio.run(main())
        assert [e.seq for e in events(items)] == list(range(4, 21))
        assert isinstance(items[-1], Live)


class TestAsync:
    """The async iterator: items from any thread, rate limited, bounded."""

    def test_async_iteration_with_a_publisher_thread(self) -> None:
        bus = Bus()

        async def main() -> list[Item]:
            got: list[Item] = []
            async with bus.stream() as sub:

                def produce() -> None:
                    bus.publish(s(1))
                    for seq in range(2, 502):
                        bus.publish(p(seq, step=seq))
                    bus.publish(s(502, "done"))

                thread = threading.Thread(target=produce)
                thread.start()
                async for item in sub:
                    got.append(item)
                    if isinstance(item, StatusChanged) and item.status == "done":
                        break
                thread.join()
            return got

        got = asyncio.run(asyncio.wait_for(main(), 10))
        seqs = [e.seq for e in events(got)]
        assert seqs[0] == 1
        assert seqs[-2:] == [501, 502]  # the held progress goes out before the status
        assert len(seqs) < 50
        assert seqs == sorted(seqs)
        assert bus.subscribers() == 0

    def test_trailing_value_wakes_the_iterator(self) -> None:
        bus = Bus()

        async def main() -> list[int]:
            sub = bus.stream()
            for seq in range(1, 11):
                bus.publish(p(seq))
            got = [e.seq for e in events(await sub.batch())]
            started = time.monotonic()
            got += [e.seq for e in events(await sub.batch())]
            assert time.monotonic() - started < 5.0
            sub.close()
            assert await sub.batch() == []
            return got

        assert asyncio.run(main()) == [1, 10]

    def test_stuck_consumer_is_told_to_resync_and_detached(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False, buffer=5, limit=20)

        async def main() -> list[Item]:
            sub = bus.stream()
            other = Recorder()
            bus.subscribe(other)
            for seq in range(1, 51):
                bus.publish(s(2 * seq - 1, message=str(seq)))
                bus.publish(p(2 * seq))
            assert len(events(other.items)) >= 50  # others are not affected
            assert bus.subscribers() == 1
            items = await sub.batch()
            assert await sub.batch() == []
            return items

        items = asyncio.run(main())
        assert len(items) == 1
        assert isinstance(items[0], Resync)
        assert "fell behind" in items[0].reason
        assert bus.overflows == 1

    def test_progress_coalesces_while_a_consumer_lags(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False, buffer=5, limit=1000)

        async def main() -> list[Item]:
            sub = bus.stream()
            for seq in range(1, 7):
                bus.publish(s(seq, message=str(seq)))
            for seq in range(7, 500):
                clock.advance(0.2)  # each would be due on its own
                bus.publish(p(seq))
            items: list[Item] = []
            while True:
                clock.advance(0.2)
                batch = await asyncio.wait_for(sub.batch(3), 5)
                items += batch
                if any(isinstance(e, Progress) for e in batch):
                    return items

        items = asyncio.run(main())
        progress = [e for e in events(items) if isinstance(e, Progress)]
        assert progress == [p(499)]  # one, the latest, once the queue drained


class TestSink:
    """The ``inprocess`` sink publishes a TrainingRun's own event objects."""

    def test_training_run_to_a_subscriber(self) -> None:
        bus = Bus()
        try:
            got = Recorder()
            bus.subscribe(got, interval=0.0)
            recorder = RecordingSink()
            with TrainingRun(TID, sinks=[InProcessSink(bus=bus, interval=0.0), recorder]) as run:
                run.progress(epoch=1)
                run.error("CUDA_OOM", "boom", fatal=False)
            assert [type(e) for e in events(got.items)] == [type(e) for e in recorder.events]
            assert all(a is b for a, b in zip(events(got.items), recorder.events, strict=True))
            assert any(isinstance(e, ErrorReported) for e in events(got.items))
            assert bus.states()[TID].status == "done"
        finally:
            bus.close()

    def test_open_continues_a_run_the_bus_holds(self) -> None:
        bus = Bus(timer=False)
        bus.publish(s(41))
        assert InProcessSink(bus=bus).open(TID) == 41
        assert InProcessSink(bus=bus).open("other") is None

    def test_default_bus_is_shared(self) -> None:
        assert InProcessSink().bus is default_bus()


class TestMemory:
    """The bus keeps a bounded number of runs: ended ones are forgotten first."""

    def test_max_runs(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False, max_runs=4)
        bus.publish(s(1, "running", tid="live-1"))
        for n in range(10):
            bus.publish(s(1, "running", tid=f"ended-{n}"))
            bus.publish(s(2, "done", tid=f"ended-{n}"))
            clock.advance(1)
        kept = set(bus.states())
        assert len(kept) == 4
        assert "live-1" in kept
        assert "ended-9" in kept

    def test_ended_runs_expire(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False, keep_ended=60)
        bus.publish(s(1, "done", tid="old"))
        clock.advance(61)
        bus.publish(s(1, tid="new"))
        assert set(bus.states()) == {"new"}

    def test_expire_without_new_runs_and_lost_runs(self, clock: FakeClock) -> None:
        """expire() forgets ended runs on its own, and lost ones once silent as long."""
        bus = Bus(clock=clock.monotonic, timer=False, keep_ended=60)
        bus.publish(s(1, "done", tid="ended"))
        bus.publish(s(1, tid="lost"))
        bus.publish(s(1, tid="alive"))
        clock.advance(61)
        assert bus.expire(lost={"lost"}) == 2
        assert set(bus.states()) == {"alive"}
        assert bus.recent_used == sum(r.nbytes for r in bus._runs.values())

    def test_recent_events_bounded_in_bytes(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False, recent_bytes=20_000, recent_total=50_000)
        big = "x" * 5_000
        for n in range(6):
            tid = f"run-{n}"
            for seq in range(1, 11):
                bus.publish(s(seq, message=big, tid=tid))
            clock.advance(1)
        runs = bus._runs
        assert all(r.nbytes <= 20_000 for r in runs.values())
        assert bus.recent_used == sum(r.nbytes for r in runs.values())
        assert bus.recent_used <= 50_000
        newest = runs["run-5"]
        assert not newest.reaches(0)  # the oldest were let go: a resume needs the log
        assert newest.reaches(newest.recent[0].seq - 1)


class TestByteBounds:
    """Subscribers are bounded in bytes as in items; past the bound they are dropped once."""

    def test_limit_bytes_drops_with_the_hook(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False, buffer_bytes=20_000, limit_bytes=50_000)
        dropped: list[int] = []

        async def run() -> list[Item]:
            sub = bus.stream()
            sub.on_drop = lambda: dropped.append(1)
            for seq in range(1, 40):
                bus.publish(s(seq, message="y" * 5_000))
            await asyncio.sleep(0)
            return await sub.batch()

        items = asyncio.run(run())
        assert dropped == [1]
        assert isinstance(items[-1], Resync)
        assert bus.subscribers() == 0

    def test_batches_bounded_in_bytes(self, clock: FakeClock) -> None:
        bus = Bus(clock=clock.monotonic, timer=False)

        async def run() -> list[list[Item]]:
            sub = bus.stream(marker=False)
            for seq in range(1, 11):
                bus.publish(s(seq, message="z" * 10_000))
            return [await sub.batch(256, 25_000) for _ in range(5)]

        sizes = [len(events(b)) for b in asyncio.run(run())]
        assert sizes == [2, 2, 2, 2, 2]


class TestEncodedEvents:
    """The shared encode cache is bounded in bytes and lets go of lines with their events."""

    def test_a_cached_line_costs_its_own_size(self) -> None:
        """orjson hands a line over in a buffer of 4 KiB or more: the cache keeps a copy."""
        held = [s(n, message="m") for n in range(1, 501)]
        cache = EncodedEvents()
        cache(s(999))  # the encoder's first call imports what it needs (its line goes with it)
        tracemalloc.start()
        try:
            lines = [cache(event) for event in held]
            traced = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert len(cache) == len(lines) == 500
        assert traced < 500 * 1024, traced  # ~2.5 MB when orjson's buffers are kept

    def test_an_event_freed_while_the_cache_is_busy_goes_at_the_next_call(self) -> None:
        cache = EncodedEvents(max_bytes=100_000)
        event = s(1, message="m" * 100)
        cache(event)
        with cache._lock:  # another thread is in the cache when the event is freed
            del event
            gc.collect()
        assert len(cache) == 1
        other = s(2)
        line = cache(other)
        assert len(cache) == 1
        assert cache.nbytes == len(line)
        assert cache(other) is line

    def test_held_runs_events_are_not_all_kept(self) -> None:
        """What a hub holds of 100 short runs (44 events each), sent once: a moment's worth.

        Each line kept costs a small entry beside it; kept for as long as the
        runs are held, they grew the heap by ~2 MB, which did not come back
        once the runs expired (issue 21).
        """
        held = [
            s(n, message="training " + "x" * 150, tid=f"run-{r:03d}")
            for r in range(100)
            for n in range(1, 45)
        ]
        cache = EncodedEvents()
        cache(s(999))  # the encoder's first call imports what it needs
        tracemalloc.start()
        try:
            for event in held:
                cache(event)  # sent to every subscriber: encoded once
            traced = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        assert 0 < cache.nbytes <= 256 * 1024
        assert traced < 600 * 1024, traced

    def test_freed_with_the_event_and_bounded(self) -> None:
        cache = EncodedEvents(max_bytes=100_000)
        event = s(1, message="m" * 1000)
        line = cache(event)
        assert cache(event) is line
        assert cache.nbytes == len(line)
        del event
        gc.collect()
        assert len(cache) == 0
        assert cache.nbytes == 0
        held = [s(n, message="k" * 5_000) for n in range(1, 60)]
        for event in held:
            cache(event)
        assert 0 < cache.nbytes <= 100_000
        big = s(99, message="h" * 30_000)  # longer than a quarter of the budget: not kept
        cache(big)
        assert cache(big) is not cache(big)
