"""Benchmark the hub end to end, with real processes: latency, fan-out, a burst.

Run ``python tests/bench/bench_hub.py`` (about 1.5 minutes on 2 cores) or with
``--quick`` (seconds; what the smoke test runs). ``--json PATH`` also writes
the figures as JSON. Every part starts a real ``pulse serve`` process; producers
and subscribers are separate processes too.

1. **latency**: 4 producer processes of 5 runs each report through
   ``TrainingRun`` with the ``socket`` sink (default rate limits), putting
   their wall-clock time in a metric (``run.metrics(sent_at=time.time())``);
   a subscriber process compares it with its own clock on arrival. Cases:
   metrics only at 8/s per run (below the limit: every value is delivered at
   once -- the pipeline alone); ``progress()`` then ``metrics()`` at 8/s (the
   emitter's one deadline per sink holds the second call of a pair back up
   to an interval); and the pair at 100/s (coalesced: the delay of the values
   that are delivered, throttling included). Goal: p50 <= 60 ms and p99 <=
   150 ms.
2. **fan-out**: 20 producer processes call ``progress``/``metrics`` in a tight
   loop (socket sink interval 0.01 s, so the hub may get ten times what it
   may forward), with a status note twice a second and a non-fatal error
   every 2.5 s; 5 subscriber processes count what they get. Reported: the
   events/s the hub received (what the sinks sent), updates/s per
   subscriber, the most updates of one run and stream in any 1 s window (must
   be <= 10, +1 for the window's edges), hub CPU % and peak RSS, and lost
   status/error events (must be 0).
3. **burst**: one raw producer writes 1,000,000 pre-encoded events as fast as
   the hub takes them (a status note every 50), while one subscriber reads
   and one never reads. Reported: hub RSS before / peak / after, events/s,
   status notes the reading subscriber got, whether the stuck one was dropped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICKS = os.sysconf("SC_CLK_TCK")


# --- the hub process -------------------------------------------------------------


class Hub:
    """A ``pulse serve`` process in a temporary home."""

    def __init__(self, home: Path, *args: str) -> None:
        self.home = home
        self.socket = home / "pulse.sock"
        self.err = (home.parent / "hub.err").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pulse_transports.cli", "serve", "--home", str(home), *args],
            stdout=subprocess.PIPE,
            stderr=self.err,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if "listening" not in line:
            raise RuntimeError(f"the hub did not start: {line!r}")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS

    def rss(self) -> int:
        return int(Path(f"/proc/{self.proc.pid}/statm").read_text().split()[1]) * _PAGE

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.err.close()


class Sampler:
    """Samples the hub's RSS in a thread; ``peak`` is the highest seen."""

    def __init__(self, hub: Hub, every: float = 0.05) -> None:
        self.hub, self.every, self.peak = hub, every, hub.rss()
        self.series: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                rss = self.hub.rss()
            except OSError:
                return
            self.peak = max(self.peak, rss)
            self.series.append((time.monotonic(), rss))

    def peak_between(self, start: float, end: float) -> int:
        return max((rss for t, rss in self.series if start <= t <= end), default=0)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def spawn(role: str, params: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--params", json.dumps(params)],
        stdout=subprocess.PIPE,
    )


