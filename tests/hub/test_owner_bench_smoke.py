"""The run-ownership benchmark runs end to end at a tiny size (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "bench_hub_owner.py"


class TestBenchSmoke:
    """``bench_hub_owner.py --samples 20`` measures every case."""

    def test_tiny_run(self, tmp_path: Path) -> None:
        out = tmp_path / "bench.json"
        result = subprocess.run(
            [sys.executable, str(BENCH), "--samples", "20", "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        rows = json.loads(out.read_text())["hello"]
        assert [r["case"] for r in rows] == [
            "welcome, no lock",
            "welcome, lock holder",
            "refused, intruder",
            "welcome, tcp + token",
        ]
        for row in rows:
            assert row["samples"] == 20
            assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["max_ms"]
