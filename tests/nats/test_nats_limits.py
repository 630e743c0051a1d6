"""The stream's limits keep a long run's storage bounded while every kept event stays."""

from __future__ import annotations

from natskit import NatsServer, stream_state

from pulse_core.emitter import TrainingRun
from pulse_core.events import StatusChanged
from pulse_core.testing import FakeClock
from pulse_transports.nats import NatsSink, NatsSource, run_filter, run_token

LIMIT = 20


def _long_run(url: str, tid: str, steps: int, **options: object) -> NatsSink:
    """A run of *steps* fake 0.5 s steps: progress and metrics every step, a note every 100."""
    clock = FakeClock()
    sink = NatsSink(url=url, max_msgs_per_subject=LIMIT, queue=100_000, **options)  # type: ignore[arg-type]
    run = TrainingRun(
        tid,
        sinks=[sink],
        clock=clock.monotonic,
        wall=clock.time,
        background=False,
        heartbeat_interval=5.0,
    )
    for step in range(1, steps + 1):
        clock.advance(0.5)
        run.progress(epoch=1, step=step, total_steps=steps)
        run.metrics(loss=1.0 / step)
        if step % 100 == 0:
            run.status("running", f"note {step // 100}")
        if step % 50 == 0:
            run.tick()
        sink.flush(True)  # keep pace: every value is published, none coalesced
    run.close()
    return sink


class TestPerSubjectLimit:
    """Sampled kinds keep the latest values only; kept kinds keep everything."""

    def test_a_long_run_is_bounded(self, server: NatsServer) -> None:
        sink = _long_run(server.url, "long.run", steps=1500)
        assert sink.published > 3000, "every sample went out: the limit did the bounding"
        state = stream_state(server.url, subjects=run_filter("long.run"))
        token = run_token("long.run")
        subjects = state.subjects
        assert subjects[f"pulse.v2.{token}.progress"] == LIMIT
        assert subjects[f"pulse.v2.{token}.metrics"] == LIMIT
        statuses = [s for s in subjects if ".status." in s]
        assert len(statuses) == 2 + 15 + 1  # preparing, running, 15 notes, done
        assert state.messages <= 2 * LIMIT + len(statuses) + 1 + LIMIT  # + meta + heartbeats
        events = NatsSource(server.url).replay("long.run")
        notes = [e.message for e in events if isinstance(e, StatusChanged)]
        assert notes[2:-1] == [f"note {n}" for n in range(1, 16)]

    def test_the_bucket_keeps_the_whole_history(self, server: NatsServer) -> None:
        _long_run(server.url, "long.kv", steps=600)
        record = NatsSource(server.url).load_run("long.kv")
        assert record.state.status == "done"
        assert record.state.history["loss"].count > 25 * LIMIT  # the stream holds LIMIT
        assert record.state.step == 600


class TestStreamLimits:
    """The stream is created with its age and byte limits, discarding old messages."""

    def test_max_bytes_bounds_the_stream(self, server: NatsServer) -> None:
        for n in range(4):
            _long_run(server.url, f"bytes.{n}", steps=300, max_bytes=16 * 1024)
        state = stream_state(server.url)
        assert state.bytes <= 16 * 1024
        assert state.first_seq > 1  # the oldest went

    def test_configured_limits_reach_the_server(self, server: NatsServer) -> None:
        import asyncio

        from pulse_transports.nats import NatsOptions, connect

        _long_run(server.url, "cfg.run", steps=10, max_age=3600.0, duplicate_window=60.0)

        async def config() -> object:
            nc = await connect(NatsOptions(url=server.url))
            try:
                return (await nc.jetstream().stream_info("PULSE_V2")).config
            finally:
                await nc.close()

        cfg = asyncio.run(config())
        assert cfg.max_msgs_per_subject == LIMIT  # type: ignore[attr-defined]
        assert cfg.max_age == 3600.0  # type: ignore[attr-defined]
        assert cfg.duplicate_window == 60.0  # type: ignore[attr-defined]
        discard = cfg.discard  # type: ignore[attr-defined]
        assert getattr(discard, "value", discard) == "old"
