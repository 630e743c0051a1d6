"""Subscribers that join late replay a run from any point, then follow it live."""

from __future__ import annotations

import asyncio
import threading
import time

from natskit import NatsServer

from pulse_core.emitter import TrainingRun
from pulse_core.events import Event, StatusChanged
from pulse_core.reducer import Folder
from pulse_transports.nats import (
    NatsOptions,
    NatsSink,
    NatsSource,
    StreamReader,
    connect,
    run_filter,
)


def _finished_run(url: str, tid: str, notes: int) -> None:
    sink = NatsSink(url=url)
    with TrainingRun(tid, sinks=[sink], heartbeat_interval=60) as run:
        for n in range(1, notes + 1):
            run.progress(step=n)
            run.status("running", f"note {n}")


class TestLateReplay:
    """A run that ended is replayed whole, or from a given seq."""

    def test_replay_from_the_start_folds_to_the_same_state(self, server: NatsServer) -> None:
        _finished_run(server.url, "late.one", notes=10)
        source = NatsSource(server.url)
        events = source.replay("late.one")
        folder = Folder()
        for event in events:
            folder.apply(event)
        assert folder.state.status == "done"
        assert folder.state.timeline_count == 2 + 10 + 1
        assert folder.state.duplicates == 0
        assert folder.state.last_seq == source.load_run("late.one").state.last_seq

    def test_replay_after_a_seq_gives_only_newer_events(self, server: NatsServer) -> None:
        _finished_run(server.url, "late.two", notes=6)
        source = NatsSource(server.url)
        every = source.replay("late.two")
        middle = every[len(every) // 2].seq
        later = source.replay("late.two", after=middle)
        assert later == [e for e in every if e.seq > middle]
        assert later
        assert later[0].seq > middle

    def test_another_runs_events_never_mix_in(self, server: NatsServer) -> None:
        _finished_run(server.url, "late.a", notes=2)
        _finished_run(server.url, "late.a.b", notes=3)  # a longer id, same prefix
        assert {e.training_id for e in NatsSource(server.url).replay("late.a")} == {"late.a"}


class TestJoinMidRun:
    """A reader that opens while the run goes on gets its past, then its future, once each."""

    def test_catch_up_then_live(self, server: NatsServer) -> None:
        sink = NatsSink(url=server.url)
        run = TrainingRun("mid.run", sinks=[sink], heartbeat_interval=60)
        for n in range(1, 6):
            run.status("running", f"before {n}")
        assert run.flush()  # the run's writer thread hands the events to the sink
        sink.flush(True)
        got: list[Event] = []
        caught_up = threading.Event()

        async def follow() -> None:
            nc = await connect(NatsOptions(url=server.url))
            try:
                reader = StreamReader(nc.jetstream(), "PULSE_V2", run_filter("mid.run"))
                pending = await reader.open()
                assert pending >= 7
                async for delivery in reader.catch_up():
                    assert delivery.event is not None
                    got.append(delivery.event)
                caught_up.set()
                while not (got and isinstance(got[-1], StatusChanged) and got[-1].status == "done"):
                    live = await reader.next(timeout=10)
                    assert live is not None
                    assert live.event is not None
                    got.append(live.event)
                await reader.close()
            finally:
                await nc.close()

        thread = threading.Thread(target=asyncio.run, args=(follow(),))
        thread.start()
        assert caught_up.wait(10)
        for n in range(1, 6):
            run.status("running", f"after {n}")
            time.sleep(0.01)
        run.close()
        thread.join(15)
        messages = [e.message for e in got if isinstance(e, StatusChanged)]
        assert messages == ["starting"] + [f"before {n}" for n in range(1, 6)] + [
            f"after {n}" for n in range(1, 6)
        ] + ["finished"]
        seqs = [e.seq for e in got]
        assert seqs == sorted(set(seqs))
