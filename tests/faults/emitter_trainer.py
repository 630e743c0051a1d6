"""A small training loop run as a real process, with disk faults injected in itself.

Usage: ``python emitter_trainer.py SCENARIO HOME [KEY=VALUE ...]``. It prints
one JSON object on its last stdout line: the loop's own timings (worst and
percentile call latencies per method, loop throughput), which threads did
the file writes, fsyncs and compactions, and scenario facts. Used by
``test_emitter_faults_slow.py`` (tight sizes, generous bounds) and by
``tests/bench/bench_emitter_faults.py`` (the figures).

Scenarios:

* ``loop``: a training loop (``steps`` steps of ``work_us`` of busy work,
  ``progress()`` + ``metrics()`` each step, a status note every
  ``note_every`` steps and a non-fatal error every ``error_every``) with the
  default sinks (file + v1), ``slow=write|fsync|none`` sleeping ``delay`` s
  in every ``os.write``/``os.fsync`` on a file, then ``close()``. With
  ``baseline=1`` the same loop runs first undisturbed (the delay switched
  off), side by side in one process; ``rounds=N`` repeats the pair and keeps
  the fastest loop of each kind (the machine is noisy) and the worst calls.
* ``compact``: the loop on a FileSink with a small cap (``max_bytes``), the
  log interval 0 so it fills fast, compaction slowed by ``delay`` s.
* ``flood``: ``steps`` steps each with a status note and a non-fatal error.
* ``epochs``: ``epochs`` epochs of ``per_epoch`` steps, ``step_sleep`` s
  each (the v1 snapshot is due about every other step), default sinks.
* ``thread_death``: a thread opens a run and dies of FileNotFoundError; the
  main thread lives on until killed.
* ``fork_exit`` / ``fork_raise``: a run is open, the process forks; the child
  reports, then exits 0 or raises; the parent goes on and closes the run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from pulse_core.emitter import TrainingRun
from pulse_transports import file as file_module
from pulse_transports.file import FileSink

_INF = float("inf")
_real_write = os.write
_real_fsync = os.fsync
_faults = {"write": 0.0, "fsync": 0.0}
_io_threads: dict[str, set[str]] = {"write": set(), "fsync": set(), "compact": set()}


def _slow_write(fd: int, data: Any) -> int:
    if fd > 2:
        _io_threads["write"].add(threading.current_thread().name)
        if _faults["write"]:
            time.sleep(_faults["write"])
    return _real_write(fd, data)


def _slow_fsync(fd: Any) -> None:
    _io_threads["fsync"].add(threading.current_thread().name)
    if _faults["fsync"]:
        time.sleep(_faults["fsync"])
    _real_fsync(fd)


os.write = _slow_write  # type: ignore[assignment]
os.fsync = _slow_fsync


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Timer:
    """Worst, p99.9 and count of each method's call latency, in seconds."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def call(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        fn(*args, **kwargs)
        self.samples.setdefault(name, []).append(time.perf_counter() - start)

    def report(self) -> dict[str, Any]:
        return {
            name: {
                "worst_s": max(values),
                "p999_s": _percentile(values, 0.999),
                "calls": len(values),
            }
            for name, values in self.samples.items()
        }


