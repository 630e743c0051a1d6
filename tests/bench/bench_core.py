"""Benchmark of the core's hot paths: replaying a JSONL log and the v1 projection.

Run it as ``python tests/bench/bench_core.py [--events N] [--repeat R] [--json PATH]``.
It is not collected by pytest (not a ``test_*.py`` file); a smoke test runs its
functions on a tiny log.

Targets (issue 2): replay -- read lines, ``codec.decode``, ``reducer.replay`` --
of 1,000,000 progress/metrics events at >= 300,000 events/s on one core, and
``to_v1(state)`` under 20 us. ``time.monotonic()`` is timed in the same run as
a yardstick for the machine (0.047 us in BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pulse_core.codec import decode, encode
from pulse_core.events import Metrics, Progress, StatusChanged
from pulse_core.projections import to_v1
from pulse_core.reducer import replay
from pulse_core.state import RunState

TRAINING_ID = "bench-run-0001"
REPLAY_TARGET = 300_000.0  # events/s
V1_TARGET = 20.0  # us


def build_log(path: Path, events: int, steps_per_epoch: int = 500) -> None:
    """Write a JSONL log of *events* progress and metrics events, alternating.

    The run starts with a ``running`` status event (seq 1, counted in *events*),
    then reports like a training loop: progress with epoch/step, metrics with
    a decaying loss and a throughput, 10 ms apart.
    """
    start = 1_764_000_000.0
    total_epochs = max(1, (events // 2) // steps_per_epoch + 1)
    with path.open("wb") as out:
        out.write(encode(StatusChanged(TRAINING_ID, 1, start, "running", "training")))
        for seq in range(2, events + 1):
            step = seq // 2
            epoch, within = divmod(step, steps_per_epoch)
            ts = start + seq * 0.01
            if seq % 2 == 0:
                event: Progress | Metrics = Progress(
                    TRAINING_ID,
                    seq,
                    ts,
                    epoch=epoch + 1,
                    total_epochs=total_epochs,
                    step=within,
                    total_steps=steps_per_epoch,
                )
            else:
                event = Metrics(
                    TRAINING_ID,
                    seq,
                    ts,
                    loss=2.5 / (1.0 + step * 0.001) + (seq % 7) * 0.001,
                    samples_per_second=1800.0 + (seq % 13),
                )
            out.write(encode(event))


def replay_file(path: Path) -> RunState:
    """Replay a log: read its lines, decode each, fold them (the measured path)."""

    def decoded() -> Iterator[Any]:
        with path.open("rb") as lines:
            for line in lines:
                yield decode(line)

    return replay(decoded())


def measure_replay(path: Path, events: int, repeat: int = 3) -> dict[str, Any]:
    """Time :func:`replay_file` *repeat* times; return events/s and the final state."""
    seconds: list[float] = []
    state = RunState()
    for _ in range(repeat):
        began = time.perf_counter()
        state = replay_file(path)
        seconds.append(time.perf_counter() - began)
    if state.event_count != events:
        raise RuntimeError(f"replayed {state.event_count} events, expected {events}")
    rates = [events / s for s in seconds]
    return {
        "events": events,
        "seconds": seconds,
        "best_events_per_s": max(rates),
        "median_events_per_s": statistics.median(rates),
        "state": state,
    }


def per_call_us(statement: str, namespace: dict[str, Any], repeat: int = 5) -> dict[str, float]:
    """Median and best cost of *statement* in microseconds (timeit, auto number)."""
    timer = timeit.Timer(statement, globals=namespace)
    number, _ = timer.autorange()
    number = max(number, 10)
    runs = [t / number * 1e6 for t in timer.repeat(repeat=repeat, number=number)]
    return {"median_us": statistics.median(runs), "best_us": min(runs), "number": number}


def measure_v1(state: RunState, repeat: int = 5) -> dict[str, float]:
    """Cost of ``to_v1(state)`` per call."""
    return per_call_us("to_v1(state)", {"to_v1": to_v1, "state": state}, repeat)


def measure_monotonic(repeat: int = 5) -> dict[str, float]:
    """Cost of a bare ``time.monotonic()`` call, the machine's yardstick."""
    return per_call_us("monotonic()", {"monotonic": time.monotonic}, repeat)


def run(events: int = 1_000_000, repeat: int = 3, workdir: Path | None = None) -> dict[str, Any]:
    """Build the log, run every measurement and return the results as plain data."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "bench.jsonl"
        began = time.perf_counter()
        build_log(path, events)
        build_seconds = time.perf_counter() - began
        size = path.stat().st_size
        replayed = measure_replay(path, events, repeat)
    state: RunState = replayed.pop("state")
    v1 = measure_v1(state)
    return {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "log_bytes": size,
        "build_seconds": build_seconds,
        "replay": replayed,
        "to_v1": v1,
        "monotonic": measure_monotonic(),
        "targets": {
            "replay_events_per_s": REPLAY_TARGET,
            "to_v1_us": V1_TARGET,
            "replay_met": replayed["median_events_per_s"] >= REPLAY_TARGET,
            "to_v1_met": v1["median_us"] < V1_TARGET,
        },
        "final_state": {
            "status": state.status,
            "epoch": state.epoch,
            "last_seq": state.last_seq,
            "loss_windows": len(state.history["loss"].windows) if "loss" in state.history else 0,
        },
    }


def format_table(results: dict[str, Any]) -> str:
    """A small human-readable table of *results*."""
    replayed, v1, mono = results["replay"], results["to_v1"], results["monotonic"]
    targets = results["targets"]
    mark = {True: "ok", False: "MISSED"}
    rows = [
        ("measurement", "best", "median", "target", ""),
        (
            f"replay {replayed['events']:,} events (events/s)",
            f"{replayed['best_events_per_s']:,.0f}",
            f"{replayed['median_events_per_s']:,.0f}",
            f">= {REPLAY_TARGET:,.0f}",
            mark[targets["replay_met"]],
        ),
        (
            "to_v1(state) (us/call)",
            f"{v1['best_us']:.2f}",
            f"{v1['median_us']:.2f}",
            f"< {V1_TARGET:.0f}",
            mark[targets["to_v1_met"]],
        ),
        (
            "time.monotonic() (us/call)",
            f"{mono['best_us']:.3f}",
            f"{mono['median_us']:.3f}",
            "",
            "",
        ),
    ]
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
        f"log {results['log_bytes'] / 1e6:.1f} MB, built in {results['build_seconds']:.1f} s; "
        f"replay runs (s): {', '.join(f'{s:.2f}' for s in replayed['seconds'])}; "
        f"Python {results['python']}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the log")
    parser.add_argument("--repeat", type=int, default=3, help="replay repetitions")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args(argv)
    results = run(args.events, args.repeat)
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
