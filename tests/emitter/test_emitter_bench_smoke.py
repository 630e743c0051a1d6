"""The emitter benchmark runs end to end at tiny sizes (its speed is not checked here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_PATH = Path(__file__).parent.parent / "bench" / "bench_emitter.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The bench module, loaded from its file (tests/bench is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_emitter", BENCH_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_emitter", module)
    spec.loader.exec_module(module)
    return module


class TestBenchSmoke:
    """bench_emitter's functions work on a few thousand calls and steps."""

    def test_hot_path(self, bench: ModuleType, tmp_path: Path) -> None:
        """Every hot-path measurement has positive numbers, one per repetition."""
        hot = bench.measure_hot_path(calls=2_000, repeat=2, home=tmp_path)
        for key in ("progress", "metrics", "progress_and_metrics", "monotonic", "clock_compare"):
            assert len(hot[key]["runs_us"]) == 2
            assert hot[key]["median_us"] > 0
        assert hot["log_lines"] >= 3  # meta, preparing, running, ..., done

    def test_simulate(self, bench: ModuleType, tmp_path: Path) -> None:
        """A short simulated run stays under the cap, ends done and counts v1 writes."""
        sim = bench.simulate(steps=5_000, hours=0.5, home=tmp_path)
        assert sim["under_cap"]
        assert sim["final_status"] == "done"
        assert sim["anomalies"] == 0
        assert 0 < sim["v1_writes"] <= 0.5 * 3600 * 10 + 10
        assert sim["peak_rss_kib"] > 0
        assert sim["loss_points"] > 100

    def test_main_writes_json(
        self, bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json writes the results; the table goes to stdout."""
        out = tmp_path / "results.json"
        argv = ["--calls", "2000", "--steps", "3000", "--repeat", "1", "--in-process"]
        assert bench.main([*argv, "--json", str(out)]) == 0
        results = json.loads(out.read_text(encoding="utf-8"))
        assert set(results["targets"]) == {"call_us", "call_met", "cap_met"}
        assert results["ten_hours"]["steps"] == 3000
        assert results["v1_write"]["fsync_us"] > 0
        assert "run.progress" in capsys.readouterr().out

    def test_isolated(self, bench: ModuleType) -> None:
        """The simulation also runs in a fresh process and reports its own peak RSS."""
        sim = bench.simulate_isolated(steps=2_000, hours=0.1)
        assert sim["isolated"] is True
        assert sim["final_status"] == "done"
