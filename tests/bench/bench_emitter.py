"""Benchmark of the emitter: the cost of a coalesced call, and a 10-hour run in seconds.

Run it as ``python tests/bench/bench_emitter.py [--calls N] [--steps N] [--repeat R]
[--json PATH]``. It is not collected by pytest (not a ``test_*.py`` file); a smoke
test runs its functions at tiny sizes.

Measurements:

* **Hot path**: ``run.progress(epoch=..., step=...)`` and ``run.metrics(loss=...)``
  in a tight loop, with the default sinks (a real FileSink and the v1 snapshot,
  background thread on), median of *repeat* runs, next to a bare
  ``time.monotonic()`` and a clock read + compare in the same loop shape.
  Goal (issue 3): <= 1 us per call; BENCHMARKS.md puts the floor at a few
  tenths of a microsecond.
* **Ten simulated hours**: 1,000,000 progress + loss calls on a FakeClock
  (36 ms apart, 10 h), ``background=False`` with ``run.tick()`` every simulated
  50 ms as the background thread would: the log's size against its cap (8 MiB),
  compactions, the v1 snapshot writes, wall time, and the peak RSS of a fresh
  process doing it. The v1 sink is driven synchronously and counts the writes
  it would do (the snapshot is built and encoded; the file I/O is skipped, or
  ten hours of it would take minutes); the cost of one real atomic snapshot
  write (temp file, fsync, rename) is measured on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
import structlog

from pulse_core.codec import decode
from pulse_core.emitter import TrainingRun
from pulse_core.events import Metrics
from pulse_core.ports import Sink
from pulse_core.reducer import replay
from pulse_core.testing import FakeClock
from pulse_transports.file import (
    DEFAULT_MAX_BYTES,
    FileSink,
    log_path,
    write_json_atomic,
)
from pulse_transports.v1 import V1SnapshotSink

CALL_TARGET_US = 1.0
HOURS = 10.0


class CountingV1Sink(V1SnapshotSink):
    """The v1 sink, driven synchronously, building and encoding each snapshot but not writing it."""

    def _write_file(self, snapshot: dict[str, Any]) -> None:
        orjson.dumps(snapshot)


def measure_v1_write(writes: int = 200, home: Path | None = None) -> dict[str, Any]:
    """Cost of one real atomic v1 snapshot write (temp file, fsync, rename), in microseconds."""
    snapshot = {
        "status": "running",
        "epoch": 3,
        "total_epochs": 10,
        "loss": 0.25,
        "message": "training",
        "timestamp": "2026-11-29T01:37:24.123Z",
    }
    results = {}
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        path = Path(tmp) / "training_status.json"
        for fsync in (True, False):
            began = time.perf_counter()
            for _ in range(writes):
                write_json_atomic(path, snapshot, fsync=fsync)
            results["fsync_us" if fsync else "no_fsync_us"] = (
                (time.perf_counter() - began) / writes * 1e6
            )
    return results


def _loop_us(body: Callable[[int], None], calls: int, repeat: int) -> dict[str, Any]:
    runs = []
    for _ in range(repeat):
        began = time.perf_counter()
        body(calls)
        runs.append((time.perf_counter() - began) / calls * 1e6)
    return {"median_us": statistics.median(runs), "best_us": min(runs), "runs_us": runs}


def measure_hot_path(
    calls: int = 1_000_000, repeat: int = 5, home: Path | None = None
) -> dict[str, Any]:
    """Per-call cost of progress() and metrics() with real sinks, and the yardsticks."""
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        sinks: list[Sink] = [FileSink(home=tmp), V1SnapshotSink(home=tmp)]
        run = TrainingRun("bench-hot-path", sinks=sinks, env={}, strict=False)
        progress, metrics = run.progress, run.metrics
        monotonic = time.monotonic
        deadline = float("inf")

        def do_progress(n: int) -> None:
            for i in range(n):
                progress(epoch=1, step=i)

        def do_metrics(n: int) -> None:
            for _ in range(n):
                metrics(loss=0.5)

        def do_both(n: int) -> None:
            for i in range(n // 2):
                progress(epoch=1, step=i)
                metrics(loss=0.5)

        def do_monotonic(n: int) -> None:
            for _ in range(n):
                monotonic()

        def do_compare(n: int) -> None:
            for _ in range(n):
                if monotonic() >= deadline:
                    break

        def do_nothing(n: int) -> None:
            for _ in range(n):
                pass

        results: dict[str, Any] = {
            "progress": _loop_us(do_progress, calls, repeat),
            "metrics": _loop_us(do_metrics, calls, repeat),
            "progress_and_metrics": _loop_us(do_both, calls, repeat),
            "monotonic": _loop_us(do_monotonic, calls, repeat),
            "clock_compare": _loop_us(do_compare, calls, repeat),
            "empty_loop": _loop_us(do_nothing, calls, repeat),
        }
        run.close()
        lines = log_path(Path(tmp), "bench-hot-path").read_bytes().count(b"\n")
    results["log_lines"] = lines
    results["calls"] = calls
    return results


def simulate(
    steps: int = 1_000_000, hours: float = HOURS, home: Path | None = None
) -> dict[str, Any]:
    """A long run on a fake clock: log size, compactions, v1 writes, time, peak RSS."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    clock = FakeClock()
    dt = hours * 3600.0 / steps
    with tempfile.TemporaryDirectory(dir=home) as tmp:
        file_sink = FileSink(home=tmp, fsync=False)
        v1 = CountingV1Sink(home=tmp, background=False, clock=clock.monotonic, fsync=False)
        run = TrainingRun(
            "bench-ten-hours",
            sinks=[file_sink, v1],
            clock=clock.monotonic,
            wall=clock.time,
            background=False,
            env={},
            strict=True,
            heartbeat_interval=5.0,
        )
        progress, metrics, tick = run.progress, run.metrics, run.tick
        per_epoch = max(steps // 100, 1)
        next_tick = clock.now
        ticks = 0
        began = time.perf_counter()
        for step in range(steps):
            progress(epoch=step // per_epoch + 1, total_epochs=100, step=step % per_epoch + 1)
            metrics(loss=2.0 / (1.0 + step / 10_000.0))
            clock.now += dt
            if clock.now >= next_tick:  # the background thread's 50 ms tick
                tick()
                ticks += 1
                next_tick = clock.now + 0.05
        run.status("cooling_down")
        run.close()
        seconds = time.perf_counter() - began
        path = log_path(Path(tmp), "bench-ten-hours")
        size = path.stat().st_size
        events = [decode(line) for line in path.read_bytes().splitlines()]
    state = replay(events)
    losses = [e.loss for e in events if isinstance(e, Metrics) and e.loss is not None]
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "steps": steps,
        "simulated_hours": hours,
        "seconds": seconds,
        "us_per_step": seconds / steps * 1e6,
        "ticks": ticks,
        "log_bytes": size,
        "cap_bytes": DEFAULT_MAX_BYTES,
        "under_cap": size <= DEFAULT_MAX_BYTES,
        "log_lines": len(events),
        "compactions": file_sink.compactions,
        "loss_points": len(losses),
        "final_status": state.status,
        "anomalies": len(state.anomalies),
        "v1_writes": v1.writes,
        "v1_writes_per_simulated_s": v1.writes / (hours * 3600.0),
        "peak_rss_kib": rss_after,
        "peak_rss_kib_before": rss_before,
    }


def simulate_isolated(steps: int = 1_000_000, hours: float = HOURS) -> dict[str, Any]:
    """simulate() in a fresh process (this file as a script), so peak RSS is the run's own."""
    done = subprocess.run(
        [sys.executable, __file__, "--simulate-only", "--steps", str(steps), "--hours", str(hours)],
        capture_output=True,
        text=True,
        check=True,
    )
    results: dict[str, Any] = json.loads(done.stdout)
    results["isolated"] = True
    return results


def run(
    calls: int = 1_000_000,
    steps: int = 1_000_000,
    repeat: int = 5,
    isolated: bool = True,
    workdir: Path | None = None,
    hours: float = HOURS,
) -> dict[str, Any]:
    """Every measurement, as plain data."""
    hot = measure_hot_path(calls, repeat, workdir)
    v1_write = measure_v1_write(home=workdir)
    sim = simulate_isolated(steps, hours) if isolated else simulate(steps, hours, workdir)
    worst = max(hot["progress"]["median_us"], hot["metrics"]["median_us"])
    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "hot_path": hot,
        "v1_write": v1_write,
        "ten_hours": sim,
        "targets": {
            "call_us": CALL_TARGET_US,
            "call_met": worst <= CALL_TARGET_US,
            "cap_met": sim["under_cap"],
        },
    }


