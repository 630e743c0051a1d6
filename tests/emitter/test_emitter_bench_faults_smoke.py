"""The fault benchmark runs end to end at tiny sizes (its figures are not checked here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_PATH = Path(__file__).parent.parent / "bench" / "bench_emitter_faults.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The bench module, loaded from its file (tests/bench is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_emitter_faults", BENCH_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_emitter_faults", module)
    spec.loader.exec_module(module)
    return module


class TestBenchFaultsSmoke:
    """bench_emitter_faults' measurements work on a few hundred steps."""

    def test_quick_run(self, bench: ModuleType) -> None:
        """Every figure is there; the flood log stays within its cap; the table prints."""
        results = bench.run_all(quick=True)
        for name in ("slow_write", "slow_fsync"):
            assert results[name]["throughput_ratio"] > 0
            assert results[name]["worst_progress_ms"] >= 0
        compaction = results["compaction"]
        assert compaction["compactions"] >= 1
        for name in ("progress", "metrics"):  # the goal's figure: calls during a compaction
            assert compaction[f"during_calls_{name}"] >= 1
            assert 0 < compaction[f"during_worst_{name}_ms"] <= compaction[f"worst_{name}_ms"]
        assert "during compaction" in bench.format_compaction(compaction)
        for pair in results["compaction_ab"]["rounds"]:  # both sides compact: a real A/B
            assert pair["in-process"]["compactions"] >= 1
            assert pair["child"]["compactions"] >= 1
        defaults = results["compaction_defaults"]  # the README's sinks, a live hub
        assert defaults["compactions"] >= 1
        assert defaults["sinks"] == ["file", "v1", "socket"]
        assert defaults["sink_failures"] == 0  # the hub answered: a real socket path
        assert defaults["during_calls_progress"] >= 1
        assert "README settings" in bench.format_compaction_defaults(defaults)
        split = results["compaction"]["rounds"][0]["compaction"]["split"]["progress"]
        assert split["worst_wall_ms"] >= split["worst_blocked_ms"] >= 0
        assert "blocked" in bench.format_compaction(results["compaction"])
        assert set(results["gil"]["modes"]) == {"none", "thread", "interval0", "default"}
        assert all(
            m["over_1ms"] >= m["net_over_1ms"] >= 0 for m in results["gil"]["modes"].values()
        )
        assert "thread switching" in bench.format_gil(results["gil"])
        assert results["flood"]["log_bytes"] <= results["flood"]["max_bytes"]
        assert results["hot_path"]["progress_us"] > 0
        assert set(results["memory"]) >= {
            "distinct_names_peak_mib",
            "big_strings_peak_mib",
            "failing_hour_peak_mib",
            "stuck_writer_peak_mib",
        }
        assert "flood" in bench.format_table(results)

    def test_timings_are_kept_where_the_collector_does_not_walk(self) -> None:
        """The loop's own records add nothing to a collection's work, however many calls.

        A list of 600k floats is visited item by item by every collection that
        reaches it: the fault trainer's per-call timings once made a 4 ms young
        collection on the training thread, counted as the library's latency.
        """
        import gc

        sys.path.insert(0, str(Path(__file__).parent.parent / "faults"))
        try:
            from emitter_trainer import Timer
        finally:
            sys.path.pop(0)
        timer = Timer()
        for _ in range(1000):
            timer.call("progress", int)
        assert timer.report()["progress"]["calls"] == 1000
        for series in timer.samples.values():
            assert not any(isinstance(item, float) for item in gc.get_referents(series))

    def test_calls_during_compaction_are_timed_without_attribution(self, bench: ModuleType) -> None:
        """The goal's figure (calls made while the log compacts) is there in a plain run."""
        loop = bench._compact_loop(5000, 32768, 50, until=True)
        assert loop["compactions"] >= 1
        assert "split" not in loop
        for name in ("progress", "metrics"):
            assert loop[f"during_calls_{name}"] >= 1
            assert 0 < loop[f"during_worst_{name}_ms"] <= loop[f"worst_{name}_ms"]
