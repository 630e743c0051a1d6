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
  log interval 0 so it fills fast, compaction slowed by ``delay`` s. With
  ``sinks=default`` the run has the README's default sinks instead (their
  cap must be ``max_bytes``); ``prefill=N`` first writes the run's log as a
  long run leaves it, N bytes short of the cap, then waits ``settle_s``
  seconds (a running hub reads the new log meanwhile, as it long has a
  long run's); ``tid`` names the run.
* ``flood``: ``steps`` steps each with a status note and a non-fatal error.
* ``epochs``: ``epochs`` epochs of ``per_epoch`` steps, ``step_sleep`` s
  each (the v1 snapshot is due about every other step), default sinks.
* ``gil``: the compaction loop's pattern (``work_us`` of busy work, then
  ``progress()`` + ``metrics()``) in one of four modes (``mode=``), to tell the
  interpreter's thread switching from the library's share: ``none`` (no-op
  calls, no other thread), ``thread`` (no-op calls that hand a value to a
  plain Python thread which, like the writer at interval 0, wakes 5 ms after
  a hand-over and encodes and writes what it got in 0.2 ms slices: no PULSE
  code at all), ``interval0`` (a run whose FileSink has interval 0 and a cap
  never reached: the compaction benchmark's baseline) and ``default`` (a run
  with the README's default sinks).
* ``thread_death``: a thread opens a run and dies of FileNotFoundError; the
  main thread lives on until killed.
* ``fork_exit`` / ``fork_raise``: a run is open, the process forks; the child
  reports, then exits 0 or raises; the parent goes on and closes the run.
"""

from __future__ import annotations

import array
import gc
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pulse_core.codec import encode
from pulse_core.emitter import TrainingRun
from pulse_core.events import Event, Metrics, Progress, RunMeta
from pulse_transports import file as file_module
from pulse_transports.file import FileSink

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hub"))

from hubkit import write_log  # a run's log, as its file sink writes it

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


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _series(table: dict[str, array.array[float]], name: str) -> array.array[float]:
    """*table*'s array for *name*, made on first use (not one per call, as setdefault would)."""
    series = table.get(name)
    if series is None:
        series = table[name] = array.array("d")
    return series


class Timer:
    """Worst, p99.9 and count of each method's call latency, in seconds.

    With *attribute*, each call is also bracketed by the training thread's CPU
    time (``time.thread_time_ns``) and its run-queue wait (2nd field of
    ``/proc/thread-self/schedstat``, read with ``os.pread`` on a pre-opened fd),
    and a gc callback counts the collector's time on this thread. A call over
    *slow_s* is then split: wall = cpu + runqueue (the OS ran something else:
    machine noise) + blocked (the GIL, a lock, I/O: the library's share). The
    ``pread`` releases the GIL twice per call (outside the timed span), which
    hands the writer thread the GIL between calls: report plain runs beside.
    """

    def __init__(self, attribute: bool = False, slow_s: float = 0.0005) -> None:
        #: every call's wall time (s), per method: arrays of floats, not lists, so a
        #: collection never visits 600k elements (a list of floats is traversed
        #: item by item: 4 ms of a young collection at 143k calls, the loop's worst).
        self.samples: dict[str, array.array[float]] = {}
        self.slow: dict[str, list[tuple[int, int, int, int, int]]] = {}
        self.slow_gc: dict[str, list[tuple[int, int, int, int]]] = {}
        #: calls made during a compaction: every wall time, the net blocked of slow ones (s)
        self.during_walls: dict[str, array.array[float]] = {}
        self.during_net: dict[str, array.array[float]] = {}
        self.attribute = attribute
        self.slow_ns = int(slow_s * 1e9)
        self.gc_ns = 0
        self.gc_gen2 = 0
        self.gc_cpu_ns = 0
        self.gc_by_gen = [0, 0, 0]  # collections on this thread, per generation
        self._gc_gen = -1  # the oldest generation collected inside the current call
        self._gc_start = 0
        self._gc_cpu_start = 0
        self._other_start = 0
        self.other_gc_worst_ns = 0
        self.other_gen2 = 0
        self._fd = -1
        self._wfd = -1  # the writer thread's schedstat (see watch_writer)
        if attribute:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self._thread = threading.get_ident()

            gc.callbacks.append(self._on_gc)

    def watch_writer(self, run: TrainingRun) -> None:
        """Also read *run*'s writer thread's run-queue wait around each call.

        A training thread that waits for the GIL while the writer holding it
        is itself waiting on a run queue is blocked by the OS, not by the
        library: ``net blocked`` subtracts that wait.
        """
        thread = run._thread
        if self._fd >= 0 and thread is not None and thread.native_id is not None:
            if self._wfd >= 0:
                os.close(self._wfd)
            self._wfd = os.open(f"/proc/self/task/{thread.native_id}/schedstat", os.O_RDONLY)

    def _writer_runq(self) -> int:
        """The writer thread's run-queue wait so far (ns); -1 once it is gone."""
        if self._wfd < 0:
            return -1
        try:
            return int(os.pread(self._wfd, 64, 0).split()[1])
        except OSError:  # the thread ended (the run closed)
            os.close(self._wfd)
            self._wfd = -1
            return -1

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self._thread:
            # Another thread (the writer) collecting holds the GIL throughout:
            # no switch interval interrupts a collection.
            if phase == "start":
                self._other_start = time.perf_counter_ns()
            else:
                took = time.perf_counter_ns() - self._other_start
                self.other_gc_worst_ns = max(self.other_gc_worst_ns, took)
                self.other_gen2 += info["generation"] == 2
            return
        if phase == "start":
            self._gc_start = time.perf_counter_ns()
            self._gc_cpu_start = time.thread_time_ns()
        else:
            generation = info["generation"]
            self.gc_ns += time.perf_counter_ns() - self._gc_start
            self.gc_cpu_ns += time.thread_time_ns() - self._gc_cpu_start
            self.gc_gen2 += generation == 2
            self.gc_by_gen[generation] += 1
            self._gc_gen = max(self._gc_gen, generation)

    def call(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._fd < 0:
            start = time.perf_counter()
            fn(*args, **kwargs)
            end = time.perf_counter()
            _series(self.samples, name).append(end - start)
            if _compacting[0] or end < _window_end[0]:
                _series(self.during_walls, name).append(end - start)
            return
        fd, pread = self._fd, os.pread
        w0 = self._writer_runq()
        q0 = int(pread(fd, 64, 0).split()[1])
        gc0, gcc0 = self.gc_ns, self.gc_cpu_ns
        self._gc_gen = -1
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        fn(*args, **kwargs)
        t1 = time.perf_counter_ns()
        c1 = time.thread_time_ns()
        q1 = int(pread(fd, 64, 0).split()[1])
        w1 = self._writer_runq() if w0 >= 0 else -1
        wall = t1 - t0
        _series(self.samples, name).append(wall / 1e9)
        if _compacting[0] or t1 / 1e9 < _window_end[0]:
            _series(self.during_walls, name).append(wall / 1e9)
            if wall > self.slow_ns:
                net = max(0, wall - (c1 - c0) - (q1 - q0) - max(0, w1 - w0))
                _series(self.during_net, name).append(net / 1e9)
        if wall > self.slow_ns:
            slow = (wall, c1 - c0, q1 - q0, self.gc_ns - gc0, max(0, w1 - w0))
            self.slow.setdefault(name, []).append(slow)
            if self._gc_gen >= 0:  # (generation, gc wall, gc cpu, call wall) of slow calls
                gc_call = (self._gc_gen, self.gc_ns - gc0, self.gc_cpu_ns - gcc0, wall)
                self.slow_gc.setdefault(name, []).append(gc_call)

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, values in self.samples.items():
            during = self.during_walls.get(name, ())
            out[name] = {
                "worst_s": max(values),
                "p999_s": _percentile(values, 0.999),
                "calls": len(values),
                # calls made while compacting and just after (the goal's figure)
                "during_compaction": {
                    "calls": len(during),
                    "worst_s": max(during, default=0.0),
                    "p999_s": _percentile(during, 0.999),
                },
            }
        if self.attribute:
            for name, entry in out.items():
                slow = self.slow.get(name, [])
                # blocked = wall - cpu - runqueue (clamped: the brackets are a bit wider)
                blocked = [max(0, w - c - q) for w, c, q, *_ in slow]
                # minus the time the writer (maybe holding the GIL) waited on a run queue
                net = [max(0, b - s[4]) for b, s in zip(blocked, slow, strict=True)]
                entry["worst_net_blocked_s"] = max(net, default=0) / 1e9
                entry["net_blocked_over_1ms"] = sum(b > 1_000_000 for b in net)
                entry["slow_calls"] = len(slow)
                entry["blocked_over_1ms"] = sum(b > 1_000_000 for b in blocked)
                entry["worst_blocked_s"] = max(blocked, default=0) / 1e9
                entry["worst_runq_s"] = max((s[2] for s in slow), default=0) / 1e9
                entry["worst_cpu_s"] = max((s[1] for s in slow), default=0) / 1e9
                entry["worst_gc_s"] = max((s[3] for s in slow), default=0) / 1e9
                with_gc = self.slow_gc.get(name, [])
                entry["slow_calls_with_gc"] = [  # by the oldest generation collected
                    sum(g[0] == gen for g in with_gc) for gen in range(3)
                ]
                entry["worst_gc_cpu_s"] = max((g[2] for g in with_gc), default=0) / 1e9
                nets = self.during_net.get(name, ())
                entry["during_compaction"]["worst_net_blocked_s"] = max(nets, default=0.0)
                entry["during_compaction"]["net_blocked_over_1ms"] = sum(n > 0.001 for n in nets)
                worst = max(slow, default=(0, 0, 0, 0, 0))
                entry["worst_split_s"] = {  # the worst wall call, split
                    "cpu": worst[1] / 1e9,
                    "runq": worst[2] / 1e9,
                    "blocked": max(0, worst[0] - worst[1] - worst[2]) / 1e9,
                    "gc": worst[3] / 1e9,
                    "writer_runq": worst[4] / 1e9,
                }
        return out

    def extra(self) -> dict[str, Any]:
        """The attribution's process-wide figures: gc on this thread, the writer's steps."""
        if not self.attribute:
            return {}
        return {
            "gc": {
                "training_thread_s": self.gc_ns / 1e9,
                "training_thread_cpu_s": self.gc_cpu_ns / 1e9,
                "training_thread_by_gen": self.gc_by_gen,
                "gen2": self.gc_gen2,
                "other_threads_worst_s": self.other_gc_worst_ns / 1e9,
                "other_threads_gen2": self.other_gen2,
            },
            "writer": dict(_writer_steps),
        }


#: The writer thread's steps (``_drain``/``_tick_locked`` off the training thread):
#: the longest one in CPU time (an upper bound of one GIL hold: the short
#: syscalls inside release the GIL but rarely let another thread in) and in wall time.
_writer_steps: dict[str, float] = {
    "worst_cpu_s": 0.0,
    "worst_wall_s": 0.0,
    "steps": 0,
    "worst_slice_cpu_s": 0.0,  # the longest CPU stretch between two yields of the GIL
    "worst_slice_end": "",  # where that stretch ended (step, pace, spawn, yield)
    "worst_spawn_wall_s": 0.0,  # the longest start of a compaction child (GIL held)
    "yields": 0,
}
_slice_cpu0 = [0]


def _end_slice(where: str, now: int | None = None) -> None:
    now = time.thread_time_ns() if now is None else now
    _note_slice((now - _slice_cpu0[0]) / 1e9, where)
    _slice_cpu0[0] = now


def _note_slice(slice_s: float, where: str) -> None:
    steps = _writer_steps
    if slice_s > steps["worst_slice_cpu_s"]:
        steps["worst_slice_cpu_s"] = slice_s
        steps["worst_slice_end"] = where + (" (compacting)" if _compacting[0] else "")


#: True while the writer is inside FileSink._compact; the end of the window
#: (perf_counter) in which calls count as "during compaction".
_compacting = [False]
_window_end = [0.0]
#: Calls this long after a compaction still count as during it (the backlog drains).
AFTER_COMPACTION_S = 0.1


_probed: list[bool] = []


def _probe_writer() -> None:
    from pulse_core.emitter._writer import _RunWriter

    main = threading.get_ident()
    for name in ("_drain", "_tick_locked", "_flush_if_asked"):
        original = getattr(_RunWriter, name)

        def probed(
            self: Any, *args: Any, _original: Any = original, _name: str = name, **kwargs: Any
        ) -> Any:
            if threading.get_ident() == main:
                return _original(self, *args, **kwargs)
            c0, t0 = time.thread_time_ns(), time.perf_counter_ns()
            _slice_cpu0[0] = c0
            try:
                return _original(self, *args, **kwargs)
            finally:
                _end_slice(_name)
                cpu, wall = time.thread_time_ns() - c0, time.perf_counter_ns() - t0
                steps = _writer_steps
                steps["steps"] += 1
                steps["worst_cpu_s"] = max(steps["worst_cpu_s"], cpu / 1e9)
                steps["worst_wall_s"] = max(steps["worst_wall_s"], wall / 1e9)

        setattr(_RunWriter, name, probed)
    pace = getattr(_RunWriter, "_pace", None)
    if pace is not None:

        def paced(self: Any) -> None:
            start, before = self._slice_start, time.thread_time_ns()
            pace(self)
            if self._slice_start != start:  # it slept: the slice ended before the sleep
                steps = _writer_steps
                steps["yields"] += 1
                _note_slice((before - _slice_cpu0[0]) / 1e9, "pace")
                _slice_cpu0[0] = time.thread_time_ns()

        _RunWriter._pace = paced  # type: ignore[method-assign]
    _probe_compaction_yields()


def _probe_compaction_yields() -> None:
    """End a writer slice where a compaction really lets the GIL go.

    At the compaction's explicit yields (``file._yield_gil``) and right after
    its child is started (the writer then blocks until the child exits): so the
    longest slice is the longest stretch the writer held the GIL in a compaction.
    """
    import _posixsubprocess

    def after(original: Any, where: str) -> Any:
        def ended(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            finally:
                if threading.current_thread().name.startswith("pulse-run"):
                    _end_slice(where)
                    _writer_steps["yields"] += 1

        return ended

    if hasattr(file_module, "_yield_gil"):
        real_yield = file_module._yield_gil

        def labelled() -> None:  # which of the compaction's yields ends a stretch
            after(real_yield, f"yield at file.py:{sys._getframe(1).f_lineno}")()

        file_module._yield_gil = labelled
    os.posix_spawn = after(timed(os.posix_spawn), "spawn")
    from pulse_transports import _compact as compact_module

    libc_spawn = getattr(compact_module, "_LibcSpawn", None)
    if libc_spawn is not None:  # posix_spawn through ctypes
        libc_spawn.spawn = after(timed(libc_spawn.spawn), "spawn")
    _posixsubprocess.fork_exec = after(timed(_posixsubprocess.fork_exec), "spawn")


def timed(spawn: Any) -> Any:
    """Note the longest wall time of starting a child (the GIL is held throughout)."""

    def started(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return spawn(*args, **kwargs)
        finally:
            took = time.perf_counter() - t0
            _writer_steps["worst_spawn_wall_s"] = max(_writer_steps["worst_spawn_wall_s"], took)

    return started


def _timer(opts: dict[str, str]) -> Timer:
    """A Timer; ``attribute=1`` splits slow calls (and probes the writer's steps)."""
    if opts.get("attribute") != "1":
        return Timer()
    if not _probed:
        _probe_writer()
        _probed.append(True)  # once per process
    return Timer(attribute=True, slow_s=float(opts.get("slow_ms", "0.5")) / 1e3)


_settled = [True]


def settle() -> None:
    """Collect what the imports and the run's set-up left, before the timed loop.

    The interpreter's first full collection sweeps every object the imports
    made (~9 ms here), and the first young collections sweep what making the
    run built; a training program has long had these by the time it trains
    (it built a model and loaded data). Had inside the loop they are the
    interpreter's pauses, not reporting's: ``settled=0`` leaves them there.
    """
    if _settled[0]:
        gc.collect()


def busy(us: float) -> None:
    """Burn *us* microseconds of CPU, as a training step would."""
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


def loop(
    run: TrainingRun, opts: dict[str, str], timer: Timer, more: Any = None
) -> tuple[float, int]:
    """The training loop; returns its wall time and its steps.

    ``steps`` steps, then on while ``more()`` is true (at most 4 times as many).
    """
    steps = int(opts.get("steps", "300"))
    work_us = float(opts.get("work_us", "1000"))
    note_every = int(opts.get("note_every", "50"))
    error_every = int(opts.get("error_every", "100"))
    per_epoch = int(opts.get("per_epoch", "100"))
    settle()
    start = time.perf_counter()
    i = -1
    while i < steps - 1 or (more is not None and more() and i < 4 * steps):
        i += 1
        busy(work_us)
        timer.call("progress", run.progress, epoch=i // per_epoch + 1, step=i % per_epoch)
        timer.call("metrics", run.metrics, loss=1.0 / (i + 1))
        if note_every and i % note_every == 0:
            timer.call("status", run.status, "running", f"step {i}")
        if error_every and i % error_every == error_every - 1:
            timer.call("error", run.error, "NAN_LOSS", f"nan at {i}", fatal=False)
    return time.perf_counter() - start, i + 1


def scenario_loop(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    delay = float(opts.get("delay", "2"))
    slow = opts.get("slow", "none")
    rounds = int(opts.get("rounds", "1"))
    result: dict[str, Any] = {"loop_s": _INF, "baseline_loop_s": _INF}
    timer, base_timer = _timer(opts), _timer(opts)
    for n in range(rounds):
        if opts.get("baseline") == "1":
            # The same loop undisturbed, side by side (the fault switched off).
            _faults["write"] = _faults["fsync"] = 0.0
            run = TrainingRun(f"baseline-run-{n}")
            base_timer.watch_writer(run)
            base_timer.call("status", run.status, "running", "go")
            result["baseline_loop_s"] = min(
                result["baseline_loop_s"], loop(run, opts, base_timer)[0]
            )
            base_timer.call("close", run.close)
        if slow in _faults:
            _faults[slow] = delay
        start = time.perf_counter()
        run = TrainingRun(
            f"{opts.get('tid', 'slow-run')}-{n}" if n else opts.get("tid", "slow-run")
        )
        result["open_s"] = time.perf_counter() - start  # close_timeout: $PULSE_CLOSE_TIMEOUT
        timer.watch_writer(run)
        timer.call("status", run.status, "running", "go")
        result["loop_s"] = min(result["loop_s"], loop(run, opts, timer)[0])
        timer.call("close", run.close)
    result["calls"] = timer.report()
    result.update(timer.extra())
    if base_timer.samples:
        result["baseline"] = base_timer.report()
    result["training_thread"] = threading.current_thread().name
    return result


def scenario_compact(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    delay = float(opts.get("delay", "0.3"))
    original = FileSink._compact

    def slow_compact(self: FileSink) -> None:
        _io_threads["compact"].add(threading.current_thread().name)
        _compacting[0] = True
        try:
            if delay:
                time.sleep(delay)
            original(self)
        finally:
            _compacting[0] = False
            _window_end[0] = time.perf_counter() + AFTER_COMPACTION_S

    FileSink._compact = slow_compact  # type: ignore[method-assign]
    max_bytes = int(opts.get("max_bytes", "65536"))
    tid = opts.get("tid", "compact-run")
    if "prefill" in opts:  # a long run's log, this many bytes short of the cap
        _prefill(home, tid, max_bytes - int(opts["prefill"]))
        time.sleep(float(opts.get("settle_s", "0")))  # a hub reads the new log meanwhile
    timer = _timer(opts)
    if opts.get("sinks") == "default":
        # The README's settings: file (its default cap and interval), v1, socket.
        run = TrainingRun(tid)
        sink = next(r.sink for r in run._routes if isinstance(r.sink, FileSink))
        if sink.max_bytes != max_bytes:
            raise SystemExit(f"the default cap is {sink.max_bytes}, not max_bytes={max_bytes}")
    else:
        sink = FileSink(home=home, max_bytes=max_bytes, interval=0.0)
        run = TrainingRun(tid, sinks=[sink])
    timer.watch_writer(run)
    timer.call("status", run.status, "running", "go")

    def more() -> bool:
        # The log has not compacted yet (how many steps fill the cap depends on
        # how much the writer coalesces), or a compaction's window is not over.
        return sink.compactions == 0 or _compacting[0] or time.perf_counter() < _window_end[0]

    loop_s, steps = loop(run, opts, timer, more if opts.get("until_compacted") == "1" else None)
    stats = run.sink_stats()
    run.close()
    return {
        "sink_stats": stats,
        "loop_s": loop_s,
        "steps": steps,
        "calls": timer.report(),
        **timer.extra(),
        "compactions": sink.compactions,
        "sinks": [r.name for r in run._routes],
        "training_thread": threading.current_thread().name,
    }


def _prefill(home: Path, training_id: str, size: int) -> None:
    """Write *training_id*'s log as a long run leaves it: about *size* bytes of lines.

    A run opened on it continues it (its seq goes on), so the loop reaches the
    cap within seconds at the default log interval, as it would after hours.
    """
    events: list[Event] = [RunMeta(training_id=training_id, seq=1, timestamp=time.time())]
    total, step = len(encode(events[0])), 0
    while total < size:
        step += 1
        now = time.time()
        pair = (
            Progress(
                training_id=training_id,
                seq=2 * step,
                timestamp=now,
                epoch=step // 1000 + 1,
                step=step % 1000,
            ),
            Metrics(training_id=training_id, seq=2 * step + 1, timestamp=now, loss=1.0 / step),
        )
        events.extend(pair)
        total += sum(len(encode(event)) for event in pair)
    write_log(home, events)


def scenario_flood(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    steps = int(opts.get("steps", "100000"))
    max_bytes = int(opts.get("max_bytes", str(file_module.DEFAULT_MAX_BYTES)))
    sink = FileSink(home=home, max_bytes=max_bytes)
    worst = worst_no_full = worst_cpu = 0.0
    # Full collections on this thread (they sweep the whole heap: the program's
    # size, not reporting's work): counted, timed, and the steps they land in
    # reported apart.
    full = [0, 0, 0.0]  # collections, the one running's start (ns), longest (s)
    me = threading.get_ident()

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2 and threading.get_ident() == me:
            if phase == "start":
                full[0] += 1
                full[1] = time.perf_counter_ns()
            else:
                full[2] = max(full[2], (time.perf_counter_ns() - full[1]) / 1e9)

    start = time.perf_counter()
    with TrainingRun("flood-run", sinks=[sink]) as run:
        settle()
        gc.callbacks.append(on_gc)
        for i in range(steps):
            collections = full[0]
            c0 = time.thread_time()
            t0 = time.perf_counter()
            run.progress(epoch=1, step=i)
            run.status("running", f"step {i} of {steps}: all is well")
            run.error("NAN_LOSS", f"loss was nan at step {i}", fatal=False)
            took = time.perf_counter() - t0
            worst_cpu = max(worst_cpu, time.thread_time() - c0)
            worst = max(worst, took)
            if full[0] == collections:
                worst_no_full = max(worst_no_full, took)
        gc.callbacks.remove(on_gc)
    return {
        "loop_s": time.perf_counter() - start,
        "worst_step_s": worst,
        "worst_step_no_full_gc_s": worst_no_full,
        "worst_step_cpu_s": worst_cpu,  # the OS running others is not in it
        "full_gcs": full[0],
        "full_gc_worst_s": full[2],
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


class _HandOver:
    """The ``thread`` control: a plain Python writer thread, no PULSE code.

    Each call appends its values and wakes the thread once per batch (as the
    emitter's hot path does); the thread waits 5 ms for the batch to gather,
    then JSON-encodes and writes every item to ``/dev/null``, sleeping 0.1 ms
    after each 0.2 ms of work (the emitter writer's ``_SLICE``/``_YIELD``).
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []
        self.wake = threading.Event()
        self.stop = False
        self.fd = os.open(os.devnull, os.O_WRONLY)
        self._thread = threading.Thread(target=self._work, name="control-writer", daemon=True)
        self._thread.start()

    def progress(self, **values: Any) -> None:
        self.items.append(("progress", values))
        if not self.wake.is_set():
            self.wake.set()

    def metrics(self, **values: Any) -> None:
        self.items.append(("metrics", values))
        if not self.wake.is_set():
            self.wake.set()

    def _work(self) -> None:
        while not self.stop:
            if self.wake.wait(0.05):
                time.sleep(0.005)
            self.wake.clear()
            items, self.items = self.items, []
            start = time.perf_counter()
            for kind, values in items:
                _real_write(self.fd, json.dumps({"type": kind, **values}).encode() + b"\n")
                if time.perf_counter() - start >= 0.0002:
                    time.sleep(0.0001)
                    start = time.perf_counter()

    def close(self) -> None:
        self.stop = True
        self._thread.join()
        os.close(self.fd)


class _NoOp:
    """The ``none`` control: calls that do nothing."""

    _thread = None

    def progress(self, **values: Any) -> None:
        pass

    def metrics(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def scenario_gil(home: Path, opts: dict[str, str]) -> dict[str, Any]:
    mode = opts.get("mode", "none")
    run: Any
    if mode == "none":
        run = _NoOp()
    elif mode == "thread":
        run = _HandOver()
    elif mode == "interval0":
        run = TrainingRun("gil-run", sinks=[FileSink(home=home, max_bytes=1 << 40, interval=0.0)])
    elif mode == "default":
        run = TrainingRun("gil-run")
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    steps = int(opts.get("steps", "300"))
    work_us = float(opts.get("work_us", "100"))
    per_epoch = int(opts.get("per_epoch", "100"))
    timer = _timer(opts)
    timer.watch_writer(run)  # the writer's (or the control thread's) run-queue wait
    settle()
    start = time.perf_counter()
    for i in range(steps):
        busy(work_us)
        timer.call("progress", run.progress, epoch=i // per_epoch + 1, step=i % per_epoch)
        timer.call("metrics", run.metrics, loss=1.0 / (i + 1))
    loop_s = time.perf_counter() - start
    run.close()
    calls = timer.report()
    for name, entry in calls.items():
        entry["over_1ms"] = sum(s > 0.001 for s in timer.samples[name])
    return {"mode": mode, "loop_s": loop_s, "calls": calls}


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
    _settled[0] = opts.pop("settled", "1") == "1"
    if scenario == "loop":
        result = scenario_loop(home, opts)
    elif scenario == "compact":
        result = scenario_compact(home, opts)
    elif scenario == "flood":
        result = scenario_flood(home, opts)
    elif scenario == "epochs":
        result = scenario_epochs(home, opts)
    elif scenario == "gil":
        result = scenario_gil(home, opts)
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
