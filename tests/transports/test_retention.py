"""Retention: pulse gc and the hub's collection keep a home within its limits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import attrs
import orjson
import pytest

from pulse_core.errors import ConfigError
from pulse_core.events import Metrics, RunMeta, StatusChanged
from pulse_transports.file import FileSink, lock_path, log_path
from pulse_transports.flows import FlowTrainer
from pulse_transports.retention import (
    REMOVED_FILE,
    RetentionFeed,
    RetentionPolicy,
    collect,
    plan,
    removed_records,
)

T0 = 1_767_225_600.0


def make_run(
    home: Path, tid: str, at: float, *, end: bool = True, flow_run: str | None = None
) -> FileSink:
    """A run written through a FileSink; left open (live) unless *end*."""
    sink = FileSink(home=home, fsync=False, interval=0.0)
    sink.open(tid)
    meta = RunMeta(tid, 1, at, name=f"run {tid}", flow_id="flow" if flow_run else None)
    if flow_run:
        meta = RunMeta(tid, 1, at, name=f"run {tid}", flow_id="flow", flow_run_id=flow_run)
    sink.write(meta)
    sink.write(StatusChanged(tid, 2, at, "running", "go"))
    sink.write(Metrics(tid, 3, at + 1, loss=0.5))
    if end:
        sink.write(StatusChanged(tid, 4, at + 2, "done", "finished"))
        sink.close()
    return sink


def gc(home: Path, *args: str) -> dict[str, object]:
    """Run the real ``pulse gc --json`` in a new process."""
    done = subprocess.run(
        [sys.executable, "-m", "pulse_transports.cli", "gc", "--home", str(home), "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = orjson.loads(done.stdout)
    return result


class TestPolicy:
    """The [retention] table is checked like every option table."""

    def test_defaults_are_finite(self) -> None:
        """Generous but finite: 5000 runs, 1 GiB, 180 days."""
        policy = RetentionPolicy.from_table({})
        assert (policy.keep_runs, policy.max_bytes, policy.max_age_days) == (5000, 1 << 30, 180.0)

    def test_every_field_is_a_key(self) -> None:
        """Each field of the policy is a key of the table, of its kind (an int is a float)."""
        table = {
            "keep_runs": 3,
            "max_bytes": 4096,
            "max_age_days": 2,
            "interval": 1.5,
            "enabled": False,
        }
        assert attrs.asdict(RetentionPolicy.from_table(table)) == table
        with pytest.raises(ConfigError, match="must be bool"):
            RetentionPolicy.from_table({"enabled": 1})

    @pytest.mark.parametrize(
        "table", [{"keep": 3}, {"keep_runs": "3"}, {"max_bytes": 0}, {"max_age_days": -1}]
    )
    def test_bad_tables_are_refused(self, table: dict[str, object]) -> None:
        """Unknown keys, wrong kinds and values that are not positive name the problem."""
        with pytest.raises(ConfigError, match=r"\[retention\]"):
            RetentionPolicy.from_table(table)


class TestGc:
    """``pulse gc`` lists what it would remove, and removes it with --yes."""

    def test_keep_runs_lists_then_removes_the_oldest(self, tmp_home: Path) -> None:
        """Beyond keep_runs, the oldest ended runs go; their bytes are freed."""
        for i in range(5):
            make_run(tmp_home, f"run-{i}", T0 + i * 100)
        listed = gc(tmp_home, "--keep-runs", "2")
        assert [r["training_id"] for r in listed["would_remove"]] == ["run-2", "run-1", "run-0"]
        assert all(log_path(tmp_home, f"run-{i}").exists() for i in range(5))
        done = gc(tmp_home, "--keep-runs", "2", "--yes")
        assert [r["training_id"] for r in done["removed"]] == ["run-2", "run-1", "run-0"]
        assert done["bytes_freed"] == listed["bytes_would_free"]
        assert done["bytes_freed"] > 0
        assert sorted(p.stem for p in log_path(tmp_home, "x").parent.glob("*.jsonl")) == [
            "run-3",
            "run-4",
        ]
        assert not lock_path(tmp_home, "run-0").exists()

    def test_never_removes_a_live_run(self, tmp_home: Path) -> None:
        """A run whose writer holds its lock stays, however old and however many."""
        live = make_run(tmp_home, "live-0", T0, end=False)
        try:
            for i in range(1, 4):
                make_run(tmp_home, f"run-{i}", T0 + i * 100)
            done = gc(tmp_home, "--keep-runs", "1", "--yes")
            removed = {r["training_id"] for r in done["removed"]}
            assert removed == {"run-1", "run-2"}
            assert log_path(tmp_home, "live-0").exists()
        finally:
            live.close()

    def test_byte_budget_and_age(self, tmp_home: Path) -> None:
        """Over the byte budget (newest first) and logs not written for too long are removed."""
        for i in range(4):
            make_run(tmp_home, f"run-{i}", T0 + i * 100)
        size = log_path(tmp_home, "run-3").stat().st_size
        budget = plan(tmp_home, RetentionPolicy(max_bytes=2 * size + 10))
        assert {d.record.training_id for d in budget.remove} == {"run-1", "run-0"}
        old = time.time() - 400 * 86400
        os.utime(log_path(tmp_home, "run-3"), (old, old))
        aged = plan(tmp_home, RetentionPolicy(max_age_days=365))
        assert [d.record.training_id for d in aged.remove] == ["run-3"]
        assert "days" in aged.remove[0].reason


class TestFlowHistory:
    """A removed run keeps its Flow History record; a kept flow run keeps all its runs."""

    def test_flow_run_kept_while_any_run_is_kept(self, tmp_home: Path) -> None:
        """Runs of a flow run go together, only once every one of them is due."""
        make_run(tmp_home, "a-1", T0, flow_run="fr-a")
        make_run(tmp_home, "b-1", T0 + 100, flow_run="fr-b")
        make_run(tmp_home, "a-2", T0 + 200, flow_run="fr-a")  # a retry, newest
        chosen = plan(tmp_home, RetentionPolicy(keep_runs=1))
        # a-1 is due but a-2 (same flow run) is kept: only b-1 goes.
        assert [d.record.training_id for d in chosen.remove] == ["b-1"]

    def test_removed_runs_stay_in_flows_history(self, tmp_home: Path) -> None:
        """FlowTrainer.records still lists a removed flow run, from removed.jsonl."""
        make_run(tmp_home, "old-1", T0, flow_run="fr-old")
        make_run(tmp_home, "new-1", T0 + 100, flow_run="fr-new")
        before = FlowTrainer(tmp_home).records(flow_run_id="fr-old")
        removed = collect(tmp_home, plan(tmp_home, RetentionPolicy(keep_runs=1)))
        assert [d.record.training_id for d in removed] == ["old-1"]
        assert not log_path(tmp_home, "old-1").exists()
        assert (tmp_home / "logs" / REMOVED_FILE).exists()
        after = FlowTrainer(tmp_home).records(flow_run_id="fr-old")
        assert len(after) == 1
        for key in ("training_id", "outcome", "status", "started_at", "duration", "flow_id"):
            assert after[0][key] == before[0][key]
        assert after[0]["outcome"] == "success"
        assert [r["training_id"] for r in removed_records(tmp_home)] == ["old-1"]

    def test_hub_feed_collects(self, tmp_home: Path) -> None:
        """The hub's periodic task removes what pulse gc would."""
        for i in range(3):
            make_run(tmp_home, f"run-{i}", T0 + i * 100)
        removed = RetentionFeed(tmp_home, RetentionPolicy(keep_runs=2)).run_once()
        assert [d.record.training_id for d in removed] == ["run-0"]
        assert RetentionFeed(tmp_home, RetentionPolicy(enabled=False)).run_once() == []
