"""Issue 21.3: what the hub allocates for runs goes back once they have expired.

Sources of memory that stayed after every run had expired: per-run
``pathlib`` paths in the hub's passes over every run (CPython 3.11 interns
each part it parses, so every pass over 1,000 logs churned the interned
table to twice its size); one glibc malloc arena per worker thread, whose
top ``malloc_trim`` never gives back; and the retention pass itself, whose
records of every run (about 6 MiB for 1,000 runs) made the hub's pymalloc
grow arenas that what it kept meanwhile then held: the pass runs in a child.
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import NoReturn

import pytest
import structlog
from hubkit import HubProcess, meta, status, write_log

from pulse_core.events import Metrics, RunMeta, StatusChanged
from pulse_transports import hub as hub_module
from pulse_transports import retention
from pulse_transports._homefeed import HomeFeed
from pulse_transports.file import FileSink, log_path
from pulse_transports.follow import read_events
from pulse_transports.history import recover
from pulse_transports.hub import Hub, HubSettings, start_threads
from pulse_transports.retention import RetentionFeed, RetentionPolicy

RUNS = 12
T0 = 1_767_225_600.0


def _write_runs(home: Path) -> list[str]:
    tids = [f"heap-run-{n:03d}" for n in range(RUNS)]
    for n, tid in enumerate(tids):
        sink = FileSink(home=home, fsync=False, interval=0.0)
        sink.open(tid)
        sink.write(RunMeta(tid, 1, T0 + n, name=f"run {n}"))
        sink.write(Metrics(tid, 2, T0 + n, loss=0.5))
        sink.write(StatusChanged(tid, 3, T0 + n, "done", "finished"))
        sink.close()
    return tids


@pytest.fixture
def interned(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every string ``sys.intern`` is asked for meanwhile (pathlib interns path parts)."""
    seen: list[str] = []
    real = sys.intern

    def spy(text: str) -> str:
        seen.append(text)
        return real(text)

    monkeypatch.setattr(sys, "intern", spy)
    return seen


def _per_run(seen: list[str]) -> list[str]:
    return [text for text in seen if "heap-run-" in text]


class TestNoPerRunPaths:
    """The hub's passes over every run parse no per-run path with pathlib."""

    def test_recovery_from_logs_and_from_the_index(
        self, tmp_path: Path, interned: list[str]
    ) -> None:
        """Both the first pass (folding logs) and later ones (index rows) keep plain strings."""
        home = tmp_path / "home"
        tids = _write_runs(home)
        interned.clear()
        first = recover(home, now=T0 + 100)
        again = recover(home, now=T0 + 100)
        assert _per_run(interned) == []
        for records in (first, again):
            by_id = {r.training_id: r for r in records}
            assert sorted(by_id) == tids
            for tid, record in by_id.items():
                assert record.log == str(log_path(home, tid)) == record.summary["log"]
                assert record.path == log_path(home, tid)  # a Path when asked for

    def test_retention_pass(self, tmp_path: Path, interned: list[str]) -> None:
        """A collection that removes runs reads and deletes them by plain strings."""
        home = tmp_path / "home"
        tids = _write_runs(home)
        interned.clear()
        removed = RetentionFeed(home, RetentionPolicy(keep_runs=2)).run_once()
        assert len(removed) == RUNS - 2
        assert _per_run(interned) == []
        for doomed in removed:
            assert not log_path(home, doomed.record.training_id).exists()
        assert sorted(r.training_id for r in recover(home)) == tids[-2:]

    def test_home_feed_and_history_reads(self, tmp_path: Path, interned: list[str]) -> None:
        """Following the home's logs and reading a run's past for a subscriber."""
        home = tmp_path / "home"
        tids = _write_runs(home)
        first = str(log_path(home, tids[0]))
        interned.clear()
        feed = HomeFeed(home, notifications=False)
        try:
            primed = feed.prime()
            assert sorted(primed) == tids
            feed.step(timeout=0.01)
        finally:
            feed.close()
        events = read_events(first, tids[0])
        assert events is not None
        assert [e.seq for e in events] == [1, 2, 3]
        assert _per_run(interned) == []


