"""The conformance vectors in specs/vectors/ and their generator, specs/generate.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.events import Event, StateCheckpoint
from pulse_core.liveness import liveness_of
from pulse_core.projections import to_history_record, to_metric_history, to_v1, to_view
from pulse_core.reducer import replay
from pulse_core.state import MAX_WINDOWS
from pulse_core.statecodec import STATE_FORMAT, state_from_obj

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"
VECTORS = SPECS / "vectors"
NAMES = sorted(p.name.removesuffix(".jsonl") for p in VECTORS.glob("*.jsonl"))


def lines_of(name: str) -> list[bytes]:
    """Split a vector log at LF; a final piece without LF is a line too."""
    pieces = (VECTORS / f"{name}.jsonl").read_bytes().split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return pieces


def read(name: str) -> tuple[list[Event], list[int]]:
    """Decode a vector log: the events, and the 1-based numbers of lines that failed."""
    events: list[Event] = []
    failed: list[int] = []
    for number, line in enumerate(lines_of(name), start=1):
        try:
            events.append(decode(line))
        except DecodeError:
            failed.append(number)
    return events, failed


def expected(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / f"{name}.expected.json").read_text(encoding="utf-8"))


def as_json(value: Any) -> Any:
    """Normalise a projection the way the expected files store it."""
    return json.loads(json.dumps(value))


class TestVectorSet:
    """The vector set is complete and every log has its expected file."""

    def test_at_least_ten_vectors(self) -> None:
        assert len(NAMES) >= 10

    def test_every_log_has_an_expected_file_and_back(self) -> None:
        logs = {p.name.removesuffix(".jsonl") for p in VECTORS.glob("*.jsonl")}
        results = {p.name.removesuffix(".expected.json") for p in VECTORS.glob("*.expected.json")}
        assert logs == results

    def test_vectors_stay_small(self) -> None:
        for path in VECTORS.iterdir():
            assert path.stat().st_size < 500_000, path.name

    def test_expected_files_are_sorted_and_indented(self) -> None:
        for name in NAMES:
            text = (VECTORS / f"{name}.expected.json").read_text(encoding="utf-8")
            assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"


class TestReplay:
    """A fresh replay of each log gives exactly the stored expected results."""

    @pytest.mark.parametrize("name", NAMES)
    def test_rejected_lines_and_error_count(self, name: str) -> None:
        _events, failed = read(name)
        want = expected(name)
        assert failed == want["rejected_lines"]
        assert len(failed) == want["errors"]

    @pytest.mark.parametrize("name", NAMES)
    def test_projections(self, name: str) -> None:
        events, _failed = read(name)
        want = expected(name)
        state = replay(events)
        now = want["now"]
        assert as_json(to_v1(state)) == want["v1"]
        assert as_json(to_view(state, now=now)) == want["view"]
        assert as_json(to_history_record(state)) == want["history"]
        assert as_json(to_metric_history(state)) == want["metric_history"]
        live = liveness_of(state, now=now)
        assert want["live"] == {
            "liveness": live,
            "v1": as_json(to_v1(state, live)),
            "history": as_json(to_history_record(state, live, now)),
        }

    @pytest.mark.parametrize("name", NAMES)
    def test_replay_in_two_halves_gives_the_same_state(self, name: str) -> None:
        events, _failed = read(name)
        half = len(events) // 2
        assert replay(events[half:], replay(events[:half])) == replay(events)


class TestScenarios:
    """Each vector exercises the behaviour its name promises."""

    def test_happy_run_goes_through_every_state_to_done(self) -> None:
        view = expected("happy_run")["view"]
        assert [t["status"] for t in view["timeline"]] == [
            "preparing",
            "preparing",
            "running",
            "cooling_down",
            "done",
        ]
        assert view["anomalies"] == []
        assert view["progress"]["fraction"] == 1.0
        assert expected("happy_run")["history"]["outcome"] == "success"

    def test_skipped_preparing_never_prepares(self) -> None:
        view = expected("skipped_preparing")["view"]
        assert [t["status"] for t in view["timeline"]] == ["running", "done"]
        assert "preparing" not in view["timings"]["status_durations"]

    def test_error_run_keeps_details_and_offers_retry(self) -> None:
        data = expected("error_run")
        assert data["view"]["last_error"]["error_code"] == "CUDA_OOM"
        assert data["view"]["last_error"]["details"]["trace_id"] == "7f3a9c2e"
        assert data["history"]["outcome"] == "error"
        assert data["history"]["retryable"] is True

    def test_a_non_fatal_error_does_not_end_the_run(self) -> None:
        data = expected("error_recovered")
        assert data["view"]["error_count"] == 1
        assert data["history"]["outcome"] == "success"
        assert data["history"]["retryable"] is False

    def test_cancelled_run_and_a_heartbeat_after_it(self) -> None:
        data = expected("cancelled_run")
        assert data["v1"]["status"] == "cancelled"
        assert data["view"]["anomalies"] == []
        assert data["history"]["outcome"] == "cancelled"

    def test_duplicates_and_late_events_are_counted_not_applied(self) -> None:
        view = expected("duplicates_and_late")["view"]
        assert view["stats"]["duplicates"] == 3
        assert view["stats"]["missing"] == 0
        assert [a["kind"] for a in view["anomalies"]] == ["late_event", "late_event"]
        assert view["progress"]["epoch"] == 2  # seq 7 (epoch 3) came late

    def test_coalesced_gaps_are_not_anomalies(self) -> None:
        view = expected("coalesced_gaps")["view"]
        assert view["stats"]["missing"] > 0
        assert view["anomalies"] == []
        assert view["degraded"] is True

    def test_illegal_transitions_and_after_terminal(self) -> None:
        kinds = [a["kind"] for a in expected("illegal_transitions")["view"]["anomalies"]]
        assert kinds.count("illegal_transition") == 5
        assert kinds.count("after_terminal") == 3
        assert expected("illegal_transitions")["v1"]["status"] == "done"

    def test_future_version_lines_are_read_by_v2_rules(self) -> None:
        data = expected("future_version")
        assert data["errors"] == 0
        assert data["view"]["stats"]["unknown_events"] == 2
        assert [a["kind"] for a in data["view"]["anomalies"]] == [
            "unknown_status",
            "after_terminal",
        ]
        assert data["v1"]["status"] == "done"
        assert all(b'"v":3' in line for line in lines_of("future_version"))

    def test_broken_lines_are_skipped_and_counted(self) -> None:
        data = expected("broken_lines")
        assert data["errors"] >= 15
        assert not lines_of("broken_lines")[-1].endswith(b"}")  # the torn last line
        assert [a["kind"] for a in data["view"]["anomalies"]] == ["bad_seq"]

    def test_flow_linked_run_shows_its_flow(self) -> None:
        data = expected("flow_linked")
        assert data["history"]["flow_run_id"] == "fr-20260101-0001"
        assert data["history"]["attempt"] == 2
        assert data["view"]["flow"]["flow_step_id"] == "train"

    def test_downsampled_history_is_bounded_and_keeps_the_spike(self) -> None:
        loss = expected("downsampled_metrics")["metric_history"]["loss"]
        assert loss["count"] == 3000
        assert loss["width"] > 1
        assert len(loss["windows"]) <= MAX_WINDOWS
        assert sum(w["n"] for w in loss["windows"]) == 3000
        assert max(w["max"] for w in loss["windows"]) == 9.5

    def test_never_started_and_abandoned_runs_are_honest(self) -> None:
        never = expected("never_started")
        assert never["history"]["outcome"] == "not_started"
        assert never["history"]["ran"] is False
        abandoned = expected("abandoned_run")
        assert abandoned["view"]["liveness"] == "lost"
        assert abandoned["live"]["v1"]["status"] == "error"
        assert abandoned["live"]["v1"]["message"].startswith("training process lost")
        assert abandoned["live"]["history"]["outcome"] == "lost"

    def test_foreign_event_is_an_anomaly(self) -> None:
        anomalies = expected("foreign_event")["view"]["anomalies"]
        assert [a["kind"] for a in anomalies] == ["foreign_event"]

    def test_nothing_decodable_gives_the_empty_state(self) -> None:
        data = expected("nothing_decodable")
        assert data["errors"] == 2
        assert data["v1"] == {
            "status": "idle",
            "epoch": 0,
            "total_epochs": 0,
            "loss": None,
            "message": "",
            "timestamp": None,
        }


class TestStateCheckpoints:
    """A log's state_checkpoint lines: skipped by a full fold, and checkpoint + tail == full."""

    def test_every_checkpoint_plus_its_tail_folds_to_the_full_replay(self) -> None:
        """From each checkpoint, its state and the lines after it give the full fold."""
        events, _ = read("state_checkpoint")
        full = replay(events)
        marks = [i for i, e in enumerate(events) if isinstance(e, StateCheckpoint)]
        assert len(marks) == 2
        for index in marks:
            mark = events[index]
            assert isinstance(mark, StateCheckpoint)
            assert mark.format == STATE_FORMAT
            start = state_from_obj(mark.state)
            assert start.last_seq == mark.seq
            assert replay(events[index + 1 :], start) == full
        assert full.gaps == ((51, 51),)  # the late event filled 52
        assert full.missing == 1
        assert [a.kind for a in full.anomalies] == ["late_event"]

    def test_a_full_fold_skips_checkpoints(self) -> None:
        """Removing the checkpoint lines changes nothing: no count, no duplicate, no anomaly."""
        events, _ = read("state_checkpoint")
        without = [e for e in events if not isinstance(e, StateCheckpoint)]
        assert len(without) == len(events) - 2
        assert replay(events) == replay(without)


