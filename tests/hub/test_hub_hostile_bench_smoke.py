"""The hostile-client hub benchmark runs end to end at tiny sizes (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "bench_hub_hostile.py"


class TestHostileBenchSmoke:
    """``bench_hub_hostile.py --quick`` measures every part and keeps the clients it must."""

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
        for part in ("hostile:", "welcome:", "memory:"):
            assert part in result.stdout
        figures = json.loads(out.read_text())
        hostile = figures["hostile"]
        assert hostile["samples"] >= 10
        assert hostile["p50_ms"] <= hostile["p99_ms"] <= hostile["max_ms"]
        assert hostile["still_open"]["partial"] == hostile["hostile_per_kind"]
        welcome = figures["welcome"]
        assert welcome["welcomes"] == 30
        assert welcome["api_runs_per_s"] > 0
        memory = figures["memory"]
        # every reference subscriber got the oversized run's snapshot without reconnecting
        assert memory["snapshots_received"] >= memory["subscribers"]
        assert memory["subscriber_connects"] == memory["subscribers"]
