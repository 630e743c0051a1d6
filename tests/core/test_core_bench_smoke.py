"""The core benchmark runs end to end on a tiny log (its speed is not checked here)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH_PATH = Path(__file__).parent.parent / "bench" / "bench_core.py"
EVENTS = 2_000


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The bench module, loaded from its file (tests/bench is not a package)."""
    spec = importlib.util.spec_from_file_location("bench_core", BENCH_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_core", module)
    spec.loader.exec_module(module)
    return module


class TestBenchSmoke:
    """bench_core's functions work on 2,000 events."""

    def test_build_and_replay(self, bench: ModuleType, tmp_path: Path) -> None:
        """The log has one line per event and replays to a running run with no anomaly."""
        path = tmp_path / "log.jsonl"
        bench.build_log(path, EVENTS)
        assert len(path.read_bytes().splitlines()) == EVENTS
        state = bench.replay_file(path)
        assert state.event_count == EVENTS
        assert state.last_seq == EVENTS
        assert state.status == "running"
        assert state.anomalies == ()
        assert state.epoch is not None
        assert state.metrics["loss"] > 0

    def test_run(self, bench: ModuleType, tmp_path: Path) -> None:
        """run() returns every measurement with positive numbers."""
        results = bench.run(EVENTS, repeat=1, workdir=tmp_path)
        assert results["replay"]["events"] == EVENTS
        assert len(results["replay"]["seconds"]) == 1
        assert results["replay"]["best_events_per_s"] > 0
        assert results["to_v1"]["median_us"] > 0
        assert results["monotonic"]["median_us"] > 0
        assert results["final_state"]["last_seq"] == EVENTS
        assert "replay" in bench.format_table(results)

    def test_main_writes_json(
        self, bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--json writes the results; the table goes to stdout."""
        out = tmp_path / "results.json"
        assert bench.main(["--events", str(EVENTS), "--repeat", "1", "--json", str(out)]) == 0
        results = json.loads(out.read_text(encoding="utf-8"))
        assert results["replay"]["events"] == EVENTS
        assert set(results["targets"]) == {
            "replay_events_per_s",
            "to_v1_us",
            "replay_met",
            "to_v1_met",
        }
        assert "to_v1(state)" in capsys.readouterr().out
