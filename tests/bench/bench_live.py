"""Benchmark live-by-default (issue 15) with real processes and no configuration.

Run ``python tests/bench/bench_live.py`` (about 1.5 minutes on 2 cores) or with
``--quick`` (seconds; what the smoke test runs). ``--json PATH`` also writes
the figures as JSON. Every part starts a real ``pulse serve`` in a fresh
folder (default home ``.pulse``), producers are ``tests/live/live_producer.py``
processes with no ``PULSE_*`` variable except where said.

1. **latency**: a producer calls ``progress()`` at 50 Hz (400 calls; the
   default hub rate of 10 updates/s per subscriber), noting ``time.time()``
   before each call; a subscriber notes when each value arrives. Reported
   per path: *delivered* -- emit to arrival of the values that arrive (p50,
   p99, max) -- and *fresh* -- for every value emitted, how long until the
   subscriber had it or a newer one (the time a screen lags; its floor is the
   10/s limit). Paths: ``socket`` (the defaults; goal p99 <= 100 ms) and
   ``follow`` (``PULSE_TRANSPORTS=file,v1``: the hub follows the log; goal
   p99 <= 500 ms).
2. **many runs**: 100 runs (one process) report progress and loss at 10/s
   each into the log only (``PULSE_TRANSPORTS=file``) for 10 s while the hub
   follows them all; reported: hub CPU (% of one core) and RSS, and how many
   of the runs a subscriber saw progress of. Goal: CPU <= 5 %.
3. **lost**: a producer with the defaults is SIGKILLed while a subscriber
   watches; reported: time to the ``lost`` snapshot, p50 and max over 20
   trials. Goal: max <= 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "live"))

from livekit import LiveHub, Subscriber, event_of, lost, producer, wait_file

_TICKS = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def ms(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(values, 50) * 1000, 1),
        "p99_ms": round(percentile(values, 99) * 1000, 1),
        "max_ms": round(max(values) * 1000, 1) if values else float("nan"),
    }


def bench_latency(folder: Path, path: str, calls: int, rate: float) -> dict[str, Any]:
    hub = LiveHub(folder).wait_ready()
    try:
        sub = Subscriber(hub.address)
        out = folder / f"sent-{path}.json"
        env = {"PULSE_TRANSPORTS": "file,v1"} if path == "follow" else {}
        proc = producer(folder, "bench", f"lat-{path}", str(calls), str(rate), str(out), **env)
        tid = f"lat-{path}"
        sub.until(lambda o: o.get("training_id") == tid and o.get("status") == "done", 60)
        proc.wait()
        sub.close()
    finally:
        hub.stop()
    sent = {int(k): v for k, v in json.loads(out.read_text()).items()}
    arrivals = [
        (at, obj["step"])
        for at, obj in sub.seen
        if event_of(tid, "progress")(obj) and isinstance(obj.get("step"), int)
    ]
    delivered = [at - sent[step] for at, step in arrivals if step in sent]
    fresh = []
    index = 0
    for step in sorted(sent):
        while index < len(arrivals) and arrivals[index][1] < step:
            index += 1
        if index < len(arrivals):
            fresh.append(arrivals[index][0] - sent[step])
    return {
        "path": path,
        "calls": calls,
        "rate_hz": rate,
        "received": len(arrivals),
        "delivered": ms(delivered),
        "fresh": ms(fresh),
    }


def bench_many(folder: Path, runs: int, seconds: float) -> dict[str, Any]:
    hub = LiveHub(folder).wait_ready()
    try:
        sub = Subscriber(hub.address)
        marker = folder / "many.started"
        proc = producer(
            folder,
            "many",
            "many",
            str(runs),
            "10",
            str(seconds),
            str(marker),
            PULSE_TRANSPORTS="file",
        )
        wait_file(marker, 60)
        time.sleep(1.0)  # past the start-up reads
        before, t0 = hub.pid_stats(), time.monotonic()
        peak = before["rss"]
        while time.monotonic() - t0 < seconds - 2:
            time.sleep(0.5)
            peak = max(peak, hub.pid_stats()["rss"])
        after, t1 = hub.pid_stats(), time.monotonic()
        proc.wait(60)
        sub.drain(0.5)
        seen = {obj["training_id"] for _, obj in sub.seen if obj.get("type") == "progress"}
        sub.close()
    finally:
        hub.stop()
    cpu = (after["ticks"] - before["ticks"]) / _TICKS / (t1 - t0)
    return {
        "runs": runs,
        "seconds": round(t1 - t0, 1),
        "hub_cpu_percent": round(cpu * 100, 2),
        "hub_rss_mb": round(peak / 2**20, 1),
        "runs_seen_live": len(seen),
    }


def bench_lost(folder: Path, trials: int) -> dict[str, Any]:
    hub = LiveHub(folder).wait_ready()
    took = []
    try:
        for trial in range(trials):
            tid = f"kill-{trial}"
            marker = folder / f"{tid}.started"
            proc = producer(folder, "forever", tid, str(marker))
            wait_file(marker, 30)
            sub = Subscriber(hub.address, training_id=tid)
            sub.until(event_of(tid, "progress"), 15)
            killed = time.time()
            proc.kill(signal.SIGKILL)
            took.append(sub.until(lost(tid), 15) - killed)
            sub.close()
    finally:
        hub.stop()
    return {"trials": trials, **ms(took)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    opts = parser.parse_args()
    calls, runs, seconds, trials = (60, 10, 4.0, 2) if opts.quick else (400, 100, 10.0, 20)
    figures: dict[str, Any] = {}
    root = Path(tempfile.mkdtemp(prefix="bl-"))
    try:
        figures["latency"] = []
        for path in ("socket", "follow"):
            folder = root / path
            folder.mkdir()
            row = bench_latency(folder, path, calls, 50.0)
            figures["latency"].append(row)
            print(f"latency {path}: {row}", flush=True)
        (root / "many").mkdir()
        figures["many"] = bench_many(root / "many", runs, seconds)
        print(f"many runs: {figures['many']}", flush=True)
        (root / "lost").mkdir()
        figures["lost"] = bench_lost(root / "lost", trials)
        print(f"lost: {figures['lost']}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if opts.json:
        opts.json.write_text(json.dumps(figures, indent=2))
    socket_row, follow_row = figures["latency"]
    ok = (
        socket_row["delivered"]["p99_ms"] <= 100
        and follow_row["delivered"]["p99_ms"] <= 500
        and figures["many"]["hub_cpu_percent"] <= 5
        and figures["lost"]["max_ms"] <= 2000
    )
    print("goals met" if ok else "a goal was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
