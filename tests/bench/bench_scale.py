"""Benchmarks of scale on one machine (issue 19): recovery, ``pulse ls``, replay, ``pulse gc``.

Run it as a script (it is not collected by pytest; a smoke test runs it tiny)::

    python tests/bench/bench_scale.py                  # default sizes, prints the figures
    python tests/bench/bench_scale.py --json out.json  # also writes them
    python tests/bench/bench_scale.py --only replay    # one part (repeatable)

Figures:

* cold recovery: :func:`pulse_transports.history.recover` without the index
  over ``--logs`` run logs of each size in ``--sizes`` MiB (real FileSink logs
  with their checkpoints, cloned under new ids), per run; the same logs
  without the checkpoint that follows their last status (a writer that died
  before it: the reader folds the lines since the one before); and with every
  checkpoint line stripped (what a log of an older writer costs).
  Goal: flat in log size (1,000 full-size runs <= 2 s means <= 2 ms a run).
  Plus ``--finished`` small ended runs and 3 live ones (writers holding locks).
* warm ``pulse ls``: the real command in a new process over ``--finished``
  runs, index warm, from a plain folder and from a project whose
  ``pyproject.toml`` configures pulse, and ``pulse show`` of one ended run,
  alternating with ``python -c pass`` (5 x ``--repeat`` rounds; ``--base``
  adds the same commands on another checkout). Goal: <= 150 ms.
* replay: ``pulse replay --json`` of a mixed log (``--events`` events, half of
  them metrics events with 3 metrics) in a new process -- of this tree and,
  with ``--base DIR``, of another checkout, in turn -- next to ``orjson.loads``
  alone over the same lines in a process of its own; the in-process read +
  fold next to ``orjson.loads`` alone; and the machine factor (``orjson.loads``
  of the BENCHMARKS.md ~10-field event, 0.58 us there). Goal: >= 500k events/s.
* ``pulse gc --yes`` on ``--gc-runs`` runs keeping 10 %: time and bytes freed.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from pulse_core.codec import encode
from pulse_core.events import Event, Metrics, Progress, RunMeta, StatusChanged
from pulse_transports.file import FileSink, log_dir, log_path
from pulse_transports.history import recover
from pulse_transports.index import INDEX_FILE

MIB = 1 << 20
#: The parts ``--only`` can choose.
PARTS = ("cold", "live", "ls", "replay", "gc")
TEMPLATE = "bench-template"


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # an installed package has its bytecode cached
    return env


def full_log(home: Path, size: int) -> bytes:
    """A real FileSink log of about *size* bytes (compacted at its cap if that is the cap)."""
    sink = FileSink(home=home, interval=0.0, fsync=False, max_bytes=max(size, 64 * 1024))
    sink.open(TEMPLATE)
    sink.write(RunMeta(TEMPLATE, 1, 1.0, name="bench", total_epochs=10))
    sink.write(StatusChanged(TEMPLATE, 2, 1.0, "running"))
    seq, step = 2, 0
    path = log_path(home, TEMPLATE)
    while path.stat().st_size < size * 0.9:
        for _ in range(500):
            step += 1
            seq += 1
            sink.write(Progress(TEMPLATE, seq, 2.0 + step, epoch=step // 5000, step=step))
            seq += 1
            extra = {"acc": step / 1e6, "lr": 0.001}
            sink.write(Metrics(TEMPLATE, seq, 2.0 + step, loss=1.0 / step, extra=extra))
    sink.write(StatusChanged(TEMPLATE, seq + 1, 3.0 + step, "done"))
    sink.close()
    data = path.read_bytes()
    path.unlink()
    return data


def clone(home: Path, data: bytes, tid: str) -> None:
    """Write *data* as the log of *tid* (the template id replaced; same length)."""
    assert len(tid) == len(TEMPLATE)
    log_dir(home).mkdir(parents=True, exist_ok=True)
    log_path(home, tid).write_bytes(data.replace(TEMPLATE.encode(), tid.encode()))


def _strip_checkpoints(data: bytes) -> bytes:
    return b"".join(
        line + b"\n"
        for line in data.splitlines()
        if not line.startswith(b'{"type":"state_checkpoint"')
    )


def _unended(data: bytes) -> tuple[bytes, int]:
    """*data* without the checkpoint after its last status (a writer that died first),
    and how many lines then follow the last checkpoint (what a reader folds)."""
    lines = data.splitlines()
    if lines[-1].startswith(b'{"type":"state_checkpoint"'):
        lines.pop()
    marks = [i for i, line in enumerate(lines) if line.startswith(b'{"type":"state_checkpoint"')]
    tail = len(lines) - 1 - marks[-1] if marks else len(lines)
    return b"".join(line + b"\n" for line in lines), tail


def _cold(home: Path, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        (home / INDEX_FILE).unlink(missing_ok=True)
        started = time.perf_counter()
        recover(home, use_index=False)
        best = min(best, time.perf_counter() - started)
    return best


def bench_cold(sizes: list[float], logs: int, repeat: int) -> list[dict[str, Any]]:
    """Per-run cold recovery cost, with and without checkpoints, by log size."""
    rows = []
    for mib in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            data = full_log(home, int(mib * MIB))
            for i in range(logs):
                clone(home, data, f"bench-{i:08d}")
            with_ck = _cold(home, repeat) / logs
            unended, tail = _unended(data)
            for i in range(logs):
                clone(home, unended, f"bench-{i:08d}")
            without_end = _cold(home, repeat) / logs
            stripped = _strip_checkpoints(data)
            for i in range(logs):
                clone(home, stripped, f"bench-{i:08d}")
            without = _cold(home, max(1, repeat // 2)) / logs
        rows.append(
            {
                "log_mib": round(len(data) / MIB, 2),
                "checkpoints": data.count(b'{"type":"state_checkpoint"'),
                "ms_per_run": round(with_ck * 1000, 2),
                "ms_per_run_unended": round(without_end * 1000, 2),
                "tail_lines_unended": tail,
                "ms_per_run_without_checkpoints": round(without * 1000, 2),
            }
        )
    return rows


def small_run(tid: str, at: float, end: bool = True) -> bytes:
    events: list[Event] = [
        RunMeta(tid, 1, at, name="bench", total_epochs=3),
        StatusChanged(tid, 2, at, "running"),
    ]
    for i in range(20):
        events.append(Progress(tid, 3 + 2 * i, at + i, epoch=1 + i // 10, step=i))
        events.append(Metrics(tid, 4 + 2 * i, at + i, loss=1.0 / (i + 1)))
    if end:
        events.append(StatusChanged(tid, 43, at + 30, "done"))
    return b"".join(encode(e) for e in events)


def many_runs(home: Path, count: int, prefix: str = "run") -> None:
    folder = log_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        tid = f"{prefix}-{i:06d}"
        (folder / f"{tid}.jsonl").write_bytes(small_run(tid, 1_767_225_600.0 + i * 60))


def bench_live_case(finished: int) -> dict[str, float]:
    """Cold and warm recovery of *finished* ended runs plus 3 live ones."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        many_runs(home, finished)
        sinks = []
        for i in range(3):
            sink = FileSink(home=home, fsync=False, interval=0.0)
            sink.open(f"live-{i}")
            sink.write(RunMeta(f"live-{i}", 1, time.time()))
            sink.write(StatusChanged(f"live-{i}", 2, time.time(), "running"))
            sinks.append(sink)
        try:
            cold = _cold(home, 1)
            recover(home)  # builds the index
            started = time.perf_counter()
            records = recover(home)
            warm = time.perf_counter() - started
            alive = sum(1 for r in records if r.liveness == "alive")
        finally:
            for sink in sinks:
                sink.close()
    return {
        "runs": finished + 3,
        "alive": alive,
        "cold_s": round(cold, 3),
        "warm_s": round(warm, 3),
    }


