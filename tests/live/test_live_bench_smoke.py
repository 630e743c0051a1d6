"""The live benchmark runs end to end at tiny sizes (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "bench_live.py"


class TestBenchSmoke:
    """``bench_live.py --quick`` measures every part with real processes."""

    def test_quick_run(self, tmp_path: Path) -> None:
        """Both latency paths deliver values, every run is seen, every kill is seen lost."""
        out = tmp_path / "bench.json"
        result = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode in (0, 1), result.stderr  # 1: a speed goal missed
        figures = json.loads(out.read_text())
        for row in figures["latency"]:
            assert row["received"] >= 3
            for kind in ("delivered", "fresh"):
                assert 0 < row[kind]["p50_ms"] <= row[kind]["p99_ms"] <= row[kind]["max_ms"]
        assert figures["many"]["runs_seen_live"] == figures["many"]["runs"]
        assert figures["many"]["hub_rss_mb"] > 0
        assert figures["lost"]["trials"] == 2
        assert figures["lost"]["max_ms"] < 15_000
