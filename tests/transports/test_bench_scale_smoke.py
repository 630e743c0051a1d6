"""Smoke test of tests/bench/bench_scale.py: every benchmark runs at a tiny size."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import orjson

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_scale.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_scale", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestBenchScaleSmoke:
    """The scale benchmarks run end to end and report every figure."""

    def test_tiny_run(self, tmp_path: Path) -> None:
        """Tiny sizes: every figure is there and plausible."""
        bench = load_bench()
        out = tmp_path / "bench.json"
        args = ["--sizes", "0.5", "--logs", "3", "--finished", "20", "--events", "4000"]
        here = str(BENCH.parents[2])  # the base checkout: this one (the path is exercised)
        args += ["--gc-runs", "30", "--repeat", "1", "--base", here]
        results = bench.main([*args, "--json", str(out)])
        assert orjson.loads(out.read_bytes()) == orjson.loads(orjson.dumps(results))
        [cold] = results["cold_recovery"]
        assert cold["checkpoints"] >= 1
        assert cold["ms_per_run"] > 0
        assert cold["ms_per_run_unended"] > 0
        assert cold["ms_per_run_without_checkpoints"] > 0
        assert results["live_case"]["alive"] == 3
        assert results["ls"]["ls"]["best_ms"] > results["ls"]["python_pass"]["best_ms"] > 0
        assert results["replay"]["events"] == 4000
        replay = results["replay"]
        assert replay["in_process_loads_ev_s"] > 0
        assert replay["new_ev_s_best"] > 0
        assert replay["base_ev_s_best"] > 0
        assert replay["loads_ev_s_best"] > replay["new_ev_s_best"]
        assert replay["start_ms_best"] > 0
        assert replay["new_ev_s_best_after_start"] > replay["new_ev_s_best"]
        assert replay["ten_field_loads_us"] > 0
        assert results["gc"]["removed"] == 27
        assert 0 < results["gc"]["bytes_freed"] < results["gc"]["bytes_before"]
