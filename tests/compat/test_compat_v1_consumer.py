"""A v1-only consumer, polling training_status.json, sees a consistent run end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
from compatkit import (
    V1_KEYS,
    V1Poller,
    assert_v1_contract,
    pulse,
    start_v2_trainer,
    wait_for,
)

from pulse_transports.v1 import HybridReader, heal_v1_snapshot

SCHEMA = json.loads(
    (
        Path(__file__).resolve().parents[2] / "specs" / "schema" / "v1_snapshot.schema.json"
    ).read_text()
)


def finish(process: subprocess.Popen[str], timeout: float = 60.0) -> str:
    out, err = process.communicate(timeout=timeout)
    return out + err


def read_raw(home: Path) -> dict[str, Any]:
    value: dict[str, Any] = json.loads((home / "training_status.json").read_bytes())
    return value


def epoch_of(home: Path) -> int:
    """The epoch the v1 file shows now (-1 while there is no file)."""
    try:
        return int(read_raw(home)["epoch"])
    except FileNotFoundError:
        return -1


def distinct_statuses(readings: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for value in readings:
        if not out or out[-1] != value["status"]:
            out.append(value["status"])
    return out


class TestWholeRun:
    """Through a whole real run the file is never partial and never goes back."""

    def test_completed_run(self, tmp_home: Path) -> None:
        """preparing -> running (epochs 1..4) -> cooling_down -> done, seen in order."""
        with V1Poller(tmp_home / "training_status.json") as poller:
            process = start_v2_trainer(tmp_home, "complete", epochs=4, steps=20, pause=0.02)
            output = finish(process)
        assert process.returncode == 0, output
        assert poller.failures == []
        assert poller.reads > 100
        assert_v1_contract(poller.readings)
        for value in poller.readings:
            jsonschema.validate(value, SCHEMA)
        statuses = distinct_statuses(poller.readings)
        # The run's first snapshot (written right after its meta event) may say idle.
        assert statuses in (
            ["preparing", "running", "cooling_down", "done"],
            ["idle", "preparing", "running", "cooling_down", "done"],
        )
        epochs = sorted({v["epoch"] for v in poller.readings if v["status"] == "running"})
        assert epochs[-1] == 4
        assert len(epochs) >= 3
        assert {v["total_epochs"] for v in poller.readings} == {4}
        final = poller.readings[-1]
        assert final["status"] == "done"
        assert final["epoch"] == 4
        assert final["loss"] is not None
        assert final["loss"] < 1.0

    def test_failed_run(self, tmp_home: Path) -> None:
        """A run that raises ends as error, and the sequence up to it is still monotone."""
        with V1Poller(tmp_home / "training_status.json") as poller:
            process = start_v2_trainer(tmp_home, "error", epochs=2, steps=10, pause=0.02)
            output = finish(process)
        assert process.returncode != 0, output
        assert poller.failures == []
        assert_v1_contract(poller.readings)
        assert distinct_statuses(poller.readings)[-1] == "error"
        assert "shard-9.npy" in poller.readings[-1]["message"]

    def test_runs_one_after_another(self, tmp_home: Path) -> None:
        """Two runs in a row: each run's readings keep the contract on their own."""
        with V1Poller(tmp_home / "training_status.json") as poller:
            for _ in range(2):
                process = start_v2_trainer(tmp_home, "complete", epochs=2, steps=10, pause=0.02)
                assert process.wait(timeout=60) == 0
        assert poller.failures == []
        ends = [i for i, v in enumerate(poller.readings) if v["status"] == "done"]
        first_end = ends[0]
        second = poller.readings[first_end + 1 :]
        assert_v1_contract(poller.readings[: first_end + 1])
        assert_v1_contract(second)
        assert second
        assert second[-1]["status"] == "done"
        assert second[0]["timestamp"] > poller.readings[first_end]["timestamp"]


class TestLostRun:
    """A run killed with SIGKILL is never shown as running by the honest readers."""

    def start_and_kill(self, home: Path) -> tuple[str, dict[str, Any]]:
        process = start_v2_trainer(home, "hang", epochs=3, steps=10, pause=0.01)
        assert process.stdout is not None
        line = wait_for(lambda: process.stdout.readline() if process.stdout else "", timeout=30)
        while not line.startswith("READY"):
            line = process.stdout.readline()
            assert line, finish(process)
        training_id = line.split()[1]
        wait_for(lambda: epoch_of(home) >= 2, timeout=30)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.communicate()
        return training_id, read_raw(home)

    def test_raw_file_stays_running_but_pulse_v1_says_lost(self, tmp_home: Path) -> None:
        """The dead writer's file still says running; ``pulse v1 --json`` says error, lost."""
        training_id, raw = self.start_and_kill(tmp_home)
        # What a raw-file poller sees cannot change after the writer died:
        # the documented reason to read through `pulse v1` or the hybrid reader.
        assert raw["status"] == "running"
        assert sorted(raw) == sorted(V1_KEYS)
        result = pulse(tmp_home, "v1", "--json")
        assert result.returncode == 0, result.stderr
        honest = json.loads(result.stdout)
        assert sorted(honest) == sorted(V1_KEYS)
        assert honest["status"] == "error"
        assert honest["message"].startswith("training process lost")
        jsonschema.validate(honest, SCHEMA)
        shown = pulse(tmp_home, "v1")
        assert training_id in shown.stdout
        assert "(lost)" in shown.stdout

    def test_hybrid_reader_is_honest(self, tmp_home: Path) -> None:
        """The hybrid reader shows the killed run once, lost, its v1 slot as error."""
        training_id, _raw = self.start_and_kill(tmp_home)
        runs = HybridReader(tmp_home).runs()
        assert [(r.training_id, r.source, r.liveness, r.in_v1_file) for r in runs] == [
            (training_id, "v2", "lost", True)
        ]
        slot = HybridReader(tmp_home).v1()
        assert slot is not None
        assert slot["status"] == "error"

    def test_reader_heals_the_raw_file(self, tmp_home: Path) -> None:
        """heal_v1_snapshot rewrites the file: error, lost message, progress kept."""
        _training_id, raw = self.start_and_kill(tmp_home)
        assert heal_v1_snapshot(tmp_home) is True
        healed = read_raw(tmp_home)
        jsonschema.validate(healed, SCHEMA)
        assert healed["status"] == "error"
        assert healed["message"].startswith("training process lost")
        assert healed["message"].endswith("(last status running)")
        for key in ("epoch", "total_epochs", "loss", "timestamp"):
            assert healed[key] == raw[key]
        assert heal_v1_snapshot(tmp_home) is False  # honest now: nothing more to do

    def test_bridge_once_heals_the_raw_file(self, tmp_home: Path) -> None:
        """``pulse bridge --once`` recognises the v2 run, bridges nothing and heals the file."""
        _training_id, _raw = self.start_and_kill(tmp_home)
        before = {p.name for p in (tmp_home / "logs" / "training").glob("*.jsonl")}
        result = pulse(tmp_home, "bridge", "--once")
        assert result.returncode == 0, result.stderr
        assert read_raw(tmp_home)["status"] == "error"
        after = {p.name for p in (tmp_home / "logs" / "training").glob("*.jsonl")}
        assert after == before
