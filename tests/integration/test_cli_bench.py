"""Smoke test of tests/bench/bench_reader.py: every benchmark runs at a tiny size."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import orjson

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_reader.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_reader", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestBenchSmoke:
    """The reader benchmarks run end to end and report every figure."""

    def test_tiny_run(self, tmp_path: Path) -> None:
        bench = load_bench()
        out = tmp_path / "bench.json"
        args = ["--finished", "4", "--running", "1", "--latency-events", "15", "--repeat", "1"]
        results = bench.main([*args, "--json", str(out)])
        assert orjson.loads(out.read_bytes()) == orjson.loads(orjson.dumps(results))
        assert results["recovery"]["runs"] == 5
        assert results["recovery"]["cold_s"] > 0
        assert results["ls"]["ls_json_s"] > 0
        assert results["latency_notify"]["events"] == 15
        assert results["latency_notify"]["mode"] == "notify"
        assert results["latency_polling"]["events"] == 15
        assert results["latency_polling"]["p99_ms"] >= results["latency_polling"]["p50_ms"]
        assert "follow latency" in bench.table(results)
