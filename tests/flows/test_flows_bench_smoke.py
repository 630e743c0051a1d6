"""The Flow updates benchmark runs end to end for one second (its figures are not judged here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_PATH = Path(__file__).parent.parent / "bench" / "bench_flows.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The bench module, loaded from its file (tests/bench is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_flows", BENCH_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_flows", module)
    spec.loader.exec_module(module)
    return module


class TestBenchSmoke:
    """bench_flows measures a real supervised child."""

    def test_one_second(
        self, bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The figures are there, the final view came once and the table prints them."""
        monkeypatch.delenv("PULSE_TRANSPORTS", raising=False)
        results = bench.bench_updates(1.0, tmp_path / "home")
        assert results["views"] >= 1
        assert results["age_max_ms"] is not None
        assert results["final_views"] == 1
        assert results["preparing"] == 1
        assert "staleness before the next view" in bench.table(results)