def wait_ready(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError(f"{proc.args!r} did not start")


def finish(procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


# --- roles (run in child processes) ------------------------------------------------


def role_latency_producer(p: dict[str, Any]) -> None:
    from pulse_core.emitter import TrainingRun
    from pulse_transports.socket import SocketSink

    runs = [
        TrainingRun(
            f"lat-{p['index']}-{r}", sinks=[SocketSink(home=p["home"])], heartbeat_interval=60
        )
        for r in range(p["runs"])
    ]
    print("ready", flush=True)
    period = 1.0 / p["hz"]
    start = time.monotonic()
    for tick in range(p["ticks"]):
        for run in runs:
            if p["with_progress"]:
                run.progress(epoch=1, step=tick)
            run.metrics(loss=1.0 / (tick + 1), sent_at=time.time())
        delay = start + (tick + 1) * period - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    time.sleep(0.3)  # let the last trailing values go before "done"
    for run in runs:
        run.close()


def role_latency_subscriber(p: dict[str, Any]) -> None:
    from pulse_core.events import Metrics, StatusChanged
    from pulse_transports.subscribe import Subscriber

    latencies: list[float] = []
    done: set[str] = set()
    with Subscriber(home=p["home"]) as sub:
        print("ready", flush=True)
        deadline = time.monotonic() + p["timeout"]
        while len(done) < p["runs"] and time.monotonic() < deadline:
            message = sub.recv(1.0)
            now = time.time()
            if isinstance(message, Metrics) and "sent_at" in message.extra:
                latencies.append(now - message.extra["sent_at"])
            elif isinstance(message, StatusChanged) and message.status == "done":
                done.add(message.training_id)
    Path(p["out"]).write_text(json.dumps({"latencies": latencies, "done": len(done)}))


def role_fanout_producer(p: dict[str, Any]) -> None:
    from pulse_core.emitter import TrainingRun
    from pulse_core.events import ErrorReported, StatusChanged
    from pulse_core.testing import RecordingSink
    from pulse_transports.socket import SocketSink

    tid = f"fan-{p['index']}"
    # Counts exactly the statuses and errors the emitter sent (those are never
    # rate limited); its long interval keeps progress off its path.
    record = RecordingSink(interval=60.0)
    sink = SocketSink(home=p["home"], interval=p["interval"], close_timeout=30.0)
    run = TrainingRun(tid, sinks=[sink, record], heartbeat_interval=60)
    print("ready", flush=True)
    start = time.monotonic()
    end = start + p["seconds"]
    i = notes = 0
    while (now := time.monotonic()) < end:
        for _ in range(200):
            i += 1
            run.progress(epoch=1, step=i)
            run.metrics(loss=1.0 / i)
        if now >= start + notes * 0.5:  # a status note twice a second, an error every 2.5 s
            notes += 1
            run.status("running", f"note {notes}")
            if notes % 5 == 0:
                run.error("OUT_OF_MEMORY", f"soft error {notes}", is_retryable=True, fatal=False)
            # keep the record sink's memory flat: only status/error counts matter
            record.events = [
                e for e in record.events if isinstance(e, StatusChanged | ErrorReported)
            ]
    run.close()
    statuses = sum(isinstance(e, StatusChanged) for e in record.events)
    errors = sum(isinstance(e, ErrorReported) for e in record.events)
    Path(p["out"]).write_text(
        json.dumps(
            {"tid": tid, "statuses": statuses, "errors": errors, "calls": i, "sent": sink.sent}
        )
    )


def role_fanout_subscriber(p: dict[str, Any]) -> None:
    from pulse_core.events import ErrorReported, Event, StatusChanged
    from pulse_transports.subscribe import Subscriber

    times: dict[str, list[float]] = defaultdict(list)  # "tid/type" -> arrival times
    statuses: dict[str, int] = defaultdict(int)
    errors: dict[str, int] = defaultdict(int)
    done: set[str] = set()
    with Subscriber(home=p["home"]) as sub:
        print("ready", flush=True)
        deadline = time.monotonic() + p["timeout"]
        while len(done) < p["runs"] and time.monotonic() < deadline:
            message = sub.recv(1.0)
            if not isinstance(message, Event):
                continue
            tid = message.training_id
            if isinstance(message, StatusChanged):
                statuses[tid] += 1
                if message.status == "done":
                    done.add(tid)
            elif isinstance(message, ErrorReported):
                errors[tid] += 1
            else:
                times[f"{tid}/{type(message).__name__}"].append(time.monotonic())
    Path(p["out"]).write_text(
        json.dumps({"times": times, "statuses": statuses, "errors": errors, "done": len(done)})
    )


def role_burst_producer(p: dict[str, Any]) -> None:
    from pulse_transports.wire import hello_line

    tid = "burst"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(Path(p["home"]) / "pulse.sock"))
    sock.sendall(hello_line("producer", training_id=tid))
    sock.recv(65536)  # the welcome
    print("ready", flush=True)
    now = time.time()
    head = (
        f'{{"type":"meta","v":2,"training_id":"{tid}","seq":1,"timestamp":{now}}}\n'
        f'{{"type":"status","v":2,"training_id":"{tid}","seq":2,"timestamp":{now},'
        f'"status":"running","message":"burst"}}\n'
    ).encode()
    sock.sendall(head)
    envelope = '{"type":"%s","v":2,"training_id":"burst","seq":%%d,"timestamp":%%.3f,'
    progress = envelope % "progress" + '"epoch":1,"step":%d}\n'
    metrics = envelope % "metrics" + '"loss":%.6f}\n'
    note = envelope % "status" + '"status":"running","message":"note %d"}\n'
    seq, total, notes = 2, p["events"], 0
    while seq < total - 1:
        chunk = []
        for _ in range(2000):
            seq += 1
            if seq % 50 == 0:
                notes += 1
                chunk.append(note % (seq, now, seq))
            elif seq % 2:
                chunk.append(progress % (seq, now, seq))
            else:
                chunk.append(metrics % (seq, now, 1.0 / seq))
            if seq >= total - 1:
                break
        sock.sendall("".join(chunk).encode())
    seq += 1
    done = envelope % "status" + '"status":"done","message":"end"}\n'
    sock.sendall((done % (seq, now)).encode())
    sock.shutdown(socket.SHUT_WR)
    sock.recv(1)
    sock.close()
    print(json.dumps({"events": seq, "notes": notes}), flush=True)


def role_burst_subscriber(p: dict[str, Any]) -> None:
    from pulse_core.events import Event, StatusChanged
    from pulse_transports.subscribe import Subscriber

    notes = updates = 0
    finished_at = None
    with Subscriber(home=p["home"], training_id="burst") as sub:
        print("ready", flush=True)
        deadline = time.monotonic() + p["timeout"]
        while time.monotonic() < deadline:
            message = sub.recv(1.0)
            if isinstance(message, StatusChanged):
                if message.message.startswith("note"):
                    notes += 1
                if message.status == "done":
                    finished_at = time.time()
                    break
            elif isinstance(message, Event):
                updates += 1
    Path(p["out"]).write_text(
        json.dumps({"notes": notes, "updates": updates, "finished_at": finished_at})
    )


ROLES = {
    "latency-producer": role_latency_producer,
    "latency-subscriber": role_latency_subscriber,
    "fanout-producer": role_fanout_producer,
    "fanout-subscriber": role_fanout_subscriber,
    "burst-producer": role_burst_producer,
    "burst-subscriber": role_burst_subscriber,
}


# --- the parts ---------------------------------------------------------------------


def bench_latency(
    work: Path, updates: int, producers: int, runs: int, hz: float, with_progress: bool
) -> dict[str, Any]:
    name = f"lat-{hz:g}-{'pm' if with_progress else 'm'}"
    home = work / name
    hub = Hub(home)
    try:
        out = home.parent / f"{name}.json"
        sub = spawn(
            "latency-subscriber",
            {"home": str(home), "runs": producers * runs, "timeout": 300, "out": str(out)},
        )
        wait_ready(sub)
        # enough calls that at least *updates* values are delivered
        delivered_hz = min(hz, 10.0)
        ticks = math.ceil(updates * 1.1 / (producers * runs) * hz / delivered_hz)
        procs = [
            spawn(
                "latency-producer",
                {
                    "home": str(home),
                    "index": i,
                    "runs": runs,
                    "hz": hz,
                    "ticks": ticks,
                    "with_progress": with_progress,
                },
            )
            for i in range(producers)
        ]
        for proc in procs:
            wait_ready(proc)
        started = time.monotonic()
        finish(procs, ticks / hz + 60)
        finish([sub], 60)
        elapsed = time.monotonic() - started
        data = json.loads(out.read_text())
    finally:
        hub.stop()
    ms = [x * 1000 for x in data["latencies"]]
    return {
        "case": f"{hz:g}/s per run, {producers}x{runs} runs, "
        + ("progress() then metrics(sent_at)" if with_progress else "metrics(sent_at) only"),
        "samples": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else None,
        "seconds": round(elapsed, 1),
        "ok": len(ms) >= updates and percentile(ms, 50) <= 60 and percentile(ms, 99) <= 150,
    }


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most of *times* (sorted) in any *window* seconds."""
    best = lo = 0
    for hi, t in enumerate(times):
        while t - times[lo] > window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def bench_fanout(
    work: Path, producers: int, subscribers: int, seconds: float, interval: float
) -> dict[str, Any]:
    home = work / "fan"
    hub = Hub(home)
    try:
        subs, sub_out = [], []
        for i in range(subscribers):
            out = home.parent / f"fan-sub-{i}.json"
            sub_out.append(out)
            subs.append(
                spawn(
                    "fanout-subscriber",
                    {
                        "home": str(home),
                        "runs": producers,
                        "timeout": seconds + 120,
                        "out": str(out),
                    },
                )
            )
        for proc in subs:
            wait_ready(proc)
        prod_out = [home.parent / f"fan-prod-{i}.json" for i in range(producers)]
        procs = [
            spawn(
                "fanout-producer",
                {
                    "home": str(home),
                    "index": i,
                    "seconds": seconds,
                    "interval": interval,
                    "out": str(prod_out[i]),
                },
            )
            for i in range(producers)
        ]
        for proc in procs:
            wait_ready(proc)
        sampler = Sampler(hub, every=0.2)
        cpu0, t0 = hub.cpu_seconds(), time.monotonic()
        finish(procs, seconds + 90)
        cpu1, t1 = hub.cpu_seconds(), time.monotonic()
        peak = sampler.stop()
        finish(subs, 120)
    finally:
        hub.stop()
    sent = {d["tid"]: d for d in (json.loads(p.read_text()) for p in prod_out)}
    per_sub = []
    lost_status = lost_error = 0
    worst = 0
    stream_rates: list[float] = []
    for out in sub_out:
        data = json.loads(out.read_text())
        streams = data["times"]
        updates = sum(len(v) for v in streams.values())
        spans = [v[-1] - v[0] for v in streams.values() if len(v) > 1]
        per_sub.append(round(updates / (max(spans) if spans else 1.0), 1))
        stream_rates += [(len(v) - 1) / (v[-1] - v[0]) for v in streams.values() if len(v) > 1]
        worst = max([worst, *(max_in_window(times) for times in streams.values())])
        for tid, d in sent.items():
            lost_status += d["statuses"] - data["statuses"].get(tid, 0)
            lost_error += d["errors"] - data["errors"].get(tid, 0)
    calls = sum(d["calls"] for d in sent.values())
    return {
        "producers": producers,
        "subscribers": subscribers,
        "seconds": round(t1 - t0, 1),
        "producer_calls_per_s": round(calls / (t1 - t0)),
        "hub_in_events_per_s": round(sum(d["sent"] for d in sent.values()) / (t1 - t0)),
        "status_events": sum(d["statuses"] for d in sent.values()),
        "error_events": sum(d["errors"] for d in sent.values()),
        "updates_per_s_per_subscriber": per_sub,
        "updates_per_s_per_run_stream": round(sum(stream_rates) / max(1, len(stream_rates)), 2),
        "max_per_run_stream_in_1s": worst,
        "hub_cpu_percent": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "hub_peak_rss_mb": round(peak / 2**20, 1),
        "lost_status": lost_status,
        "lost_error": lost_error,
        "ok": lost_status == 0 and lost_error == 0 and worst <= 11,
    }


def bench_burst(work: Path, events: int) -> dict[str, Any]:
    home = work / "burst"
    hub = Hub(home)
    try:
        out = home.parent / "burst-sub.json"
        sub = spawn("burst-subscriber", {"home": str(home), "timeout": 600, "out": str(out)})
        wait_ready(sub)
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(str(home / "pulse.sock"))
        stuck.sendall(b'{"hello":"pulse","role":"subscriber","protocol":2}\n')
        time.sleep(0.3)
        before = hub.rss()
        sampler = Sampler(hub)
        producer = spawn("burst-producer", {"home": str(home), "events": events})
        wait_ready(producer)
        started, mono0 = time.time(), time.monotonic()
        cpu0 = hub.cpu_seconds()
        assert producer.stdout is not None
        sent = json.loads(producer.stdout.readline())
        finish([producer, sub], 600)
        cpu1 = hub.cpu_seconds()
        peak = sampler.stop()
        after = hub.rss()
        data = json.loads(out.read_text())
        mono1 = mono0 + ((data["finished_at"] or time.time()) - started)
        middle = (mono0 + mono1) / 2
        first_half = sampler.peak_between(mono0, middle)
        second_half = sampler.peak_between(middle, mono1)
        stuck.settimeout(10)
        tail = b""
        try:
            while chunk := stuck.recv(1 << 20):
                tail = (tail + chunk)[-4096:]
        except OSError:
            pass
        stuck.close()
    finally:
        hub.stop()
    took = (data["finished_at"] or time.time()) - started
    return {
        "events": sent["events"],
        "seconds": round(took, 1),
        "events_per_s": round(sent["events"] / took),
        "hub_cpu_percent": round(100 * (cpu1 - cpu0) / took, 1),
        "rss_before_mb": round(before / 2**20, 1),
        "rss_peak_mb": round(peak / 2**20, 1),
        "rss_peak_1st_half_mb": round(first_half / 2**20, 1),
        "rss_peak_2nd_half_mb": round(second_half / 2**20, 1),
        "rss_after_mb": round(after / 2**20, 1),
        "notes_sent": sent["notes"],
        "notes_received": data["notes"],
        "updates_received": data["updates"],
        "stuck_subscriber_resynced": b'"resync"' in tail,
        "ok": data["notes"] == sent["notes"] and peak - before < 64 * 2**20,
    }


def table(title: str, rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(str(r[k])) for r in rows)) for k in keys}
    lines = [title, "  ".join(k.ljust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=sorted(ROLES), help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--latency-updates", type=int, default=2000)
    parser.add_argument("--fanout-producers", type=int, default=20)
    parser.add_argument("--fanout-subscribers", type=int, default=5)
    parser.add_argument("--fanout-seconds", type=float, default=15.0)
    parser.add_argument("--fanout-interval", type=float, default=0.01, help="socket sink interval")
    parser.add_argument("--burst-events", type=int, default=1_000_000)
    parser.add_argument(
        "--only",
        choices=("latency", "fanout", "burst"),
        action="append",
        help="run only these parts",
    )
    args = parser.parse_args()
    if args.role:
        ROLES[args.role](json.loads(args.params))
        return 0
    if args.quick:
        args.latency_updates, args.fanout_producers, args.fanout_subscribers = 100, 3, 2
        args.fanout_seconds, args.burst_events = 2.0, 20_000
    parts = set(args.only or ("latency", "fanout", "burst"))
    work = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    result: dict[str, Any] = {"cpus": os.cpu_count()}
    try:
        if "latency" in parts:
            n = args.latency_updates
            result["latency"] = [
                bench_latency(work, n, 4, 5, 8.0, with_progress=False),
                bench_latency(work, n, 4, 5, 8.0, with_progress=True),
                bench_latency(work, n, 4, 5, 100.0, with_progress=True),
            ]
            print(
                table(
                    "latency: TrainingRun in a producer process -> subscriber process"
                    " (goal p50 <= 60 ms, p99 <= 150 ms)",
                    result["latency"],
                ),
                end="\n\n",
                flush=True,
            )
        if "fanout" in parts:
            result["fanout"] = bench_fanout(
                work,
                args.fanout_producers,
                args.fanout_subscribers,
                args.fanout_seconds,
                args.fanout_interval,
            )
            print(
                table(
                    "fan-out: tight-loop producers, every subscriber gets every run"
                    " (limit 10/s per run and stream)",
                    [result["fanout"]],
                ),
                end="\n\n",
                flush=True,
            )
        if "burst" in parts:
            result["burst"] = bench_burst(work, args.burst_events)
            print(
                table(
                    "burst: one producer, raw protocol, one reading and one stuck subscriber",
                    [result["burst"]],
                ),
                end="\n\n",
                flush=True,
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    rows = [*result.get("latency", []), *(result[k] for k in ("fanout", "burst") if k in result)]
    ok = all(row["ok"] for row in rows)
    print("all goals met" if ok else "SOME GOALS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
