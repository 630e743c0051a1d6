"""The nats sink against a real server: what it stores, where, and how it waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
from natskit import NatsServer, free_port, stream_state

from pulse_core.emitter import TrainingRun
from pulse_core.events import StatusChanged
from pulse_transports.nats import (
    NatsOptions,
    NatsSink,
    NatsSource,
    connect,
    history_key,
    read_document,
    run_filter,
    run_token,
)


def _kv_get(url: str, key: str) -> bytes | None:
    async def get() -> bytes | None:
        nc = await connect(NatsOptions(url=url))
        try:
            kv = await nc.jetstream().key_value("pulse_runs")
            return (await kv.get(key)).value
        finally:
            await nc.close()

    return asyncio.run(get())


def _short_run(url: str, tid: str, **sink_options: object) -> NatsSink:
    sink = NatsSink(url=url, **sink_options)  # type: ignore[arg-type]
    with TrainingRun(tid, sinks=[sink], total_epochs=2, heartbeat_interval=60) as run:
        for epoch in (1, 2):
            for step in range(20):
                run.progress(epoch=epoch, step=step, total_steps=20)
                run.metrics(loss=1.0 / (epoch * 20 + step + 1), lr=0.01)
                time.sleep(0.003)
            run.status("running", f"epoch {epoch} done")
    return sink


class TestWhatIsStored:
    """Kept events get a subject each, samples share one, and the bucket has the run."""

    def test_subjects_of_a_run(self, server: NatsServer) -> None:
        sink = _short_run(server.url, "store.run-1")
        assert sink.published > 0
        assert sink.duplicates == 0
        subjects = stream_state(server.url, subjects=run_filter("store.run-1")).subjects
        token = run_token("store.run-1")
        assert subjects[f"pulse.v2.{token}.meta.1"] == 1
        statuses = sorted(s for s in subjects if ".status." in s)
        assert len(statuses) == 5  # preparing, running, 2 epoch notes, done
        assert set(subjects[s] for s in statuses) == {1}
        assert subjects[f"pulse.v2.{token}.progress"] >= 2
        assert subjects[f"pulse.v2.{token}.metrics"] >= 2

    def test_the_bucket_holds_the_final_state_view_and_v1(self, server: NatsServer) -> None:
        _short_run(server.url, "store.run-2")
        token = run_token("store.run-2")
        raw = _kv_get(server.url, token)
        assert raw is not None
        doc = orjson.loads(raw)
        assert doc["view"]["status"] == "done"
        assert doc["v1"]["status"] == "done"
        assert doc["v1"]["total_epochs"] == 2
        stored = read_document(raw, _kv_get(server.url, history_key(token)))
        assert stored.state.status == "done"
        assert stored.state.history["loss"].count >= 2
        replayed = NatsSource(server.url).load_run("store.run-2")
        assert replayed.origin == "kv"
        assert replayed.state.last_seq == stored.state.last_seq

    def test_a_retried_publish_is_deduplicated(self, server: NatsServer) -> None:
        sink = NatsSink(url=server.url)
        run = TrainingRun("store.dup", sinks=[sink], heartbeat_interval=60)
        sink.write(run.meta)  # the same event again, as a retry would send it
        sink.flush(True)
        run.close()
        assert sink.duplicates == 1
        events = NatsSource(server.url).replay("store.dup")
        assert [e.seq for e in events] == sorted({e.seq for e in events})

    def test_a_continued_run_goes_on_after_the_stored_seq(self, server: NatsServer) -> None:
        first = NatsSink(url=server.url)
        with TrainingRun("store.again", sinks=[first], heartbeat_interval=60) as run:
            run.progress(step=1)
        last = NatsSource(server.url).load_run("store.again").state.last_seq
        second = NatsSink(url=server.url)
        assert second.open("store.again") == last
        second.close()


class TestUnreachableServer:
    """Training never waits for a server that is down, and the queue reaches it later."""

    def test_events_wait_for_a_late_server(self, start_server: Callable[..., NatsServer]) -> None:
        port = free_port()
        sink = NatsSink(url=f"nats://127.0.0.1:{port}", connect_timeout=0.5, close_timeout=15)
        started = time.monotonic()
        run = TrainingRun("late.server", sinks=[sink], heartbeat_interval=60)
        assert time.monotonic() - started < 2.0, "opening waits at most about connect_timeout"
        for n in range(1, 31):
            run.progress(step=n)
            run.status("running", f"note {n}")
        assert run.flush()  # the run's writer thread hands the events to the sink
        assert sink.queued() > 30
        assert not sink.connected
        server = start_server(port=port)
        run.close()
        assert sink.connects >= 1
        events = NatsSource(server.url).replay("late.server")
        notes = [e.message for e in events if isinstance(e, StatusChanged)]
        assert notes == ["starting", "training started"] + [f"note {n}" for n in range(1, 31)] + [
            "finished"
        ]
        assert sink.dropped == 0

    def test_close_gives_up_on_a_server_that_never_came(self) -> None:
        sink = NatsSink(url=f"nats://127.0.0.1:{free_port()}", connect_timeout=0.3, close_timeout=1)
        run = TrainingRun("never.server", sinks=[sink], heartbeat_interval=60)
        run.status("running", "x")
        started = time.monotonic()
        run.close()
        assert time.monotonic() - started < 6.0
        assert sink.queued() > 0
        assert "cannot reach NATS" in sink.last_error
