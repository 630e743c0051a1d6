"""The memory and soak benchmarks run end to end at a tiny size (no goal is asserted but safety)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench"


def _run(script: str, out: Path) -> dict[str, object]:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert isinstance(figures, dict)
    return figures


class TestMemoryBenchSmoke:
    """``bench_hub_memory.py --quick``: short runs expire; a stuck subscriber is closed."""

    def test_quick_run(self, tmp_path: Path) -> None:
        figures = _run("bench_hub_memory.py", tmp_path / "mem.json")
        runs, stuck = figures["runs"], figures["stuck"]
        assert isinstance(runs, dict)
        assert isinstance(stuck, dict)
        assert runs["runs"] == 50
        assert runs["peak_mib"] < 200
        assert runs["peak_after_runs_mib"] > 0
        assert stuck["stuck_closed"] is True
        assert stuck["peak_mib"] < 200


class TestSoakBenchSmoke:
    """``bench_soak.py --quick``: mixed endings through a hub crash, every reader right."""

    def test_quick_run(self, tmp_path: Path) -> None:
        figures = _run("bench_soak.py", tmp_path / "soak.json")
        assert figures["runs"] >= 4
        assert figures["outage_s"] is not None
        assert figures["mismatches"] == 0, figures["mismatch_examples"]
        assert isinstance(figures["cursor_longest"], int)
        assert figures["cursor_longest"] > 0
