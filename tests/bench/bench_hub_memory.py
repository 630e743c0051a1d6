"""Benchmark the hub's memory over many runs and under a stuck subscriber (issues 21.3, 16.3).

Run ``python tests/bench/bench_hub_memory.py`` (a few minutes on 2 cores) or
with ``--quick`` (seconds; what the smoke test runs). ``--json PATH`` also
writes the figures as JSON. Every part starts a real ``pulse serve`` process.

1. **runs**: producer processes run short runs one after another through
   ``TrainingRun`` with the default transports (file log, v1 file, socket to
   the hub), so the hub hears each run twice (socket and log follow), with a
   socket subscriber reading throughout (no web client: the soak,
   ``bench_soak.py``, measures hub RSS with ``/events`` clients). The
   hub keeps ended runs ``keep_ended`` seconds (``pulse serve --keep-ended``,
   shortened here), and collects the home (retention) every
   ``--retention-every`` seconds, so that a pass over every run's log also
   follows the runs, as it does in a hub that lives on. Reported: hub RSS
   after the first 10 runs have expired (the base), the peak over all runs
   and once they ended, and RSS once every run has expired. Goals: peak <=
   100 MiB; after expiry within 10 % of the base.
2. **stuck**: a socket subscriber that never reads (small receive buffer)
   while a raw producer sends ``--big`` error events of 400 KB, then a
   reading subscriber that leaves. Reported: hub RSS peak (goal <= 200 MB),
   whether the stuck subscriber was closed by the hub, RSS after every
   subscriber left (the run still held), and once the run ended and expired.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from bench_hub import Hub, Sampler

MIB = 1024 * 1024


def producer(params: dict[str, Any]) -> None:
    """A training process running *runs* short runs one after another."""
    from pulse_core.emitter import TrainingRun

    prefix, runs, steps = params["prefix"], params["runs"], params["steps"]
    for n in range(runs):
        with TrainingRun(f"{prefix}-{n:04d}", name=f"short run {n}", total_steps=steps) as run:
            run.status("running", "training " + "x" * 200)
            for step in range(1, steps + 1):
                run.progress(epoch=1, step=step, total_steps=steps)
                run.metrics(loss=1.0 / step, accuracy=step / steps, lr=1e-3)
            run.status("cooling_down", "saving")
    print("done", flush=True)


def _spawn(role: str, params: dict[str, Any], **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, "--params", json.dumps(params)], **kwargs
    )


def _reader(hub: Hub) -> socket.socket:
    """A socket subscriber that reads everything, in a thread."""
    import threading

    from pulse_transports.wire import hello_line

    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(hub.socket))
    sock.sendall(hello_line("subscriber"))

    def drain() -> None:
        try:
            while sock.recv(1 << 16):
                pass
        except OSError:
            pass

    threading.Thread(target=drain, daemon=True).start()
    return sock


def _settle(hub: Hub, seconds: float, window: float = 1.0) -> int:
    """Wait, then the lowest RSS seen in the last *window* seconds.

    RSS wobbles with the allocator, and a retention pass (every
    ``--retention-every`` seconds) holds a few MiB while it reads: the window
    is longer than one pass, so the level at rest is read.
    """
    time.sleep(max(0.0, seconds - window))
    lows = []
    for _ in range(round(window / 0.2)):
        lows.append(hub.rss())
        time.sleep(0.2)
    return min(lows)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    """Set an environment variable (for a process started meanwhile)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _rss_split(hub: Hub) -> dict[str, float]:
    """The hub's resident memory by kind (MiB): anonymous (heaps) and file-backed (code)."""
    split = {}
    for line in Path(f"/proc/{hub.proc.pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem"):
            split[key] = round(int(value.split()[0]) / 1024, 1)
    return split


def _threads(hub: Hub) -> int:
    """The hub's threads now (worker pools grow with concurrent work)."""
    return len(os.listdir(f"/proc/{hub.proc.pid}/task"))


def runs_case(
    total: int, producers: int, steps: int, keep_ended: float, retention_every: float
) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="pm-"))
    home = scratch / "home"
    env = {**os.environ, "PULSE_HOME": str(home)}
    # The hub alone gets the retention interval (its first pass: after it or 60 s).
    options = json.dumps({"retention": {"interval": retention_every}})
    with _environ("PULSE_TRANSPORT_OPTIONS", options):
        hub = Hub(home, "--keep-ended", str(keep_ended))
    sampler = Sampler(hub, every=0.1)
    reader = _reader(hub)
    try:
        first = _spawn("producer", {"prefix": "warm", "runs": 10, "steps": steps}, env=env)
        first.wait(120)
        base = _settle(hub, keep_ended + 6.0, window=3.0)  # the 10 runs have expired
        threads_base, split_base = _threads(hub), _rss_split(hub)
        start = time.monotonic()
        per = total // producers
        procs = [
            _spawn(
                "producer",
                {"prefix": f"p{n}", "runs": per, "steps": steps},
                env=env,
                stdout=subprocess.PIPE,
            )
            for n in range(producers)
        ]
        for proc in procs:
            proc.wait(1800)
        ended = time.monotonic()
        elapsed = ended - start
        peak = sampler.peak
        after = _settle(hub, keep_ended + 6.0, window=3.0)
        # What the hub allocates once the runs have ended (expiry, retention, trims).
        peak_after = sampler.peak_between(ended, time.monotonic())
        threads_after, split_after = _threads(hub), _rss_split(hub)
        load = os.getloadavg()[0]
    finally:
        sampler.stop()
        reader.close()
        hub.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "runs": 10 + per * producers,
        "seconds": round(elapsed, 1),
        "base_mib": round(base / MIB, 1),
        "peak_mib": round(peak / MIB, 1),
        "after_expiry_mib": round(after / MIB, 1),
        "after_vs_base": round(after / base, 3),
        "peak_after_runs_mib": round(peak_after / MIB, 1),
        # the machine's 1-minute load average at the end (the figures move with it)
        "load": round(load, 1),
        "retention_every_s": retention_every,
        # each worker thread the hub starts keeps a stack and a malloc arena
        "threads_base": threads_base,
        "threads_after": threads_after,
        "rss_split_base_mib": split_base,
        "rss_split_after_mib": split_after,
    }