class TestNonconformingLines:
    """Lines marked non-conforming decode, so folding sees them."""

    @pytest.mark.parametrize("name", NAMES)
    def test_nonconforming_lines_decode(self, name: str) -> None:
        lines = lines_of(name)
        for number in expected(name)["nonconforming_lines"]:
            decode(lines[number - 1])

    def test_some_vector_has_nonconforming_lines(self) -> None:
        assert any(expected(name)["nonconforming_lines"] for name in NAMES)


class TestGenerator:
    """specs/generate.py reproduces the files on disk and --check catches drift."""

    def test_check_passes_on_the_repository(self) -> None:
        done = subprocess.run(
            [sys.executable, str(SPECS / "generate.py"), "--check"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr

    def test_check_fails_on_drift_and_a_run_repairs_it(self, tmp_path: Path) -> None:
        copy = tmp_path / "specs"
        shutil.copytree(SPECS, copy, ignore=shutil.ignore_patterns("__pycache__"))
        target = copy / "vectors" / "happy_run.expected.json"
        data = json.loads(target.read_text(encoding="utf-8"))
        data["v1"]["status"] = "running"
        target.write_text(json.dumps(data, sort_keys=True, indent=2) + "\n", encoding="utf-8")
        (copy / "vectors" / "stray.jsonl").write_bytes(b"{}\n")
        script = [sys.executable, str(copy / "generate.py")]

        check = subprocess.run([*script, "--check"], capture_output=True, text=True, check=False)
        assert check.returncode == 1
        assert "happy_run.expected.json" in check.stderr
        assert "stray.jsonl" in check.stderr

        (copy / "vectors" / "stray.jsonl").unlink()
        subprocess.run(script, capture_output=True, check=True)
        assert target.read_bytes() == (VECTORS / "happy_run.expected.json").read_bytes()
        recheck = subprocess.run([*script, "--check"], capture_output=True, check=False)
        assert recheck.returncode == 0

    def test_missing_markers_are_an_error(self, tmp_path: Path) -> None:
        copy = tmp_path / "specs"
        shutil.copytree(SPECS, copy, ignore=shutil.ignore_patterns("__pycache__"))
        (copy / "protocol.md").write_text("# no markers\n", encoding="utf-8")
        done = subprocess.run(
            [sys.executable, str(copy / "generate.py"), "--check"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode != 0
        assert "markers" in done.stderr

    def test_logs_are_json_lines_in_utf8_except_the_broken_ones(self) -> None:
        for name in NAMES:
            rejected = set(expected(name)["rejected_lines"])
            for number, line in enumerate(lines_of(name), start=1):
                if number in rejected:
                    continue
                assert isinstance(orjson.loads(line), dict)
                line.decode("utf-8")
