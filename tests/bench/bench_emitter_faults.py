"""Benchmark: the training loop under a hostile disk, a status flood and hostile call patterns.

Run it as ``python tests/bench/bench_emitter_faults.py [--quick] [--json PATH]``. It is
not collected by pytest; ``tests/emitter/test_emitter_bench_faults_smoke.py`` runs its
functions at tiny sizes.

Measurements (goals from issue 14):

* **Slow disk**: the loop of ``tests/faults/emitter_trainer.py`` (busy work per step,
  ``progress()`` + ``metrics()`` each step, a note and a non-fatal error now and then,
  default sinks file + v1) in a real process, first undisturbed, then with every
  ``os.write`` (resp. ``os.fsync``) on a file sleeping 2 s, side by side in one process.
  Goals: worst ``progress()``/``metrics()`` <= 1 ms, worst ``status()``/``error()`` <=
  10 ms, throughput >= 95 % of the undisturbed loop.
* **Compaction at the 8 MiB cap**: a FileSink at its default cap with interval 0 filled
  until it compacts (a log that big is compacted in a child interpreter); p99.9 and
  worst latency of the calls made during a compaction (and 0.1 s after it), and of the
  whole loop, next to the same loop whose cap is never reached, three rounds of the
  pair. Goal: worst during compaction <= 1 ms. ``--only compaction`` runs just this,
  plus an A/B in this process: compaction in-process vs in a child, calls made during a
  compaction timed apart from the rest.
* **Compaction with the README's settings** (``--only compaction_defaults``): the
  same goal as users meet it -- no ``PULSE_*`` variable, the default sinks (the
  log at its default 8 MiB cap and interval, the v1 snapshot, the socket) and a
  real ``pulse serve`` in the folder. The run continues a log written
  beforehand just short of its cap (filling 8 MiB at the default interval
  takes hours), so it compacts within seconds; ten rounds (``--rounds``), each
  beside the same run whose log stays short of its cap. Goal: worst call during
  compaction <= 1 ms. The interval-0 case above is the stress test: its writer
  is busy all the time, so its rare hand-overs of the GIL land in calls more
  often (see ``--only gil``).
* **Hot path**: coalesced ``run.progress()`` next to a bare ``time.monotonic()`` in the
  same run (from ``bench_emitter.measure_hot_path``). Goal: <= 0.3 us.
* **Thread switching** (``--only gil``): the compaction loop's pattern with no
  compaction, in four modes taking turns in fresh processes: no-op calls, no-op calls
  handing values to a plain Python thread that works like the writer at interval 0 (no
  PULSE code), a run on a FileSink with interval 0, a run with the README's default
  sinks. Calls over 1 ms that also appear with the plain thread are the interpreter's
  GIL hand-over between two busy threads, not the library's; the default sinks wake the
  writer about 40 times a second instead of 200.
* **Status flood**: 100k steps with a note and a non-fatal error each, default cap.
  Goals: log <= cap, worst step <= 1 ms.
* **Memory under hostile patterns**: peak traced memory (tracemalloc) of a run in a
  fresh process fed 10,000 distinct metric names per call, 1 MB strings as notes,
  error messages and details, a sink failing every write for an hour of calls on a fake
  clock (360,000 steps: 100 a second) and a stuck writer (writes block forever) for as
  many calls.
"""

from __future__ import annotations

import argparse
import array
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1] / "live"))

from livekit import LiveHub, zero_env

HERE = Path(__file__).resolve().parent
TRAINER = HERE.parent / "faults" / "emitter_trainer.py"
MIB = 1024 * 1024


