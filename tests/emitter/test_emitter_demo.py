"""`pulse demo` end to end, in a subprocess: a real numpy training, its log and v1 snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pulse_core.codec import decode
from pulse_core.events import ErrorReported, Event, Metrics, StatusChanged
from pulse_core.projections import V1_KEYS
from pulse_core.reducer import replay

PULSE = Path(sys.executable).parent / "pulse"


def demo(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    return subprocess.run(
        [str(PULSE), "demo", "--fast", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=home.parent,
        check=False,
    )


def the_log(home: Path) -> list[Event]:
    (path,) = (home / "logs" / "training").glob("*.jsonl")
    return [decode(line) for line in path.read_bytes().splitlines()]


class TestDemo:
    """The demo trains for real and reports preparing -> running -> cooling_down -> done."""

    def test_success(self, tmp_home: Path) -> None:
        """Exit 0; the log replays to done with a falling loss; the v1 snapshot says done."""
        result = demo("--epochs", "3", home=tmp_home)
        assert result.returncode == 0, result.stderr
        events = the_log(tmp_home)
        state = replay(events)
        assert state.anomalies == ()
        assert [t.status for t in state.timeline if t.status != "preparing"] == [
            "running",
            "cooling_down",
            "done",
        ]
        assert state.timeline[0].status == "preparing"
        assert (state.epoch, state.total_epochs) == (3, 3)
        losses = [e.loss for e in events if isinstance(e, Metrics) and e.loss is not None]
        assert losses[-1] < losses[0]
        snapshot = json.loads((tmp_home / "training_status.json").read_text("utf-8"))
        assert tuple(snapshot) == V1_KEYS
        assert snapshot["status"] == "done"
        assert snapshot["epoch"] == 3
        assert list((tmp_home / "checkpoints").glob("*.npz"))
        assert "done" in result.stdout

    def test_fail_at(self, tmp_home: Path) -> None:
        """--fail-at 2: exit 1, the log ends error with DATASET_NOT_FOUND after epoch 1."""
        result = demo("--epochs", "3", "--fail-at", "2", home=tmp_home)
        assert result.returncode == 1
        events = the_log(tmp_home)
        statuses = [e.status for e in events if isinstance(e, StatusChanged)]
        assert statuses[-2:] == ["running", "error"]
        assert "done" not in statuses
        errors = [e for e in events if isinstance(e, ErrorReported)]
        assert [e.error_code for e in errors] == ["DATASET_NOT_FOUND"]
        assert errors[0].epoch == 1
        snapshot = json.loads((tmp_home / "training_status.json").read_text("utf-8"))
        assert snapshot["status"] == "error"
        assert "DATASET_NOT_FOUND" in result.stdout

    def test_python_dash_m(self, tmp_home: Path) -> None:
        """python -m pulse_transports.cli works like the pulse script."""
        result = subprocess.run(
            [sys.executable, "-m", "pulse_transports.cli", "demo", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0
        assert "--fail-at" in result.stdout
