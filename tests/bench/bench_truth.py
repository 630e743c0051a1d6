"""Benchmark: the time from a writer's SIGKILL to ``lost`` in every reader.

Run it as a script (it is not collected by pytest; a smoke test runs it tiny)::

    python tests/bench/bench_truth.py                  # 5 trials, prints a table
    python tests/bench/bench_truth.py --trials 1 --json out.json

Each trial starts a real producer process (``tests/truth/scenario.py
sigkill``: file, v1 and socket transports) on the home of a real ``pulse
serve --http`` hub, with a hub subscriber connected, waits until it runs,
SIGKILLs it, and then -- all readers at once, each in its own thread --
polls until the reader says the run is lost:

* ``pulse ls --json``, ``pulse show --json``, ``pulse v1 --json``: new
  processes, so each figure includes an interpreter start (the first answer
  is usually already ``lost``: the lock is free at once);
* the hub subscriber: the pushed snapshot saying ``lost`` (no polling);
* ``/api/runs``: polled every 20 ms.

Figures per reader: p50 and max over the trials, in milliseconds. The readers
share the machine's cores while they poll, as they would in real use. Goal:
every reader under 2 s (the hub checks writers every second). Exit status 1
if a reader never said lost within 15 s.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "truth"))

from truthkit import (
    SCENARIO,
    TRANSPORTS,
    HubServer,
    HubWatch,
    cli,
    matrix_root,
    training_id_for,
)

from pulse_core.projections import LOST_MESSAGE

#: The longest wait for one reader to say lost, seconds.
GIVE_UP = 15.0
#: Goal for every reader, seconds.
GOAL = 2.0


def _cli_lost(tid: str, *args: str) -> Callable[[], bool]:
    """A check that runs ``pulse ARGS`` and says whether it shows run *tid* lost."""

    def check() -> bool:
        result = cli(*args)
        if result.returncode != 0:
            return False
        doc = orjson.loads(result.stdout)
        if "runs" in doc:
            doc = next((r for r in doc["runs"] if r["training_id"] == tid), {})
        if "liveness" in doc:
            return bool(doc["liveness"] == "lost")
        status, message = doc.get("status"), str(doc.get("message"))
        return bool(status == "error" and message.startswith(LOST_MESSAGE))

    return check


def trial(hub: HubServer) -> dict[str, float | None]:
    """One SIGKILL; seconds until each reader said lost (None: never)."""
    tid = training_id_for("bench")
    home = str(hub.home)
    env = {
        **os.environ,
        "PULSE_HOME": home,
        "PULSE_TRAINING_ID": tid,
        "PULSE_TRANSPORTS": TRANSPORTS,
        "PULSE_HUB_SOCKET": str(hub.socket_path),
    }
    watch = HubWatch(hub.socket_path, tid)
    out = hub.home.parent / f"{tid}.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, str(SCENARIO), "sigkill"],
            stdout=sink,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while b"READY" not in out.read_bytes() or watch.read().get("liveness") != "alive":
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the producer did not start")
            time.sleep(0.02)
        readers: dict[str, Callable[[], bool]] = {
            "pulse ls": _cli_lost(tid, "ls", "--json", "--home", home),
            "pulse show": _cli_lost(tid, "show", tid, "--json", "--home", home),
            "pulse v1": _cli_lost(tid, "v1", tid, "--json", "--home", home),
            "/api/runs": lambda: any(
                r.get("training_id") == tid and r.get("liveness") == "lost" for r in hub.api_runs()
            ),
        }
        found: dict[str, float | None] = dict.fromkeys([*readers, "hub subscriber"])
        start = time.monotonic()
        proc.send_signal(signal.SIGKILL)

        def poll(name: str, check: Callable[[], bool], pause: float) -> None:
            while time.monotonic() - start < GIVE_UP:
                if check():
                    found[name] = time.monotonic() - start
                    return
                time.sleep(pause)

        threads = [
            threading.Thread(target=poll, args=(n, c, 0.0 if n.startswith("pulse") else 0.02))
            for n, c in readers.items()
        ]
        for thread in threads:
            thread.start()
        while time.monotonic() - start < GIVE_UP:
            lost = [t for t, s in watch.changes if s.get("liveness") == "lost"]
            if lost:
                found["hub subscriber"] = lost[0] - start
                break
            time.sleep(0.005)
        for thread in threads:
            thread.join()
        return found
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        watch.close()


def summarize(trials: list[dict[str, float | None]]) -> dict[str, dict[str, Any]]:
    """p50/max (ms) per reader, and how many trials never saw lost."""
    out: dict[str, dict[str, Any]] = {}
    for reader in trials[0]:
        seen = [t[reader] for t in trials if t[reader] is not None]
        out[reader] = {
            "trials": len(trials),
            "never": len(trials) - len(seen),
            "p50_ms": round(statistics.median(seen) * 1000, 1) if seen else None,
            "max_ms": round(max(seen) * 1000, 1) if seen else None,
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = parser.parse_args()
    with matrix_root() as (_root, hub):
        trials = [trial(hub) for _ in range(args.trials)]
    figures = summarize(trials)
    print(f"SIGKILL -> lost, {args.trials} trial(s); goal < {GOAL * 1000:.0f} ms")
    print(f"{'reader':<16} {'p50 ms':>9} {'max ms':>9} {'never':>6}")
    for reader, row in figures.items():
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.0f}"
        top = "-" if row["max_ms"] is None else f"{row['max_ms']:.0f}"
        print(f"{reader:<16} {p50:>9} {top:>9} {row['never']:>6}")
    if args.json is not None:
        args.json.write_bytes(
            orjson.dumps({"sigkill_to_lost": figures}, option=orjson.OPT_INDENT_2)
        )
    return 1 if any(row["never"] for row in figures.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