class TestRetentionInAChild:
    """The hub's collection reads and removes runs in a child process, not in the hub."""

    def test_a_pass_plans_outside_the_hub(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Runs are removed (their history kept) while planning in the hub would fail."""
        home = tmp_path / "home"
        tids = _write_runs(home)

        def not_here(*args: object, **kwargs: object) -> NoReturn:
            raise AssertionError("the hub read every run itself")

        monkeypatch.setattr(retention, "plan", not_here)
        monkeypatch.setattr(retention, "collect", not_here)
        with structlog.testing.capture_logs() as logs:
            RetentionFeed(home, RetentionPolicy(keep_runs=2))._collect()
        assert sorted(r.training_id for r in recover(home)) == tids[-2:]
        assert len(retention.removed_records(home)) == RUNS - 2
        [entry] = [e for e in logs if e["event"] == "pulse retention removed runs"]
        assert entry["runs"] == RUNS - 2
        assert entry["freed"] > 0

    @pytest.mark.parametrize("child", ["fails", "missing", "hangs"])
    def test_a_failed_child_is_a_collection_in_the_hub(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, child: str
    ) -> None:
        """A child that fails, cannot start or hangs: a warning, and the hub collects itself.

        The home stays bounded whatever the child does; no home is no failure.
        """
        with structlog.testing.capture_logs() as logs:
            RetentionFeed(tmp_path / "gone", RetentionPolicy())._collect()
        assert logs == []
        home = tmp_path / "home"
        tids = _write_runs(home)
        if child == "fails":
            monkeypatch.setattr(sys, "executable", shutil.which("false"))
        elif child == "missing":
            monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
        else:
            hang = tmp_path / "hang"
            hang.write_text("#!/bin/sh\nsleep 30\n")
            hang.chmod(0o755)
            monkeypatch.setattr(sys, "executable", str(hang))
        with structlog.testing.capture_logs() as logs:
            RetentionFeed(home, RetentionPolicy(keep_runs=2), child_timeout=0.5)._collect()
        warned = [e for e in logs if e["log_level"] == "warning"]
        assert [e["event"] for e in warned] == [
            "pulse retention child failed; collecting in the hub"
        ]
        assert warned[0]["error"] or warned[0]["code"]
        assert sorted(r.training_id for r in recover(home)) == tids[-2:]
        assert len(retention.removed_records(home)) == RUNS - 2


_ARENAS = """
import ctypes, os, sys, tempfile, threading
from pulse_transports._mailbox import one_malloc_arena
if sys.argv[1] == "one":
    assert one_malloc_arena()
def work():
    kept = [bytes(100_000 + n) for n in range(50)]  # malloc'ed in this thread
    del kept
threads = [threading.Thread(target=work) for _ in range(3)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(open(path).read().count("<heap nr="))
os.unlink(path)
"""


def _heaps(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _ARENAS, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


def _thread_arenas(pid: int) -> int:
    """glibc heaps of worker threads in a process: a 64 MiB-aligned mapping, rest reserved."""
    heap = 64 << 20
    maps = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        maps.append((lo, hi, fields[1], len(fields) > 5))
    return sum(
        1
        for (lo, hi, perms, named), (lo2, hi2, perms2, named2) in pairwise(maps)
        if lo % heap == 0
        and perms.startswith("rw")
        and perms2.startswith("---")
        and not named
        and not named2
        and hi == lo2
        and hi2 - lo == heap
    )


class TestOneMallocArena:
    """Worker threads share the main arena, the one ``malloc_trim`` shrinks."""

    def test_threads_share_one_arena(self) -> None:
        """Without the setting, each thread that mallocs gets an arena of its own."""
        assert _heaps("one") == 1
        assert _heaps("default") > 1  # the check sees thread arenas when there are some

    def test_the_hub_keeps_one_arena(self, start_hub: Callable[..., HubProcess]) -> None:
        """A ``pulse serve`` process with its worker threads running has no thread arena."""
        hub = start_hub()
        deadline = time.monotonic() + 10
        while len(list(Path(f"/proc/{hub.proc.pid}/task").iterdir())) < 3:
            assert time.monotonic() < deadline, "the hub started no worker thread"
            time.sleep(0.05)
        time.sleep(0.3)
        assert _thread_arenas(hub.proc.pid) == 0


class TestNothingKeptAmongHeldRuns:
    """What the hub keeps past its runs is not made while they are held (issue 21).

    A few small objects made while runs are held, and kept, sit among what the
    runs held and keep the allocator's arenas from going back once they expire.
    """

    def test_ended_logs_are_remembered_without_an_object_each(self, tmp_path: Path) -> None:
        for n in range(300):
            tid = f"ended-{n:04d}"
            write_log(tmp_path, [meta(tid), status(tid, 2, "running"), status(tid, 3, "done")])
        feed = HomeFeed(tmp_path, notifications=False, poll_interval=0.01)
        try:
            tracemalloc.start()
            try:
                assert len(feed.prime()) == 256  # the newest, read; the rest remembered unread
                feed.step(timeout=0.05)
                gc.collect()  # and CPython's free lists of tuples, floats...: what lives is left
                snapshot = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            assert feed.remembered == 300
            kept = snapshot.filter_traces([tracemalloc.Filter(True, "*/_homefeed.py")])
            blocks = sum(stat.count for stat in kept.statistics("filename"))
            # 348 with a dict (its ids, and the sizes past 256)
            assert blocks < 30, kept.statistics("lineno")[:5]
            assert feed.step(timeout=0.05) == []  # an ended log is still not read again
        finally:
            feed.close()

    def test_the_hub_starts_every_worker_at_once(self, tmp_path: Path) -> None:
        async def workers() -> int:
            hub = Hub(HubSettings(home=tmp_path, socket_path=tmp_path / "pulse.sock"))
            await hub.start()
            try:
                return sum(t.name.startswith("pulse-hub") for t in threading.enumerate())
            finally:
                await hub.close()

        assert asyncio.run(workers()) == hub_module._WORKERS

    def test_the_serving_loop_starts_every_thread_at_once(self) -> None:
        async def threads() -> int:
            loop = asyncio.get_running_loop()
            loop.set_default_executor(ThreadPoolExecutor(max_workers=4, thread_name_prefix="t21"))
            await start_threads(None, 4)
            return sum(t.name.startswith("t21") for t in threading.enumerate())

        assert asyncio.run(threads()) == 4
