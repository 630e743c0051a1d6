"""Benchmarks of the reading side: restart recovery, follow latency, ``pulse ls``.

Run it as a script (it is not collected by pytest; a smoke test runs it tiny)::

    python tests/bench/bench_reader.py                 # full sizes, prints a table
    python tests/bench/bench_reader.py --json out.json # also writes the figures

Figures:

* recovery: :func:`pulse_transports.history.recover` over N finished runs and
  M running runs (their writers hold the lock, as live runs do), with the
  index cold (deleted first) and warm. Goal: under 1 s.
* follow latency: a writer *process* appends one event every few ms with its
  wall-clock time in ``timestamp``; a follower (Notifier + LogFollower)
  measures how long after the write it saw the event. p50/p99/max, with OS
  notifications and with polling. Goal: p99 <= 50 ms with notifications.
* ``pulse ls``: wall time of the real command in a new process (interpreter
  start included) over the recovery home, index warm. Goal: <= 300 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson

from pulse_core.codec import encode
from pulse_core.events import Event, Metrics, Progress, RunMeta, StatusChanged
from pulse_transports.file import FileSink, log_dir, log_path
from pulse_transports.follow import LogFollower, Notifier
from pulse_transports.history import recover
from pulse_transports.index import INDEX_FILE


def run_events(tid: str, start: float, epochs: int, steps: int, end: bool) -> list[Event]:
    """A realistic run log: meta, status changes, progress and metrics per step."""
    out: list[Event] = [
        RunMeta(training_id=tid, seq=1, timestamp=start, name="bench", total_epochs=epochs),
        StatusChanged(training_id=tid, seq=2, timestamp=start, status="preparing"),
        StatusChanged(training_id=tid, seq=3, timestamp=start + 1, status="running"),
    ]
    seq, at = 3, start + 1
    for epoch in range(1, epochs + 1):
        for step in range(1, steps + 1):
            at += 1.0
            out.append(
                Progress(
                    training_id=tid,
                    seq=(seq := seq + 1),
                    timestamp=at,
                    epoch=epoch,
                    total_epochs=epochs,
                    step=step,
                    total_steps=steps,
                )
            )
            out.append(
                Metrics(
                    training_id=tid,
                    seq=(seq := seq + 1),
                    timestamp=at,
                    loss=1.0 / (epoch * steps + step),
                    samples_per_second=1000.0 + step,
                )
            )
    if end:
        out.append(StatusChanged(training_id=tid, seq=seq + 1, timestamp=at + 1, status="done"))
    return out


def make_home(
    home: Path, finished: int, running: int, epochs: int = 10, steps: int = 10
) -> list[FileSink]:
    """Write *finished* ended runs and *running* live runs; return the live sinks (open)."""
    folder = log_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for index in range(finished):
        tid = f"done-{index:05d}"
        evs = run_events(tid, now - 86400 + index * 30, epochs, steps, end=True)
        log_path(home, tid).write_bytes(b"".join(encode(e) for e in evs))
    sinks = []
    for index in range(running):
        tid = f"live-{index}"
        sink = FileSink(home=home, fsync=False)
        sink.open(tid)
        for event in run_events(tid, now - 60, epochs, steps, end=False):
            sink.write(event)
        sinks.append(sink)
    return sinks


def bench_recovery(home: Path, repeat: int = 3) -> dict[str, float]:
    """Seconds for recover(): index cold (deleted) and warm; the best of *repeat*."""
    cold, warm = [], []
    for _ in range(repeat):
        (home / INDEX_FILE).unlink(missing_ok=True)
        started = time.perf_counter()
        records = recover(home)
        cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        again = recover(home)
        warm.append(time.perf_counter() - started)
        assert len(again) == len(records)
    return {"runs": len(records), "cold_s": min(cold), "warm_s": min(warm)}


WRITER = textwrap.dedent(
    """
    import os, sys, time
    from pulse_core.codec import encode
    from pulse_core.events import Progress
    path, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    time.sleep(0.3)  # let the follower settle
    for seq in range(1, count + 1):
        event = Progress(training_id="latency", seq=seq, timestamp=time.time(), step=seq)
        os.write(fd, encode(event))
        time.sleep(gap)
    os.close(fd)
    """
)


def bench_latency(count: int, notifications: bool, gap: float = 0.004) -> dict[str, Any]:
    """Write *count* events from another process; the follower's delay per event (ms)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "latency.jsonl"
        path.write_bytes(b"")
        notifier = Notifier(folder, notifications=notifications)
        follower = LogFollower(path)
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(count), str(gap)])
        delays: list[float] = []
        deadline = time.monotonic() + 60 + count * gap * 4
        try:
            while len(delays) < count and time.monotonic() < deadline:
                notifier.wait(1.0)
                for event in follower.poll():
                    delays.append((time.time() - event.timestamp) * 1000.0)
        finally:
            writer.wait(timeout=60)
            notifier.close()
            follower.close()
    delays.sort()
    return {
        "mode": notifier.mode,
        "events": len(delays),
        "p50_ms": statistics.median(delays) if delays else None,
        "p99_ms": delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else None,
        "max_ms": delays[-1] if delays else None,
    }