def busy(us: float) -> None:
    """Burn *us* microseconds of CPU, as a training step would."""
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def loop(run: TrainingRun, opts: dict[str, str], timer: Timer) -> float:
    """The training loop; returns its wall time."""
    steps = int(opts.get("steps", "300"))
    work_us = float(opts.get("work_us", "1000"))
    note_every = int(opts.get("note_every", "50"))
    error_every = int(opts.get("error_every", "100"))
    per_epoch = int(opts.get("per_epoch", "100"))
    start = time.perf_counter()
    for i in range(steps):
        busy(work_us)
        timer.call("progress", run.progress, epoch=i // per_epoch + 1, step=i % per_epoch)
        timer.call("metrics", run.metrics, loss=1.0 / (i + 1))
        if note_every and i % note_every == 0:
            timer.call("status", run.status, "running", f"step {i}")
        if error_every and i % error_every == error_every - 1:
            timer.call("error", run.error, "NAN_LOSS", f"nan at {i}", fatal=False)
    return time.perf_counter() - start


def scenario_loop(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    delay = float(opts.get("delay", "2"))
    slow = opts.get("slow", "none")
    rounds = int(opts.get("rounds", "1"))
    result: dict[str, Any] = {"loop_s": _INF, "baseline_loop_s": _INF}
    timer, base_timer = Timer(), Timer()
    for n in range(rounds):
        if opts.get("baseline") == "1":
            # The same loop undisturbed, side by side (the fault switched off).
            _faults["write"] = _faults["fsync"] = 0.0
            run = TrainingRun(f"baseline-run-{n}")
            base_timer.call("status", run.status, "running", "go")
            result["baseline_loop_s"] = min(result["baseline_loop_s"], loop(run, opts, base_timer))
            base_timer.call("close", run.close)
        if slow in _faults:
            _faults[slow] = delay
        start = time.perf_counter()
        run = TrainingRun(
            f"{opts.get('tid', 'slow-run')}-{n}" if n else opts.get("tid", "slow-run")
        )
        result["open_s"] = time.perf_counter() - start  # close_timeout: $PULSE_CLOSE_TIMEOUT
        timer.call("status", run.status, "running", "go")
        result["loop_s"] = min(result["loop_s"], loop(run, opts, timer))
        timer.call("close", run.close)
    result["calls"] = timer.report()
    if base_timer.samples:
        result["baseline"] = base_timer.report()
    result["training_thread"] = threading.current_thread().name
    return result


def scenario_compact(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    delay = float(opts.get("delay", "0.3"))
    original = FileSink._compact

    def slow_compact(self: FileSink) -> None:
        _io_threads["compact"].add(threading.current_thread().name)
        time.sleep(delay)
        original(self)

    FileSink._compact = slow_compact  # type: ignore[method-assign]
    sink = FileSink(home=home, max_bytes=int(opts.get("max_bytes", "65536")), interval=0.0)
    timer = Timer()
    run = TrainingRun("compact-run", sinks=[sink])
    timer.call("status", run.status, "running", "go")
    loop_s = loop(run, opts, timer)
    run.close()
    return {
        "loop_s": loop_s,
        "calls": timer.report(),
        "compactions": sink.compactions,
        "training_thread": threading.current_thread().name,
    }


def scenario_flood(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    steps = int(opts.get("steps", "100000"))
    max_bytes = int(opts.get("max_bytes", str(file_module.DEFAULT_MAX_BYTES)))
    sink = FileSink(home=home, max_bytes=max_bytes)
    worst = 0.0
    start = time.perf_counter()
    with TrainingRun("flood-run", sinks=[sink]) as run:
        for i in range(steps):
            t0 = time.perf_counter()
            run.progress(epoch=1, step=i)
            run.status("running", f"step {i} of {steps}: all is well")
            run.error("NAN_LOSS", f"loss was nan at step {i}", fatal=False)
            worst = max(worst, time.perf_counter() - t0)
    return {
        "loop_s": time.perf_counter() - start,
        "worst_step_s": worst,
        "log_bytes": os.path.getsize(file_module.log_path(home, "flood-run")),
        "max_bytes": max_bytes,
        "steps": steps,
    }


def scenario_epochs(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    epochs = int(opts.get("epochs", "20"))
    per_epoch = int(opts.get("per_epoch", "3"))
    step_sleep = float(opts.get("step_sleep", "0.04"))
    with TrainingRun("epochs-run", total_epochs=epochs) as run:
        for epoch in range(1, epochs + 1):
            for step in range(1, per_epoch + 1):
                time.sleep(step_sleep)
                run.progress(epoch=epoch, step=step, total_steps=per_epoch)
                run.metrics(loss=epoch + step / 10)
    return {"epochs": epochs, "per_epoch": per_epoch}


def scenario_thread_death(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    def train() -> None:
        run = TrainingRun("thread-death-run")
        run.progress(epoch=1, step=1)
        raise FileNotFoundError("/data/train.bin")

    thread = threading.Thread(target=train, name="trainer")
    thread.start()
    thread.join()
    print("ready", flush=True)
    time.sleep(120)  # the process lives on; the test kills it
    return {}


def scenario_fork(home: Path, opts: dict[str, str], raise_in_child: bool) -> dict[str, Any]:
    run = TrainingRun("fork-run")
    run.progress(epoch=1, total_epochs=3, step=1)
    run.status("running", "parent")
    pid = os.fork()
    if pid == 0:
        # The child: its copy of the run must do nothing at all.
        run.progress(epoch=99, step=99)
        run.metrics(loss=99.0)
        run.status("running", "from the child")
        run.heartbeat()
        if raise_in_child:
            raise RuntimeError("the child failed")
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    from pulse_transports.file import writer_alive

    alive_after_child = writer_alive(home, "fork-run")
    for step in range(2, 5):
        run.progress(epoch=2, step=step)
    run.close()
    return {"child_status": status, "writer_alive_after_child": alive_after_child}


def main() -> None:
    scenario, home_text, *rest = sys.argv[1:]
    opts = dict(item.split("=", 1) for item in rest)
    home = Path(home_text)
    os.environ["PULSE_HOME"] = str(home)
    if scenario == "loop":
        result = scenario_loop(home, opts)
    elif scenario == "compact":
        result = scenario_compact(home, opts)
    elif scenario == "flood":
        result = scenario_flood(home, opts)
    elif scenario == "epochs":
        result = scenario_epochs(home, opts)
    elif scenario == "thread_death":
        result = scenario_thread_death(home, opts)
    elif scenario in ("fork_exit", "fork_raise"):
        result = scenario_fork(home, opts, scenario == "fork_raise")
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    result["io_threads"] = {k: sorted(v) for k, v in _io_threads.items()}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
