"""The NATS benchmark runs end to end at tiny sizes (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "bench_nats.py"


class TestBenchSmoke:
    """``bench_nats.py --quick`` measures every part and loses no status or error."""

    def test_quick_run(self, tmp_path: Path) -> None:
        out = tmp_path / "bench.json"
        result = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode in (0, 1), result.stderr  # 1: a goal missed
        for part in ("latency", "soak", "recovery"):
            assert part in result.stdout
        figures = json.loads(out.read_text())
        latency = figures["latency"]
        assert latency["samples"] >= 100
        assert latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
        soak = figures["soak"]
        assert soak["lost_status"] == 0
        assert soak["lost_error"] == 0
        assert soak["events_published"] > 0
        assert soak["stream_bytes"] > 0
        recovery = figures["recovery"]
        assert recovery["kv"]["runs"] == recovery["runs"] == 50
        assert recovery["kv"]["done"] == 50
        assert recovery["kv"]["origins"] == ["kv"]
        assert recovery["stream_only"]["runs"] == 50
        assert recovery["stream_only"]["origins"] == ["stream"]
