"""The SIGKILL-to-lost benchmark runs end to end at its tiniest size (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "bench_truth.py"
READERS = {"pulse ls", "pulse show", "pulse v1", "/api/runs", "hub subscriber"}


class TestBenchTruthSmoke:
    """``bench_truth.py --trials 1`` measures every reader."""

    def test_one_trial(self, tmp_path: Path) -> None:
        """One trial gives a figure for every reader, each seeing the run lost."""
        out = tmp_path / "bench.json"
        result = subprocess.run(
            [sys.executable, str(BENCH), "--trials", "1", "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        figures = json.loads(out.read_text())["sigkill_to_lost"]
        assert set(figures) == READERS
        for row in figures.values():
            assert row["never"] == 0
            assert 0 < row["p50_ms"] <= row["max_ms"]