def stuck_case(count: int, size: int) -> dict[str, Any]:
    from pulse_core.codec import encode, to_dict
    from pulse_core.events import ErrorReported, RunMeta, StatusChanged
    from pulse_transports.wire import hello_line

    scratch = Path(tempfile.mkdtemp(prefix="pm-"))
    home = scratch / "home"
    hub = Hub(home, "--keep-ended", "3")
    sampler = Sampler(hub, every=0.05)
    base = hub.rss()
    stuck = socket.socket(socket.AF_UNIX)
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect(str(hub.socket))
    stuck.sendall(hello_line("subscriber"))
    reader = _reader(hub)
    prod = socket.socket(socket.AF_UNIX)
    prod.connect(str(hub.socket))
    tid = "big-run"
    prod.sendall(hello_line("producer", training_id=tid))
    prod.recv(4096)
    try:
        prod.sendall(encode(RunMeta(training_id=tid, seq=1, timestamp=time.time())))
        blob = "e" * size
        for seq in range(2, count + 2):
            event = ErrorReported(
                training_id=tid,
                seq=seq,
                timestamp=time.time(),
                error_code="UNHANDLED_EXCEPTION",
                message="big",
                details={"blob": blob},
            )
            # Unbounded (encode() would cut it to 64 KiB): a hostile or foreign producer.
            prod.sendall(orjson.dumps(to_dict(event)) + b"\n")
        time.sleep(1.0)
        stuck.setblocking(False)
        closed = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not closed:
            try:
                data = stuck.recv(1 << 20)
                closed = data == b""
            except BlockingIOError:
                time.sleep(0.2)
            except OSError:
                closed = True
        peak = sampler.peak
        reader.close()
        stuck.close()
        after = _settle(hub, 6.0)  # the run is still held; the subscribers are gone
        done = StatusChanged(training_id=tid, seq=count + 2, timestamp=time.time(), status="done")
        prod.sendall(encode(done))
        prod.close()
        expired = _settle(hub, 3.0 + 6.0)  # the run ended, expired, and was forgotten
    finally:
        sampler.stop()
        hub.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return {
        "events": count,
        "event_kb": size // 1000,
        "base_mib": round(base / MIB, 1),
        "peak_mib": round(peak / MIB, 1),
        "stuck_closed": closed,
        "after_leave_mib": round(after / MIB, 1),
        "after_expiry_mib": round(expired / MIB, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--retention-every",
        type=float,
        default=5.0,
        help="seconds between the hub's retention passes (runs part; 600 is the default)",
    )
    parser.add_argument("--only", choices=("runs", "stuck"), default=None, help="run one part")
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--params", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "producer":
        producer(json.loads(args.params))
        return 0
    figures: dict[str, dict[str, Any]] = {}
    if args.only in (None, "runs"):
        figures["runs"] = (
            runs_case(40, 2, 10, keep_ended=2.0, retention_every=args.retention_every)
            if args.quick
            else runs_case(args.runs, 4, 20, keep_ended=5.0, retention_every=args.retention_every)
        )
        r = figures["runs"]
        print(
            f"runs: {r['runs']} in {r['seconds']} s; RSS base {r['base_mib']} MiB, "
            f"peak {r['peak_mib']} MiB (goal <= 100), after expiry {r['after_expiry_mib']} MiB "
            f"({r['after_vs_base']:.2f} x base, goal <= 1.10; peak once the runs ended "
            f"{r['peak_after_runs_mib']} MiB); hub threads {r['threads_base']} -> "
            f"{r['threads_after']}; load {r['load']}"
        )
    if args.only in (None, "stuck"):
        # quick: 300, as the hub bounds each event to 64 KiB, so 16 MiB must take that many
        figures["stuck"] = stuck_case(300 if args.quick else 1500, 400_000)
        s = figures["stuck"]
        print(
            f"stuck: {s['events']} x {s['event_kb']} KB; RSS {s['base_mib']} -> peak "
            f"{s['peak_mib']} MiB (goal <= 200 MB), stuck closed {s['stuck_closed']}, "
            f"after every subscriber left {s['after_leave_mib']} MiB, after the run "
            f"expired {s['after_expiry_mib']} MiB"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