def _wall(
    command: list[str], repeat: int, cwd: Path | None = None, env: dict[str, str] | None = None
) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, cwd=cwd, env=env or _env())
        times.append(time.perf_counter() - started)
    return times


#: One command of an alternating set: argv, working directory, PYTHONPATH root (None: this tree).
Timed = tuple[list[str], Path | None, Path | None]


def _tree_env(root: Path | None) -> dict[str, str]:
    """The environment with *root*'s code first on the path (this tree's for None)."""
    env = _env()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])
    return env


def _alternating(commands: dict[str, Timed], repeat: int) -> dict[str, dict[str, float]]:
    """Wall and CPU (user + system) ms of each command, run in turn so they share the load."""
    wall: dict[str, list[float]] = {name: [] for name in commands}
    cpu: dict[str, list[float]] = {name: [] for name in commands}
    envs = {name: _tree_env(root) for name, (_argv, _cwd, root) in commands.items()}
    for name, (command, cwd, _root) in commands.items():
        _wall(command, 1, cwd, envs[name])  # bytecode written, caches warm
    for _ in range(repeat):
        for name, (command, cwd, _root) in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            wall[name].extend(_wall(command, 1, cwd, envs[name]))
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            used = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
            cpu[name].append(used)
    return {
        name: {
            "best_ms": round(min(wall[name]) * 1000, 1),
            "median_ms": round(statistics.median(wall[name]) * 1000, 1),
            "cpu_median_ms": round(statistics.median(cpu[name]) * 1000, 1),
        }
        for name in commands
    }