def format_table(results: dict[str, Any]) -> str:
    """A small human-readable table of *results*."""
    hot, sim, targets = results["hot_path"], results["ten_hours"], results["targets"]
    mark = {True: "ok", False: "MISSED"}
    rows = [("measurement", "best", "median", "target", "")]
    for key, label, target in (
        ("progress", "run.progress(epoch=, step=) (us/call)", True),
        ("metrics", "run.metrics(loss=) (us/call)", True),
        ("progress_and_metrics", "progress + metrics, alternating (us/call)", True),
        ("monotonic", "time.monotonic() (us/call)", False),
        ("clock_compare", "clock read + compare (us/call)", False),
        ("empty_loop", "empty loop iteration (us)", False),
    ):
        m = hot[key]
        ok = m["median_us"] <= CALL_TARGET_US
        rows.append(
            (
                label,
                f"{m['best_us']:.3f}",
                f"{m['median_us']:.3f}",
                f"<= {CALL_TARGET_US:.0f}" if target else "",
                mark[ok] if target else "",
            )
        )
    rows.append(
        (
            f"{sim['steps']:,} steps / {sim['simulated_hours']:.0f} h: log bytes",
            "",
            f"{sim['log_bytes']:,}",
            f"<= {sim['cap_bytes']:,}",
            mark[targets["cap_met"]],
        )
    )
    v1_rate_ok = sim["v1_writes_per_simulated_s"] <= 10.0 + 1e-9
    rows.append(("  v1 snapshot writes", "", f"{sim['v1_writes']:,}", "<= 10/s", mark[v1_rate_ok]))
    rows.append(
        (
            "one real v1 snapshot write: no fsync | fsync (us)",
            f"{results['v1_write']['no_fsync_us']:.0f}",
            f"{results['v1_write']['fsync_us']:.0f}",
            "",
            "",
        )
    )
    rows.append(("  peak RSS (KiB)", "", f"{sim['peak_rss_kib']:,}", "", ""))
    rows.append(("  wall time (s)", "", f"{sim['seconds']:.1f}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    lines.append(
        f"hot path: {hot['calls']:,} calls x {len(hot['progress']['runs_us'])} runs, FileSink + "
        f"v1 on, {hot['log_lines']} log lines written; 10 h: {sim['compactions']} compactions, "
        f"{sim['log_lines']:,} lines kept, {sim['loss_points']:,} loss points, "
        f"{sim['v1_writes_per_simulated_s']:.2f} v1 writes/simulated s, "
        f"{sim['ticks']:,} ticks, {sim['us_per_step']:.2f} us/step; Python {results['python']}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000, help="hot-path calls per run")
    parser.add_argument("--steps", type=int, default=1_000_000, help="steps of the 10-hour run")
    parser.add_argument("--hours", type=float, default=HOURS, help="simulated hours")
    parser.add_argument("--repeat", type=int, default=5, help="hot-path repetitions")
    parser.add_argument(
        "--in-process", action="store_true", help="simulate in this process (RSS then shared)"
    )
    parser.add_argument(
        "--simulate-only", action="store_true", help="only the simulated run, as JSON on stdout"
    )
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    if args.simulate_only:
        print(json.dumps(simulate(args.steps, args.hours)))
        return 0
    results = run(
        args.calls, args.steps, args.repeat, isolated=not args.in_process, hours=args.hours
    )
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    # A script may configure structlog (the library never does): keep the
    # compaction debug lines out of the table and the JSON.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    sys.exit(main())