def pulse_command() -> list[str]:
    """The installed ``pulse`` script beside this interpreter, or an equivalent."""
    script = Path(sys.executable).with_name("pulse")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from pulse_transports.cli import main; main()"]


def bench_ls(home: Path, repeat: int = 5) -> dict[str, float]:
    """Wall seconds of ``pulse ls`` (table and --json) in a new process, index warm."""
    env = {**os.environ, "PULSE_HOME": str(home)}
    figures: dict[str, float] = {}
    for name, extra in (("ls_s", []), ("ls_json_s", ["--json"])):
        times = []
        for _ in range(repeat + 1):  # the first run warms the index and the OS caches
            started = time.perf_counter()
            subprocess.run(
                [*pulse_command(), "ls", *extra],
                env=env,
                stdout=subprocess.DEVNULL,
                check=True,
            )
            times.append(time.perf_counter() - started)
        figures[name] = statistics.median(times[1:])
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    figures["bare_python_s"] = time.perf_counter() - started
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every benchmark; return the figures."""
    results: dict[str, Any] = {}
    home = Path(tempfile.mkdtemp(prefix="pulse-bench-"))
    try:
        sinks = make_home(home, args.finished, args.running)
        try:
            results["recovery"] = bench_recovery(home, repeat=args.repeat)
            results["ls"] = bench_ls(home, repeat=args.repeat)
        finally:
            for sink in sinks:
                sink.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    results["latency_notify"] = bench_latency(args.latency_events, notifications=True)
    results["latency_polling"] = bench_latency(args.latency_events, notifications=False)
    results["sizes"] = {
        "finished": args.finished,
        "running": args.running,
        "latency_events": args.latency_events,
    }
    return results


def table(results: dict[str, Any]) -> str:
    """The figures as a plain-text table."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:8.1f} ms"

    rec, ls = results["recovery"], results["ls"]
    sizes = results["sizes"]
    rows = [
        ("benchmark", "figure", "goal"),
        (f"recover, {rec['runs']} runs, index cold", ms(rec["cold_s"] * 1000), "< 1000 ms"),
        (f"recover, {rec['runs']} runs, index warm", ms(rec["warm_s"] * 1000), "< 1000 ms"),
        ("pulse ls (table), new process", ms(ls["ls_s"] * 1000), "<= 300 ms"),
        ("pulse ls --json, new process", ms(ls["ls_json_s"] * 1000), "<= 300 ms"),
        ("python -c pass (for scale)", ms(ls["bare_python_s"] * 1000), ""),
    ]
    for key in ("latency_notify", "latency_polling"):
        lat = results[key]
        label = f"follow latency ({lat['mode']}, {lat['events']}/{sizes['latency_events']} events)"
        goal = "p99 <= 50 ms" if lat["mode"] == "notify" else ""
        rows.append((label + " p50", ms(lat["p50_ms"]), ""))
        rows.append((label + " p99", ms(lat["p99_ms"]), goal))
        rows.append((label + " max", ms(lat["max_ms"]), ""))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:>11}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run, print the table (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--finished", type=int, default=1000, help="finished runs")
    parser.add_argument("--running", type=int, default=3, help="running runs")
    parser.add_argument("--latency-events", type=int, default=1000, help="events timed")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (best/median)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    results = run(args)
    print(table(results))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return results


if __name__ == "__main__":
    main()
