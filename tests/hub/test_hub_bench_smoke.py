"""The hub benchmark runs end to end at tiny sizes (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "bench_hub.py"


class TestBenchSmoke:
    """``bench_hub.py --quick`` measures every part and loses no status or error."""

    def test_quick_run(self, tmp_path: Path) -> None:
        out = tmp_path / "bench.json"
        result = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode in (0, 1), result.stderr  # 1: a speed goal missed
        assert "latency" in result.stdout
        assert "fan-out" in result.stdout
        assert "burst" in result.stdout
        figures = json.loads(out.read_text())
        for case in figures["latency"]:
            assert case["samples"] >= 100
            assert case["p50_ms"] <= case["p99_ms"] <= case["max_ms"]
        fanout = figures["fanout"]
        assert fanout["lost_status"] == 0
        assert fanout["lost_error"] == 0
        assert fanout["status_events"] > 0
        assert 0 < fanout["max_per_run_stream_in_1s"] <= 11
        burst = figures["burst"]
        assert burst["events"] == 20_000
        assert burst["notes_received"] == burst["notes_sent"] > 0
        assert burst["rss_peak_mb"] >= burst["rss_before_mb"] > 0
