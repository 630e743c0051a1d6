"""The reconnect benchmark runs end to end at a tiny size (no speed is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "bench_reconnect.py"


class TestBenchSmoke:
    """``bench_reconnect.py --quick`` kills a real hub under real producers and counts attempts."""

    def test_quick_run(self, tmp_path: Path) -> None:
        """Every producer reconnects, and its attempts in a 2 s outage follow the backoff."""
        out = tmp_path / "bench.json"
        result = subprocess.run(
            [sys.executable, str(BENCH), "--quick", "--json", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "reconnect:" in result.stdout
        figures = json.loads(out.read_text())
        assert figures["reconnected"]
        assert len(figures["attempts"]) == figures["producers"] == 2
        assert all(1 <= n <= 8 for n in figures["attempts"])