#: A project's pyproject.toml that configures pulse (where users type ``pulse ls``).
PROJECT_TOML = """\
[project]
name = "mnist-train"
version = "0.3.1"
requires-python = ">=3.11"
dependencies = ["numpy>=1.26", "torch>=2.2", "pulse-v2"]

[project.optional-dependencies]
dev = ["pytest>=8", "ruff>=0.4", "mypy>=1.10"]

[tool.ruff]
line-length = 100
target-version = "py311"

[tool.ruff.lint]
select = ["E", "F", "I", "UP", "B"]

[tool.pytest.ini_options]
addopts = "-q"
testpaths = ["tests"]

[tool.pulse]
home = "{home}"
stale_after = 30
"""


def _instructions(command: list[str], cwd: Path | None, env: dict[str, str]) -> int:
    """Instructions *command* executes (valgrind's callgrind): a figure load does not move."""
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
        capture_output=True,
        check=True,
        cwd=cwd,
        env=env,
    )
    found = re.search(rb"Collected : (\d+)", done.stderr)
    assert found is not None, done.stderr[-500:]
    return int(found.group(1))


def bench_ls(
    finished: int, repeat: int, base: Path | None = None, instructions: bool = False
) -> dict[str, Any]:
    """Warm ``pulse ls`` and ``pulse show`` in new processes, next to ``python -c pass``.

    ``ls`` runs from a plain folder (``--home``), ``ls_project`` from a project
    whose ``pyproject.toml`` has a ``[tool.pulse]`` table naming the home (the
    configuration is read), ``ls_click`` is the listing through the click
    group (the path every ``ls`` took before the short path), ``show`` and
    ``show_json`` one ended run in detail. With *base* (a checkout of other
    code, e.g. ``git worktree add --detach /tmp/base main``), each ``pulse``
    command also runs on that code as ``base_<name>``, in the same rounds.
    With *instructions*, each command's instruction count (millions, under
    valgrind) is added as ``minstr``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        many_runs(home, finished)
        plain = Path(tmp) / "plain"
        project = Path(tmp) / "project"
        plain.mkdir()
        project.mkdir()
        (project / "pyproject.toml").write_text(PROJECT_TOML.format(home=home))
        entry = [sys.executable, "-m", "pulse_transports.cli"]
        group = [sys.executable, "-c", "from pulse_transports.cli import main; main()"]
        _wall([*entry, "ls", "--home", str(home)], 1)  # warms the index
        shown = f"run-{finished - 1:06d}"
        pulse: dict[str, tuple[list[str], Path]] = {
            "ls": ([*entry, "ls", "--home", str(home)], plain),
            "ls_project": ([*entry, "ls"], project),
            "show": ([*entry, "show", shown, "--home", str(home)], plain),
            "show_json": ([*entry, "show", shown, "--home", str(home), "--json"], plain),
        }
        commands: dict[str, Timed] = {"python_pass": ([sys.executable, "-c", "pass"], plain, None)}
        for name, (argv, cwd) in pulse.items():
            commands[name] = (argv, cwd, None)
            if base is not None:
                commands[f"base_{name}"] = (argv, cwd, base)
        commands["ls_click"] = ([*group, "ls", "--home", str(home)], plain, None)
        figures = _alternating(commands, repeat)
        if instructions:
            for name, (command, where, root) in commands.items():
                count = _instructions(command, where, _tree_env(root))
                figures[name]["minstr"] = round(count / 1e6)
    return {"runs": finished, "repeat": repeat, "base": str(base) if base else None, **figures}


def mixed_log(path: Path, count: int) -> None:
    """*count* events, half of them metrics events with 3 metrics."""
    tid = "mixed-run"
    out = [
        encode(RunMeta(tid, 1, 1.0, name="mixed")),
        encode(StatusChanged(tid, 2, 1.0, "running")),
    ]
    for i in range(3, count + 1):
        if i % 2:
            out.append(encode(Progress(tid, i, 1.0 + i * 0.01, epoch=1 + i // 100_000, step=i)))
        else:
            loss = 1.0 / i
            out.append(
                encode(Metrics(tid, i, 1.0 + i * 0.01, loss=loss, extra={"acc": 0.5, "lr": 1e-3}))
            )
    path.write_bytes(b"".join(out))


#: The ~10-field event of the shared BENCHMARKS.md ("orjson.loads(line)" 0.58 us there):
#: its loads time here against that figure is the machine factor.
TEN_FIELDS = (
    b'{"type":"meta","training_id":"run-0001","seq":1,"timestamp":1767225600.25,"v":2,'
    b'"name":"resnet","total_epochs":10,"total_steps":1000,"host":"gpu-1","pid":4242}'
)
#: orjson.loads over every line of a file, as a process (what ``pulse replay`` is measured as).
LOADS_SCRIPT = (
    "import sys, orjson\n"
    "loads = orjson.loads\n"
    "for line in open(sys.argv[1], 'rb').read().splitlines():\n"
    "    loads(line)\n"
)


def machine_factor(repeat: int = 5) -> float:
    """Median us of ``orjson.loads`` of the BENCHMARKS.md ~10-field event."""
    number = 100_000
    loads, line = orjson.loads, TEN_FIELDS
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(number):
            loads(line)
        times.append((time.perf_counter() - started) / number * 1e6)
    return statistics.median(times)


def bench_replay(
    count: int, repeat: int, base: Path | None = None, instructions: int = 0
) -> dict[str, Any]:
    """``pulse replay`` events/s on the mixed log, next to orjson.loads alone.

    In one run, in turn so they share the machine's load (after one warm-up
    run each): ``pulse replay --json`` of this tree, of *base* (another
    checkout, e.g. the code before the fast fold) if given, and
    ``orjson.loads`` of every line in a process of its own, and
    ``start``: ``pulse replay --json`` of a 3-event log (interpreter start,
    imports and output: what a run costs besides its events); then in
    process the read + fold and ``orjson.loads`` alone; and the machine
    factor: ``orjson.loads`` of the BENCHMARKS.md ~10-field event.

    With *instructions* (a number of events), each process's instructions
    per event under valgrind (a figure the load does not move): the count
    on a mixed log of that many events less the count on the 3-event log.
    """
    from pulse_transports.follow import read_log

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mixed.jsonl"
        mixed_log(path, count)
        tiny = Path(tmp) / "tiny.jsonl"
        mixed_log(tiny, 3)
        lines = path.read_bytes().splitlines()
        commands: dict[str, Timed] = {"new": (_replay(path), Path(tmp), None)}
        if base is not None:
            commands["base"] = (_replay(path), Path(tmp), base)
        commands["loads"] = (_loads_process(path), Path(tmp), None)
        commands["start"] = (_replay(tiny), Path(tmp), None)
        timed = _alternating(commands, repeat)
        per_event = _instructions_per_event(Path(tmp), instructions, base) if instructions else {}
        folds = [_time(lambda: read_log(path)) for _ in range(repeat)]
        bare = [_time(lambda: _loads_each(lines)) for _ in range(repeat)]
        factor = machine_factor()
    figures: dict[str, Any] = {"events": count, "repeat": repeat}
    start = timed.pop("start")
    figures["start_ms_best"] = start["best_ms"]
    figures["start_ms_median"] = start["median_ms"]
    for name, row in timed.items():
        figures[f"{name}_ev_s_best"] = round(count / row["best_ms"] * 1000)
        figures[f"{name}_ev_s_median"] = round(count / row["median_ms"] * 1000)
        figures[f"{name}_cpu_s_median"] = round(row["cpu_median_ms"] / 1000, 3)
        if name != "loads":  # the events alone: the start of a 3-event run taken off
            events_ms = max(row["best_ms"] - start["best_ms"], 1e-3)
            figures[f"{name}_ev_s_best_after_start"] = round(count / events_ms * 1000)
    for name, instr in per_event.items():
        figures[f"{name}_instr_per_event"] = instr
    new = timed["new"]
    if base is not None:
        figures["speedup_over_base_best"] = round(timed["base"]["best_ms"] / new["best_ms"], 2)
        figures["speedup_over_base_cpu"] = round(
            timed["base"]["cpu_median_ms"] / new["cpu_median_ms"], 2
        )
    figures["new_vs_loads_best"] = round(timed["loads"]["best_ms"] / new["best_ms"], 2)
    figures["new_vs_loads_cpu"] = round(timed["loads"]["cpu_median_ms"] / new["cpu_median_ms"], 2)
    figures["in_process_read_and_fold_ev_s"] = round(count / min(folds))
    figures["in_process_loads_ev_s"] = round(count / min(bare))
    figures["in_process_fold_vs_loads"] = round(min(bare) / min(folds), 2)
    figures["ten_field_loads_us"] = round(factor, 3)
    figures["machine_factor_vs_benchmarks_md"] = round(factor / 0.58, 2)
    return figures


def _replay(path: Path) -> list[str]:
    return [sys.executable, "-m", "pulse_transports.cli", "replay", str(path), "--json"]


def _loads_process(path: Path) -> list[str]:
    return [sys.executable, "-c", LOADS_SCRIPT, str(path)]


def _instructions_per_event(tmp: Path, count: int, base: Path | None) -> dict[str, int]:
    """Instructions per event of ``pulse replay`` (this tree, *base*) and of orjson.loads.

    Each process on a mixed log of *count* events less the same on a 3-event
    log: start, imports and output taken off.
    """
    big, tiny = tmp / "instr.jsonl", tmp / "tiny.jsonl"
    mixed_log(big, count)
    mixed_log(tiny, 3)
    runs: dict[str, tuple[Any, Path | None]] = {
        "new": (_replay, None),
        "loads": (_loads_process, None),
    }
    if base is not None:
        runs["base"] = (_replay, base)
    out = {}
    for name, (argv, root) in runs.items():
        env = _tree_env(root)
        spent = _instructions(argv(big), tmp, env) - _instructions(argv(tiny), tmp, env)
        out[name] = round(spent / (count - 3))
    return out


def _loads_each(lines: list[bytes]) -> None:
    loads = orjson.loads
    for line in lines:
        loads(line)


def _time(func: Any) -> float:
    started = time.perf_counter()
    func()
    return time.perf_counter() - started


def bench_gc(count: int) -> dict[str, float]:
    """``pulse gc --yes`` keeping a tenth of *count* runs: time and bytes freed."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        many_runs(home, count)
        before = sum(p.stat().st_size for p in log_dir(home).iterdir())
        keep = str(max(1, count // 10))
        command = [sys.executable, "-m", "pulse_transports.cli", "gc", "--home", str(home)]
        started = time.perf_counter()
        done = subprocess.run(
            [*command, "--keep-runs", keep, "--yes", "--json"],
            capture_output=True,
            check=True,
            env=_env(),
        )
        seconds = time.perf_counter() - started
        result = orjson.loads(done.stdout)
        after = sum(p.stat().st_size for p in log_dir(home).glob("*.jsonl"))
        removed_file = (home / "logs" / "removed.jsonl").stat().st_size
    return {
        "runs": count,
        "removed": len(result["removed"]),
        "seconds": round(seconds, 2),
        "bytes_before": before,
        "bytes_freed": result["bytes_freed"],
        "bytes_after": after,
        "removed_history_bytes": removed_file,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every benchmark, print the figures, return them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.5,2,8", help="log sizes (MiB) for cold recovery")
    parser.add_argument("--logs", type=int, default=50, help="logs of each size")
    parser.add_argument("--finished", type=int, default=1000, help="runs for ls and the live case")
    parser.add_argument("--events", type=int, default=1_000_000, help="events of the mixed log")
    parser.add_argument("--gc-runs", type=int, default=10_000, help="runs for pulse gc")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (best is kept)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument(
        "--base",
        type=Path,
        default=None,
        help="ls/show and replay also on this checkout's code",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="also count ls/show and replay instructions under valgrind (load-independent)",
    )
    parser.add_argument(
        "--instr-events",
        type=int,
        default=100_000,
        help="events of the mixed log replayed under valgrind (with --instructions)",
    )
    parser.add_argument(
        "--only", choices=PARTS, action="append", default=None, help="run this part (repeatable)"
    )
    args = parser.parse_args(argv)
    parts = set(args.only or PARTS)
    sizes = [float(x) for x in args.sizes.split(",") if x]
    figures: dict[str, Any] = {}
    if "cold" in parts:
        figures["cold_recovery"] = bench_cold(sizes, args.logs, args.repeat)
        for row in figures["cold_recovery"]:
            print(f"cold recovery, {args.logs} logs of {row['log_mib']} MiB: {row}")
    if "live" in parts:
        figures["live_case"] = bench_live_case(args.finished)
        print(f"recovery, {args.finished} ended + 3 live runs: {figures['live_case']}")
    if "ls" in parts:
        figures["ls"] = bench_ls(args.finished, 5 * args.repeat, args.base, args.instructions)
        print(f"warm pulse ls/show, {args.finished} runs, {5 * args.repeat} rounds:")
        for name, row in figures["ls"].items():
            if isinstance(row, dict):
                print(f"  {name:<16} {row}")
    if "replay" in parts:
        figures["replay"] = bench_replay(
            args.events, args.repeat, args.base, args.instr_events if args.instructions else 0
        )
        print(f"replay: {figures['replay']}")
    if "gc" in parts:
        figures["gc"] = bench_gc(args.gc_runs)
        print(f"pulse gc: {figures['gc']}")
    if args.json is not None:
        args.json.write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))
    return figures


if __name__ == "__main__":
    main()
