"""The integrations benchmark runs end to end at tiny sizes (its speed is not checked here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_PATH = Path(__file__).parent.parent / "bench" / "bench_integrations.py"

pytestmark = [pytest.mark.integrations, pytest.mark.usefixtures("torch_quiet")]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The bench module, loaded from its file (tests/bench is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_integrations", BENCH_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_integrations", module)
    spec.loader.exec_module(module)
    return module


class TestBenchSmoke:
    """bench_integrations' functions work on a few steps and iterations."""

    def test_track_vs_tqdm(self, bench: ModuleType) -> None:
        """Both wrappers are measured on the same loop, and track() reported its last step."""
        loop = bench.measure_track(iterations=20_000, repeat=2)
        assert loop["bare_ns"] > 0
        assert loop["tqdm_ns"] > 0
        assert loop["last_step_reported"] == 20_000

    @pytest.mark.parametrize("framework", ["hf", "lightning", "keras"])
    def test_callback(self, bench: ModuleType, framework: str) -> None:
        """Each framework trains with and without the callback; one run is logged per pulse fit."""
        row = bench.measure_callback(framework, steps=20, repeat=1)
        assert row["median_without"] > 0
        assert row["median_empty"] > 0
        assert row["median_with"] > 0
        assert row["callback_us_per_step"] > 0
        assert row["runs_logged"] == 1

    def test_main_writes_json(
        self, bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json writes the results; the table goes to stdout."""
        out = tmp_path / "results.json"
        argv = ["--steps", "20", "--repeat", "1", "--iterations", "10000"]
        assert bench.main([*argv, "--frameworks", "lightning", "--json", str(out)]) == 0
        results = json.loads(out.read_text(encoding="utf-8"))
        assert set(results["targets"]) == {
            "slowdown_pct",
            "hooks_share_met",
            "track_not_worse_than_tqdm",
        }
        assert [r["framework"] for r in results["callbacks"]] == ["lightning"]
        assert "track()" in capsys.readouterr().out
