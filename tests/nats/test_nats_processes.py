"""Several training processes report to one NATS server; one subscriber sees them all."""

from __future__ import annotations

import json
from collections import Counter

from natskit import Collector, NatsServer, spawn_producer

from pulse_core.events import ErrorReported, Event, StatusChanged
from pulse_core.reducer import replay_runs
from pulse_transports.nats import NatsSource

RUNS = ("proc.a", "proc.b", "proc.c")
STEPS = 120  # notes every 10 steps (12), errors every 25 (4)


def _notes(events: list[Event], tid: str) -> list[str]:
    return [
        e.message
        for e in events
        if e.training_id == tid and isinstance(e, StatusChanged) and e.message.startswith("note")
    ]


class TestManyProducers:
    """Events of concurrent producer processes reach a live subscriber, whole and in order."""

    def test_one_subscriber_gets_every_run(self, server: NatsServer) -> None:
        collector = Collector(server.url).start()
        try:
            procs = [spawn_producer(server.url, tid, STEPS, 0.01) for tid in RUNS]
            outputs = [p.communicate(timeout=60) for p in procs]
            for proc, (out, err) in zip(procs, outputs, strict=True):
                assert proc.returncode == 0, err
                stats = json.loads(out.strip().splitlines()[-1])
                assert stats["dropped"] == 0
            done = collector.wait_for(
                lambda evs: (
                    sum(isinstance(e, StatusChanged) and e.status == "done" for e in evs)
                    == len(RUNS)
                ),
                timeout=20,
            )
            assert done, "not every run's end reached the subscriber"
        finally:
            collector.stop()
        events = collector.events
        states = replay_runs(events)
        for tid in RUNS:
            mine = [e.seq for e in events if e.training_id == tid]
            assert mine == sorted(set(mine)), "a run's events arrive in seq order, once"
            assert _notes(events, tid) == [f"note {n}" for n in range(1, 13)]
            errors = [
                e.message for e in events if e.training_id == tid and isinstance(e, ErrorReported)
            ]
            assert errors == [f"error {n}" for n in range(1, 5)]
            state = states[tid]
            assert state.status == "done"
            assert state.duplicates == 0
            assert state.anomaly_count == 0
            assert state.step == STEPS

    def test_the_source_recovers_every_run_after_they_ended(self, server: NatsServer) -> None:
        procs = [spawn_producer(server.url, tid, 40, 0.005) for tid in RUNS]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        records = NatsSource(server.url).recover()
        assert sorted(r.training_id for r in records) == sorted(RUNS)
        for record in records:
            assert record.state.status == "done"
            assert record.liveness == "ended"
            assert record.origin in ("kv", "kv+stream")
            assert record.summary["source"] == "nats"
        kinds = Counter(r.state.timeline_count for r in records)
        assert kinds == Counter({2 + 1 + 4: 3})  # preparing, running, 4 notes, done