def _trainer(
    home: Path,
    scenario: str,
    *opts: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    no_pulse_env: bool = False,
) -> Any:
    """Run the trainer; its report. *no_pulse_env*: without any ``PULSE_*`` variable."""
    base = zero_env() if no_pulse_env else dict(os.environ)
    proc = subprocess.run(
        [sys.executable, str(TRAINER), scenario, str(home), *opts],
        capture_output=True,
        text=True,
        timeout=3600,
        env={**base, **(env or {})},
        cwd=cwd,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{scenario} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def measure_slow_disk(
    fault: str,
    delay: float = 2.0,
    steps: int = 3000,
    work_us: float = 1000.0,
    rounds: int = 3,
    attribute: bool = False,
) -> dict[str, Any]:
    """Worst call latencies and throughput with *fault* (write|fsync) sleeping *delay* s.

    *rounds* pairs of (undisturbed, disturbed) loops in one process; the
    throughput compares the fastest loop of each kind, the worst calls are
    over all disturbed rounds (the undisturbed worst is the machine's noise).
    """
    with tempfile.TemporaryDirectory() as tmp:
        report = _trainer(
            Path(tmp),
            "loop",
            f"slow={fault}",
            f"delay={delay}",
            f"steps={steps}",
            f"work_us={work_us}",
            "baseline=1",
            f"rounds={rounds}",
            f"attribute={int(attribute)}",
            env={"PULSE_CLOSE_TIMEOUT": "1"},
        )
    calls = report["calls"]
    split = {}
    if attribute:
        split = {
            "split": {name: _split(calls[name]) for name in ("progress", "metrics", "status")},
            "gc": report["gc"],
            "writer": report["writer"],
        }
    return {
        **split,
        "fault": fault,
        "rounds": rounds,
        "delay_s": delay,
        "steps": steps,
        "worst_progress_ms": calls["progress"]["worst_s"] * 1e3,
        "worst_metrics_ms": calls["metrics"]["worst_s"] * 1e3,
        "worst_status_ms": calls["status"]["worst_s"] * 1e3,
        "worst_error_ms": calls["error"]["worst_s"] * 1e3,
        "close_s": calls["close"]["worst_s"],
        "open_s": report["open_s"],
        "throughput_ratio": report["baseline_loop_s"] / report["loop_s"],
        "baseline_worst_progress_ms": report["baseline"]["progress"]["worst_s"] * 1e3,
    }


def _compact_loop(
    steps: int, max_bytes: int, work_us: float, attribute: bool = False, until: bool = False
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = _trainer(
            Path(tmp),
            "compact",
            "delay=0",
            f"steps={steps}",
            f"max_bytes={max_bytes}",
            f"work_us={work_us}",
            "note_every=0",
            "error_every=0",
            f"attribute={int(attribute)}",
            f"until_compacted={int(until)}",
        )
    calls = report["calls"]
    result = {
        "compactions": report["compactions"],
        "steps": report["steps"],
        "compaction_threads": sorted(report["io_threads"]["compact"]),
        **_call_figures(calls),
    }
    if attribute:
        result["split"] = {name: _split(calls[name]) for name in ("progress", "metrics")}
        result["gc"] = report["gc"]
        result["writer"] = report["writer"]
    return result


def _call_figures(calls: dict[str, Any]) -> dict[str, Any]:
    """progress()/metrics() latencies (ms) of the whole loop, and of the calls made
    while compacting (and 0.1 s after)."""
    result: dict[str, Any] = {}
    for name in ("progress", "metrics"):
        during = calls[name]["during_compaction"]
        result[f"p999_{name}_ms"] = calls[name]["p999_s"] * 1e3
        result[f"worst_{name}_ms"] = calls[name]["worst_s"] * 1e3
        result[f"during_calls_{name}"] = during["calls"]
        result[f"during_p999_{name}_ms"] = during["p999_s"] * 1e3
        result[f"during_worst_{name}_ms"] = during["worst_s"] * 1e3
    return result


def _worst_over(pairs: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Over rounds of (baseline, compaction) loops: the worst figures, calls summed."""
    result: dict[str, Any] = {}
    for name in ("progress", "metrics"):
        for key in (f"p999_{name}_ms", f"worst_{name}_ms"):
            result[key] = max(p["compaction"][key] for p in pairs)
            result[f"baseline_{key}"] = max(p["baseline"][key] for p in pairs)
        # the goal's figures: calls made while compacting
        result[f"during_calls_{name}"] = sum(p["compaction"][f"during_calls_{name}"] for p in pairs)
        for key in (f"during_p999_{name}_ms", f"during_worst_{name}_ms"):
            result[key] = max(p["compaction"][key] for p in pairs)
    return result


def _split(call: dict[str, Any]) -> dict[str, Any]:
    """One method's slow calls split into wall, blocked, run-queue wait (ms)."""
    return {
        "worst_wall_ms": call["worst_s"] * 1e3,
        "p999_ms": call["p999_s"] * 1e3,
        "worst_blocked_ms": call["worst_blocked_s"] * 1e3,
        "worst_net_blocked_ms": call["worst_net_blocked_s"] * 1e3,
        "net_blocked_over_1ms": call["net_blocked_over_1ms"],
        "worst_runq_ms": call["worst_runq_s"] * 1e3,
        "worst_gc_ms": call["worst_gc_s"] * 1e3,
        "worst_gc_cpu_ms": call.get("worst_gc_cpu_s", 0.0) * 1e3,
        "slow_calls_with_gc": call.get("slow_calls_with_gc", [0, 0, 0]),
        "slow_calls": call["slow_calls"],
        "blocked_over_1ms": call["blocked_over_1ms"],
        "during_compaction": call.get("during_compaction", {}),
    }


def format_split(name: str, loop: dict[str, Any]) -> str:
    """A compaction loop's attribution, one line (when measured with attribute)."""
    if "split" not in loop:
        return ""
    parts = [
        f"{method} worst {s['worst_wall_ms']:.2f} (blocked {s['worst_blocked_ms']:.2f}, net of "
        f"the writer's run-queue wait {s['worst_net_blocked_ms']:.2f}, runq "
        f"{s['worst_runq_ms']:.2f}, gc {s['worst_gc_ms']:.2f}) p99.9 {s['p999_ms']:.3f} ms, "
        f"{s['slow_calls']} calls > 0.5 ms, blocked > 1 ms: {s['blocked_over_1ms']} "
        f"({s['net_blocked_over_1ms']} net), with a gc of gen 0/1/2 in "
        f"{'/'.join(map(str, s['slow_calls_with_gc']))} (worst gc cpu "
        f"{s['worst_gc_cpu_ms']:.2f})" + _format_during(s["during_compaction"])
        for method, s in loop["split"].items()
    ]
    w, g = loop["writer"], loop["gc"]
    return (
        f"  {name}: " + "; ".join(parts) + f"; writer's longest step {w['worst_cpu_s'] * 1e3:.2f} "
        f"ms cpu, longest slice between GIL yields {w['worst_slice_cpu_s'] * 1e3:.2f} ms cpu "
        f"({w['yields']} yields); gc on the training thread by gen "
        f"{'/'.join(map(str, g.get('training_thread_by_gen', [])))}, gen2 {g['gen2']}x, "
        f"gc {g['training_thread_s']:.3f} s; on the writer: gen2 {g['other_threads_gen2']}x, "
        f"longest collection {g['other_threads_worst_s'] * 1e3:.2f} ms"
    )


def _format_during(during: dict[str, Any]) -> str:
    """Calls made while compacting (and 0.1 s after): the figures the goal is about."""
    if not during.get("calls"):
        return ""
    return (
        f"; during compaction {during['calls']} calls, worst {during['worst_s'] * 1e3:.2f} "
        f"p99.9 {during['p999_s'] * 1e3:.3f} ms, net blocked worst "
        f"{during['worst_net_blocked_s'] * 1e3:.2f} ms ({during['net_blocked_over_1ms']} > 1 ms)"
    )


def measure_compaction(
    steps: int = 600_000,
    max_bytes: int = 8 * MIB,
    work_us: float = 100.0,
    rounds: int = 1,
    attribute: bool = False,
) -> dict[str, Any]:
    """Loop latencies while the log compacts at its cap (interval 0: every call a line).

    The writer thread coalesces what arrives while it writes, so how many steps
    fill an 8 MiB cap depends on the machine (600k steps made 7.8 MiB here on
    a calm day): the compacting loop goes on past *steps* until the log has
    compacted once and the calls right after it are timed (at most 4 times
    as many steps).

    Each round runs the same loop twice in fresh processes: first with a cap the
    run never reaches (no compaction: the machine's noise), then at *max_bytes*.
    The top-level figures are the worst over all rounds; ``rounds`` keeps each.
    With *attribute* each slow call is split into CPU, run-queue wait and
    blocked time (see ``Timer`` in ``emitter_trainer.py``).
    """
    pairs = []
    for _ in range(rounds):
        baseline = _compact_loop(steps, 1 << 40, work_us, attribute)
        compacting = _compact_loop(steps, max_bytes, work_us, attribute, until=True)
        pairs.append({"baseline": baseline, "compaction": compacting})
    return {
        "steps": steps,
        "max_bytes": max_bytes,
        "compactions": min(p["compaction"]["compactions"] for p in pairs),
        "steps_compacting": [p["compaction"]["steps"] for p in pairs],
        "compaction_threads": pairs[0]["compaction"]["compaction_threads"],
        "rounds": pairs,
        **_worst_over(pairs),
    }


def measure_compaction_defaults(
    rounds: int = 10,
    steps: int = 20_000,
    work_us: float = 100.0,
    hub: bool = True,
    short_of_cap: int = 96 * 1024,
) -> dict[str, Any]:
    """The goal's case with the README's settings: the loop while the log compacts at its cap.

    No ``PULSE_*`` variable: the default sinks (the log at its default 8 MiB cap
    and 1 s interval, the v1 snapshot, the socket to the hub) and, with *hub*, a
    real ``pulse serve`` started in the folder, as the desktop app runs it.
    Filling 8 MiB at the default interval takes hours, so the run continues a
    log written beforehand (``prefill``): *short_of_cap* bytes short of the cap,
    it compacts within seconds. Each round is a fresh folder and hub, and two runs: one
    whose log stays 1 MiB short of its cap (the machine's noise with the same
    sinks), then the compacting one. Figures are the worst over all rounds;
    ``rounds`` keeps each round's.
    """
    pairs = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            server = LiveHub(folder).wait_ready() if hub else None
            try:
                settle = 3.0 if hub else 0.0
                baseline = _defaults_loop(folder, "quiet-run", steps, work_us, MIB, settle, False)
                compacting = _defaults_loop(
                    folder, "compact-run", steps, work_us, short_of_cap, settle, True
                )
            finally:
                if server is not None:
                    server.stop()
        pairs.append({"baseline": baseline, "compaction": compacting})
    return {
        "rounds": pairs,
        "hub": hub,
        "sinks": pairs[0]["compaction"]["sinks"],
        "compactions": min(p["compaction"]["compactions"] for p in pairs),
        "sink_failures": sum(
            sum(loop["sink_failures"].values()) for p in pairs for loop in p.values()
        ),
        **_worst_over(pairs),
    }


def _defaults_loop(
    folder: Path,
    tid: str,
    steps: int,
    work_us: float,
    short_of_cap: int,
    settle_s: float,
    until: bool,
) -> dict[str, Any]:
    """One trainer process with the default sinks, in *folder*, its log prefilled.

    With *until* the loop goes on past *steps* until the log has compacted once
    (if it does within 4 times as many steps: at about 80 epoch ends a second, each a line
    or two in the log, 96 KiB take about 5 s).
    """
    report = _trainer(
        folder / ".pulse",  # the default home of a program started in *folder*
        "compact",
        "sinks=default",
        f"tid={tid}",
        f"prefill={short_of_cap}",
        f"settle_s={settle_s}",
        f"max_bytes={8 * MIB}",
        "delay=0",
        f"steps={steps}",
        f"work_us={work_us}",
        "note_every=0",
        "error_every=0",
        f"until_compacted={int(until)}",
        cwd=folder,
        no_pulse_env=True,
    )
    return {
        "compactions": report["compactions"],
        "steps": report["steps"],
        "sinks": report["sinks"],
        # how often each sink failed (the socket: the hub did not answer in time)
        "sink_failures": {st["name"]: st["failures_total"] for st in report["sink_stats"]},
        **_call_figures(report["calls"]),
    }


def format_compaction_defaults(c: dict[str, Any]) -> str:
    """The compaction goal's figures with the README's settings, and each round's worst."""
    worsts = ", ".join(
        f"{max(r['during_worst_progress_ms'], r['during_worst_metrics_ms']):.3f}"
        for r in (p["compaction"] for p in c["rounds"])
    )
    return (
        f"compaction, README settings ({'+'.join(c['sinks'])}"
        f"{', live hub' if c['hub'] else ''}; {len(c['rounds'])} rounds, "
        f"{c['compactions']}+ compaction(s) each): {_format_goal(c)}; each round's worst "
        f"[{worsts}] ms; same sinks without compaction: progress worst "
        f"{c['baseline_worst_progress_ms']:.3f} ms, metrics worst "
        f"{c['baseline_worst_metrics_ms']:.3f} ms; sink failures {c['sink_failures']}"
    )


def measure_compaction_ab(
    steps: int = 60_000, max_bytes: int = 8 * MIB, work_us: float = 50.0, rounds: int = 2
) -> dict[str, Any]:
    """The loop in this process, compacting in-process vs in a child, side by side.

    Calls made while the writer thread is inside a compaction are timed apart
    from the others; on a noisy machine the telling figures are p99.9 during
    vs outside compaction, and how many calls the loop made during it.
    """
    from pulse_core.emitter import TrainingRun
    from pulse_transports.file import FileSink

    compacting = threading.Event()

    class MarkedSink(FileSink):
        def _compact(self) -> None:
            compacting.set()
            try:
                super()._compact()
            finally:
                compacting.clear()

    def one(mode: str) -> dict[str, Any]:
        # Arrays, not lists: a young collection would visit every float of a list.
        during: array.array[float] = array.array("d")
        outside: array.array[float] = array.array("d")
        with tempfile.TemporaryDirectory() as tmp:
            sink = MarkedSink(home=tmp, max_bytes=max_bytes, interval=0.0, fsync=False)
            sink.out_of_process_bytes = 0 if mode == "child" else 1 << 62
            run = TrainingRun(f"ab-{mode}", sinks=[sink], env={})
            clock = time.perf_counter
            i = -1
            # At least *steps* steps, then on until the log has compacted once
            # (the writer coalesces: how many steps fill the cap depends on the
            # machine), at most 40 times as many.
            while i < steps - 1 or (sink.compactions == 0 and i < 40 * steps):
                i += 1
                end = clock() + work_us / 1e6
                while clock() < end:
                    pass
                t = clock()
                run.progress(epoch=1, step=i)
                (during if compacting.is_set() else outside).append(clock() - t)
                t = clock()
                run.metrics(loss=1.0 / (i + 1))
                (during if compacting.is_set() else outside).append(clock() - t)
            run.close()

        def q(values: array.array[float], p: float) -> float:
            ordered = sorted(values) or [0.0]
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1e3

        return {
            "compactions": sink.compactions,
            "steps": i + 1,
            "calls_during": len(during),
            "p999_during_ms": q(during, 0.999),
            "worst_during_ms": q(during, 1.0),
            "p999_outside_ms": q(outside, 0.999),
            "worst_outside_ms": q(outside, 1.0),
        }

    return {
        "steps": steps,
        "max_bytes": max_bytes,
        "rounds": [{"in-process": one("in-process"), "child": one("child")} for _ in range(rounds)],
    }


def format_compaction_ab(ab: dict[str, Any]) -> str:
    """One line per round: during/outside compaction, in-process vs child."""
    lines = []
    for n, pair in enumerate(ab["rounds"]):
        parts = [
            f"{mode} ({r['compactions']}x): during p99.9 {r['p999_during_ms']:.3f} "
            f"worst {r['worst_during_ms']:.3f} ms over {r['calls_during']} calls, outside "
            f"p99.9 {r['p999_outside_ms']:.3f} worst {r['worst_outside_ms']:.3f} ms"
            for mode, r in pair.items()
        ]
        lines.append(f"compaction A/B round {n + 1}: " + "; ".join(parts))
    return "\n".join(lines)


def measure_flood(steps: int = 100_000, max_bytes: int = 8 * MIB) -> dict[str, Any]:
    """100k steps with a note and a non-fatal error each: log size and worst step."""
    with tempfile.TemporaryDirectory() as tmp:
        report = _trainer(Path(tmp), "flood", f"steps={steps}", f"max_bytes={max_bytes}")
    return {
        "steps": steps,
        "log_bytes": report["log_bytes"],
        "max_bytes": report["max_bytes"],
        "worst_step_ms": report["worst_step_s"] * 1e3,
        "worst_step_no_full_gc_ms": report["worst_step_no_full_gc_s"] * 1e3,
        "worst_step_cpu_ms": report["worst_step_cpu_s"] * 1e3,
        "full_gcs": report["full_gcs"],
        "full_gc_worst_ms": report["full_gc_worst_s"] * 1e3,
        "loop_s": report["loop_s"],
    }


def measure_hot_path(calls: int = 1_000_000, repeat: int = 5) -> dict[str, Any]:
    """Coalesced progress() next to a bare monotonic(), from bench_emitter."""
    spec = importlib.util.spec_from_file_location("bench_emitter", HERE / "bench_emitter.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    hot = module.measure_hot_path(calls=calls, repeat=repeat)
    return {
        "progress_us": hot["progress"]["median_us"],
        "metrics_us": hot["metrics"]["median_us"],
        "monotonic_us": hot["monotonic"]["median_us"],
    }


# -- memory under hostile call patterns (run in a fresh process) -------------------------


def _memory_child(calls: int) -> dict[str, Any]:
    from pulse_core.emitter import TrainingRun
    from pulse_core.events import Event
    from pulse_core.testing import FailingSink, FakeClock, RecordingSink

    class StuckSink(RecordingSink):
        def __init__(self) -> None:
            super().__init__(interval=0.0)
            self.release = threading.Event()

        def write(self, event: Event) -> None:
            self.release.wait()

    results: dict[str, Any] = {}
    tracemalloc.start()

    # 1. 10,000 distinct metric names per call, new ones every call.
    run = TrainingRun("mem-names", sinks=[RecordingSink()], env={}, background=False)
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    for i in range(max(1, calls // 3600)):
        run.metrics(**{f"m{i}_{j}": float(j) for j in range(10_000)})
    results["distinct_names"] = 10_000 * max(1, calls // 3600)
    results["distinct_names_peak_mib"] = (tracemalloc.get_traced_memory()[1] - base) / MIB
    run.close()

    # 2. 1 MB strings as notes, error messages and details, on a stuck sink.
    stuck = StuckSink()
    run = TrainingRun("mem-strings", sinks=[stuck], env={}, close_timeout=0.1)
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    big = "x" * 1_000_000
    for i in range(max(1, calls // 3600)):
        run.status("running", big + str(i))
        run.error("NAN_LOSS", big, details={"text": big}, fatal=False)
    results["big_strings_peak_mib"] = (tracemalloc.get_traced_memory()[1] - base) / MIB
    run.close()
    stuck.release.set()

    # 3. An hour of calls into a sink that fails every write (fake clock, inline).
    clock = FakeClock()
    failing = FailingSink()
    failing.failing = True
    run = TrainingRun(
        "mem-hour",
        sinks=[failing],
        env={},
        background=False,
        clock=clock.monotonic,
        wall=clock.time,
    )
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    steps = calls
    dt = 3600.0 / steps
    for i in range(steps):
        run.progress(epoch=1, step=i)
        run.metrics(loss=1.0)
        if i % 1000 == 0:
            run.status("running", f"note {i}")
            run.tick()
        clock.advance(dt)
    results["failing_hour_peak_mib"] = (tracemalloc.get_traced_memory()[1] - base) / MIB
    results["failing_hour_calls"] = steps
    run.close()

    # 4. A stuck writer thread for a long stretch of calls with notes and errors.
    stuck = StuckSink()
    run = TrainingRun("mem-stuck", sinks=[stuck], env={}, close_timeout=0.1)
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    for i in range(steps):
        run.progress(epoch=i // 1000 + 1, step=i)
        run.metrics(loss=1.0)
        if i % 100 == 0:
            run.status("running", f"note {i}")
            run.heartbeat()
    results["stuck_writer_peak_mib"] = (tracemalloc.get_traced_memory()[1] - base) / MIB
    run.close()
    stuck.release.set()
    tracemalloc.stop()
    return results


def measure_memory(calls: int = 360_000) -> dict[str, Any]:
    """Peak traced memory per hostile pattern, in a fresh process."""
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(calls)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    result["calls"] = calls
    return result


GIL_MODES = ("none", "thread", "interval0", "default")


def measure_gil(
    steps: int = 200_000, work_us: float = 100.0, rounds: int = 3, attribute: bool = False
) -> dict[str, Any]:
    """The loop's slow calls per mode (see the module docstring), modes taking turns.

    Per mode: the worst and p99.9 call over all rounds, the calls over 1 ms summed
    over rounds, and the load average before each round; with *attribute* also the
    calls whose net blocked time (wall minus CPU, run-queue waits and the other
    thread's run-queue wait) is over 1 ms.
    """
    result: dict[str, Any] = {"steps": steps, "rounds": rounds, "load": [], "modes": {}}
    for _ in range(rounds):
        result["load"].append(os.getloadavg()[0])
        for mode in GIL_MODES:
            with tempfile.TemporaryDirectory() as tmp:
                report = _trainer(
                    Path(tmp),
                    "gil",
                    f"mode={mode}",
                    f"steps={steps}",
                    f"work_us={work_us}",
                    f"attribute={int(attribute)}",
                )
            entry = result["modes"].setdefault(
                mode, {"loop_s": [], "worst_ms": 0.0, "p999_ms": 0.0, "over_1ms": 0}
            )
            entry["loop_s"].append(report["loop_s"])
            for call in report["calls"].values():
                entry["worst_ms"] = max(entry["worst_ms"], call["worst_s"] * 1e3)
                entry["p999_ms"] = max(entry["p999_ms"], call["p999_s"] * 1e3)
                entry["over_1ms"] += call["over_1ms"]
                if attribute:
                    entry["net_over_1ms"] = (
                        entry.get("net_over_1ms", 0) + call["net_blocked_over_1ms"]
                    )
    return result


def format_gil(r: dict[str, Any]) -> str:
    """One line per mode: calls over 1 ms, worst, p99.9."""
    calls = 2 * r["steps"] * r["rounds"]
    loads = ", ".join(f"{x:.1f}" for x in r["load"])
    lines = [f"thread switching: {calls:,} calls per mode, load {loads}"]
    for mode, e in r["modes"].items():
        net = f", net blocked > 1 ms {e['net_over_1ms']}" if "net_over_1ms" in e else ""
        lines.append(
            f"  {mode:<10} calls > 1 ms {e['over_1ms']:>4}{net}, worst {e['worst_ms']:.2f} ms,"
            f" p99.9 {e['p999_ms']:.3f} ms, loop {min(e['loop_s']):.2f} s"
        )
    return "\n".join(lines)


def run_all(quick: bool = False) -> dict[str, Any]:
    """Every measurement; *quick* uses small sizes (seconds, not minutes)."""
    if quick:
        return {
            "slow_write": measure_slow_disk("write", delay=0.05, steps=100, work_us=200, rounds=1),
            "slow_fsync": measure_slow_disk("fsync", delay=0.05, steps=100, work_us=200, rounds=1),
            "compaction": measure_compaction(
                steps=3000, max_bytes=262144, work_us=0, attribute=True
            ),
            "compaction_ab": measure_compaction_ab(steps=3000, max_bytes=262144, rounds=1),
            "compaction_defaults": measure_compaction_defaults(
                rounds=1, steps=2000, short_of_cap=8192
            ),
            "gil": measure_gil(steps=2000, rounds=1, attribute=True),
            "flood": measure_flood(steps=2000, max_bytes=65536),
            "hot_path": measure_hot_path(calls=2000, repeat=2),
            "memory": measure_memory(calls=5000),
        }
    return {
        "slow_write": measure_slow_disk("write"),
        "slow_fsync": measure_slow_disk("fsync"),
        "compaction": measure_compaction(rounds=3),
        "compaction_ab": measure_compaction_ab(),
        "compaction_defaults": measure_compaction_defaults(),
        "gil": measure_gil(),
        "flood": measure_flood(),
        "hot_path": measure_hot_path(),
        "memory": measure_memory(),
    }


def format_compaction(c: dict[str, Any]) -> str:
    """The compaction case's figures against the goal (and each round's split)."""
    splits = [
        line
        for n, pair in enumerate(c["rounds"])
        for kind, loop in pair.items()
        if (line := format_split(f"round {n + 1} {kind}", loop))
    ]
    return "\n".join([_format_compaction_line(c), *splits])


def _format_compaction_line(c: dict[str, Any]) -> str:
    return (
        f"compaction ({c['compactions']}x at {c['max_bytes']} B in {c['steps_compacting']} "
        f"steps, on {c['compaction_threads']}): {_format_goal(c)}; the whole loop: "
        f"{_format_calls(c, '')}; without compaction: {_format_calls(c, 'baseline_')}"
    )


def _format_goal(c: dict[str, Any]) -> str:
    """The goal's figures: the calls made during a compaction, over all rounds."""
    return (
        f"during compaction ({c['during_calls_progress']} + {c['during_calls_metrics']} calls): "
        f"{_format_calls(c, 'during_')} (goal worst <= 1)"
    )


def _format_calls(c: dict[str, Any], prefix: str) -> str:
    """p99.9 and worst of progress() and metrics(), from *c*'s keys starting with *prefix*."""
    return "; ".join(
        f"{name} p99.9 {c[f'{prefix}p999_{name}_ms']:.3f} ms "
        f"worst {c[f'{prefix}worst_{name}_ms']:.3f} ms"
        for name in ("progress", "metrics")
    )


def _format_slow(name: str, r: dict[str, Any]) -> str:
    return (
        f"{name}: worst progress {r['worst_progress_ms']:.3f} ms, metrics "
        f"{r['worst_metrics_ms']:.3f} ms (goal <= 1), status {r['worst_status_ms']:.3f} ms, "
        f"error {r['worst_error_ms']:.3f} ms (goal <= 10), throughput "
        f"{100 * r['throughput_ratio']:.1f} % (goal >= 95), close {r['close_s']:.2f} s; "
        f"undisturbed worst progress {r['baseline_worst_progress_ms']:.3f} ms"
    )


def format_flood(f: dict[str, Any]) -> str:
    """The status flood's figures against its goals."""
    return (
        f"flood {f['steps']} steps: log {f['log_bytes']} B (cap {f['max_bytes']}), "
        f"worst step {f['worst_step_ms']:.3f} ms (goal <= 1), in CPU time "
        f"{f['worst_step_cpu_ms']:.3f} ms; "
        f"{f['full_gcs']} full collection(s) of the heap in the loop (longest "
        f"{f['full_gc_worst_ms']:.3f} ms), worst step without one "
        f"{f['worst_step_no_full_gc_ms']:.3f} ms"
    )


def format_hot_path(h: dict[str, Any]) -> str:
    """The hot path's figures against its goal."""
    return (
        f"hot path: progress {h['progress_us']:.3f} us, metrics {h['metrics_us']:.3f} us, "
        f"monotonic {h['monotonic_us']:.3f} us (goal progress <= 0.3)"
    )


def format_table(results: dict[str, Any]) -> str:
    """The figures against the goals, one line each."""
    lines = []
    for name in ("slow_write", "slow_fsync"):
        lines.append(_format_slow(name, results[name]))
    lines.append(format_compaction(results["compaction"]))
    if "compaction_ab" in results:
        lines.append(format_compaction_ab(results["compaction_ab"]))
    if "compaction_defaults" in results:
        lines.append(format_compaction_defaults(results["compaction_defaults"]))
    if "gil" in results:
        lines.append(format_gil(results["gil"]))
    lines.append(format_flood(results["flood"]))
    lines.append(format_hot_path(results["hot_path"]))
    m = results["memory"]
    lines.append(
        "memory peak (MiB): "
        + ", ".join(f"{k} {v:.1f}" for k, v in m.items() if k.endswith("_mib"))
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print (and optionally save) its figures."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--json", type=Path, default=None, help="write results as JSON here")
    parser.add_argument(
        "--only",
        choices=["compaction", "compaction_defaults", "slow_disk", "gil", "flood", "hot_path"],
        default=None,
        help="one case",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --only compaction")
    parser.add_argument(
        "--attribute",
        action="store_true",
        help="--only compaction: split slow calls into cpu / run-queue wait / blocked",
    )
    parser.add_argument("--steps", type=int, default=600_000, help="--only compaction: steps")
    parser.add_argument("--no-ab", action="store_true", help="--only compaction: skip the A/B")
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(_memory_child(args.memory_child)), flush=True)
        return 0
    if args.only == "slow_disk":
        rounds = 1 if args.quick else args.rounds
        for fault in ("write", "fsync"):
            r = measure_slow_disk(fault, rounds=rounds, attribute=args.attribute)
            print(_format_slow(f"slow_{fault}", r))
            if "split" in r:
                print(format_split(f"slow_{fault}", r))
        return 0
    if args.only == "flood":
        print(format_flood(measure_flood(steps=2000 if args.quick else 100_000)))
        return 0
    if args.only == "hot_path":
        print(format_hot_path(measure_hot_path(calls=10_000 if args.quick else 1_000_000)))
        return 0
    if args.only == "gil":
        steps = 2000 if args.quick else args.steps // 3
        r = measure_gil(
            steps=steps, rounds=1 if args.quick else args.rounds, attribute=args.attribute
        )
        print(format_gil(r))
        if args.json is not None:
            args.json.write_text(json.dumps(r, indent=2), encoding="utf-8")
        return 0
    if args.only == "compaction_defaults":
        r = (
            measure_compaction_defaults(rounds=1, steps=2000, short_of_cap=8192)
            if args.quick
            else measure_compaction_defaults(rounds=args.rounds)
        )
        print(format_compaction_defaults(r))
        if args.json is not None:
            args.json.write_text(json.dumps(r, indent=2), encoding="utf-8")
        return 0
    if args.only == "compaction":
        if args.quick:
            results = {
                "compaction": measure_compaction(steps=3000, max_bytes=262144, work_us=0),
                "compaction_ab": measure_compaction_ab(steps=3000, max_bytes=262144, rounds=1),
            }
        else:
            results = {
                "compaction": measure_compaction(
                    steps=args.steps, rounds=args.rounds, attribute=args.attribute
                )
            }
            if not args.no_ab:
                results["compaction_ab"] = measure_compaction_ab(rounds=args.rounds)
        print(format_compaction(results["compaction"]))
        if "compaction_ab" in results:
            print(format_compaction_ab(results["compaction_ab"]))
        if args.json is not None:
            args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
        return 0
    results = run_all(quick=args.quick)
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
