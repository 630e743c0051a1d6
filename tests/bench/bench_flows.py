"""Benchmark of a Flow step's updates: how old is what the Flow Manager sees?

Run it as ``python tests/bench/bench_flows.py [--seconds S] [--json PATH]``.
It is not collected by pytest (not a ``test_*.py`` file); a smoke test runs it
for one second.

A real child process reports ``metrics(wall=time.time())`` every 10 ms
through ``TrainingRun`` under :class:`~pulse_transports.flows.FlowTrainer`;
the benchmark consumes ``step.updates(interval=0.1)`` and measures, for every
view while running, the age of the value it shows (now - ``wall``), the gap
between two views, and how old the shown value has become when the next view
replaces it (the staleness a user sees). Goal (issue 13, item 18): updates
within 500 ms (max staleness <= 500 ms; it was ~1 s, the log's progress
interval), the final view exactly once, one ``preparing`` in the timeline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from pulse_transports.flows import FlowTrainer

STALE_GOAL_MS = 500.0

CHILD = """
import sys, time
from pulse_core import TrainingRun
seconds = float(sys.argv[1])
with TrainingRun(total_epochs=1) as run:
    end = time.time() + seconds
    step = 0
    while time.time() < end:
        step += 1
        run.progress(epoch=1, step=step)
        run.metrics(loss=1.0 / step, wall=time.time())
        time.sleep(0.01)
"""


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_updates(seconds: float, home: Path) -> dict[str, Any]:
    """Run one supervised child for *seconds* and time the views of its updates."""
    trainer = FlowTrainer(home=home)
    step = trainer.start_process([sys.executable, "-c", CHILD, str(seconds)], flow_run_id="b")
    ages: list[float] = []
    gaps: list[float] = []
    stale: list[float] = []
    last: float | None = None
    shown_wall: float | None = None
    finals = 0
    for view in step.updates(interval=0.1, timeout=seconds + 60):
        now = time.time()
        wall = view["metrics"].get("wall")
        if view["status"] == "running" and wall is not None:
            ages.append((now - wall) * 1000)
            if last is not None and shown_wall is not None:
                gaps.append((now - last) * 1000)
                stale.append((now - shown_wall) * 1000)
            last, shown_wall = now, wall
        if view["terminal"]:
            finals += 1
    step.wait(timeout=30)
    timeline = [t["status"] for t in trainer.drill_down(step.training_id)["view"]["timeline"]]
    return {
        "seconds": seconds,
        "views": len(ages),
        "age_p50_ms": _quantile(ages, 0.5),
        "age_max_ms": max(ages) if ages else None,
        "gap_p50_ms": _quantile(gaps, 0.5),
        "gap_max_ms": max(gaps) if gaps else None,
        "stale_p50_ms": _quantile(stale, 0.5),
        "stale_max_ms": max(stale) if stale else None,
        "final_views": finals,
        "preparing": timeline.count("preparing"),
    }


def table(results: dict[str, Any]) -> str:
    """The figures as a plain-text table."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:8.1f} ms"

    rows = [
        ("benchmark", "figure", "goal"),
        ("views while running", f"{results['views']:>11}", ""),
        ("age of the value shown, p50", ms(results["age_p50_ms"]), ""),
        ("age of the value shown, max", ms(results["age_max_ms"]), ""),
        ("gap between views, p50", ms(results["gap_p50_ms"]), ""),
        ("gap between views, max", ms(results["gap_max_ms"]), ""),
        ("staleness before the next view, p50", ms(results["stale_p50_ms"]), ""),
        (
            "staleness before the next view, max",
            ms(results["stale_max_ms"]),
            f"<= {STALE_GOAL_MS:.0f} ms",
        ),
        ("final views", f"{results['final_views']:>11}", "1"),
        ("preparing in the timeline", f"{results['preparing']:>11}", "1"),
    ]
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:>11}  {c}" for a, b, c in rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse arguments, run, print the table (and write --json)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10.0, help="training time")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pulse-bench-") as home:
        results = bench_updates(args.seconds, Path(home))
    print(table(results))
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return results


if __name__ == "__main__":
    main()
