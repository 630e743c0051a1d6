"""A server restart mid-run: producers reconnect; no status or error is lost or doubled."""

from __future__ import annotations

import json
import time
from collections import Counter

from natskit import Collector, NatsServer, spawn_producer, stream_state

from pulse_core.events import ErrorReported, StatusChanged
from pulse_transports.nats import NatsSource, run_filter

STEPS = 300  # ~3 s at 0.01 s a step: notes every 5 steps (60), errors every 20 (15)


class TestServerRestart:
    """Killing and restarting the server mid-run loses and duplicates nothing kept."""

    def test_runs_survive_a_killed_server(self, server: NatsServer) -> None:
        runs = ("restart.a", "restart.b")
        collector = Collector(server.url).start()  # a live subscriber through the restart
        procs = [spawn_producer(server.url, tid, STEPS, 0.01, 5, 20) for tid in runs]
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "started"
        time.sleep(0.8)
        server.restart(kill=True, pause=0.7)
        stats = []
        for proc in procs:
            out, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
            stats.append(json.loads(out.strip().splitlines()[-1]))
        assert all(s["dropped"] == 0 for s in stats)
        assert all(s["disconnects"] > 0 for s in stats), "the restart went unnoticed"

        ended = collector.wait_for(
            lambda evs: sum(isinstance(e, StatusChanged) and e.status == "done" for e in evs) == 2,
            timeout=30,
        )
        collector.stop()
        assert ended, "the live subscriber missed the runs' ends"
        live = collector.events
        for tid in runs:
            mine = [e for e in live if e.training_id == tid]
            seqs = [e.seq for e in mine]
            assert seqs == sorted(set(seqs)), "the subscriber got each event once, in order"
            notes = [e.message for e in mine if isinstance(e, StatusChanged)]
            assert notes[-1] == "finished"
            assert [n for n in notes if n.startswith("note")] == [
                f"note {n}" for n in range(1, STEPS // 5 + 1)
            ]

        source = NatsSource(server.url)
        for tid in runs:
            events = source.replay(tid)
            seqs = [e.seq for e in events]
            assert seqs == sorted(set(seqs)), "no duplicates, in order, after dedupe"
            notes = [e.message for e in events if isinstance(e, StatusChanged)]
            assert notes == ["starting", "training started"] + [
                f"note {n}" for n in range(1, STEPS // 5 + 1)
            ] + ["finished"]
            errors = [e.message for e in events if isinstance(e, ErrorReported)]
            assert errors == [f"error {n}" for n in range(1, STEPS // 20 + 1)]
            record = source.load_run(tid)
            assert record.state.status == "done"
            assert record.state.duplicates == 0
            subjects = stream_state(server.url, subjects=run_filter(tid)).subjects
            kept = {s: n for s, n in subjects.items() if ".status." in s or ".error." in s}
            assert len(kept) == len(notes) + len(errors)
            assert Counter(kept.values()) == Counter({1: len(kept)})
