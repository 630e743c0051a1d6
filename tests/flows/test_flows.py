"""TRAIN steps with real subprocesses: outcomes, links, retries, cancel, restart."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pulse_core.codec import decode
from pulse_core.emitter import TrainingRun
from pulse_transports.file import log_path
from pulse_transports.flows import FlowTrainer
from pulse_transports.supervise import read_state

CHILD = str(Path(__file__).with_name("child.py"))
PULSE = str(Path(sys.executable).with_name("pulse"))


def child(*args: str) -> list[str]:
    return [sys.executable, CHILD, *args]


@pytest.fixture
def trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FlowTrainer:
    monkeypatch.delenv("PULSE_TRANSPORTS", raising=False)
    return FlowTrainer(home=tmp_path / "home")


def statuses(home: Path, training_id: str) -> list[str]:
    return [t.status for t in read_state(home, training_id).timeline]


class TestFlowOfSteps:
    """Two TRAIN steps in sequence and two in parallel each end with an honest outcome."""

    def test_sequence_then_parallel(self, trainer: FlowTrainer) -> None:
        link = {"flow_id": "flow-a", "flow_run_id": "fr-1"}
        first = trainer.start_process(child("ok"), flow_step_id="train-1", **link)
        assert first.wait(60) is not None
        second = trainer.start_process(child("ok"), flow_step_id="train-2", **link)
        assert second.wait(60) is not None
        parallel = [
            trainer.start_process(child("ok"), flow_step_id=f"train-p{i}", **link) for i in (1, 2)
        ]
        outcomes = [step.wait(60) for step in parallel]
        for step, outcome in zip(
            [first, second, *parallel], [first.outcome, second.outcome, *outcomes], strict=False
        ):
            assert outcome is not None
            assert outcome.outcome == "success", (step.training_id, outcome)
            assert outcome.exit_code == 0
            assert outcome.key_metrics["final_loss"] == pytest.approx(1.0 / 25)
            assert outcome.key_metrics["best_loss"] == pytest.approx(1.0 / 25)
            assert outcome.key_metrics["epoch"] == 2
            assert outcome.duration is not None
            assert outcome.duration > 0
            assert statuses(trainer.home, step.training_id)[-3:] == [
                "running",
                "cooling_down",
                "done",
            ]
        records = trainer.records(flow_run_id="fr-1")
        assert {r["flow_step_id"] for r in records} == {
            "train-1",
            "train-2",
            "train-p1",
            "train-p2",
        }
        assert all(r["flow_id"] == "flow-a" and r["ran"] for r in records)
        started = [r["started_at"] for r in records]
        assert started == sorted(started, reverse=True)
        assert trainer.records(flow_id="flow-a") == records
        assert trainer.records(flow_run_id="other") == []

    def test_link_travels_in_the_log(self, trainer: FlowTrainer) -> None:
        step = trainer.start_process(
            child("ok"), flow_id="f", flow_run_id="fr", flow_step_id="s", attempt=1
        )
        step.wait(60)
        metas = [
            e
            for e in map(decode, log_path(trainer.home, step.training_id).read_bytes().splitlines())
            if type(e).__name__ == "RunMeta"
        ]
        assert metas, "the log has the run's metadata"
        for meta in metas:
            assert (meta.flow_id, meta.flow_run_id, meta.flow_step_id, meta.attempt) == (
                "f",
                "fr",
                "s",
                1,
            )
        assert any(m.pid != os.getpid() for m in metas), "the child wrote its own metadata"


class TestRetry:
    """A retryable failure says so, and its retry is a new run of the same flow step."""

    def test_retryable_error_and_retry(self, trainer: FlowTrainer) -> None:
        step = trainer.start_process(
            child("oom"), flow_id="f", flow_run_id="fr", flow_step_id="train"
        )
        outcome = step.wait(60)
        assert outcome is not None
        assert outcome.outcome == "error"
        assert outcome.error is not None
        assert outcome.error["error_code"] == "CUDA_OOM"
        assert outcome.retryable is True
        again = trainer.retry(step, command=child("ok"))
        assert again.training_id != step.training_id
        assert again.link.attempt == 2
        assert again.wait(60) is not None
        assert again.outcome is not None
        assert again.outcome.outcome == "success"
        records = trainer.records(flow_run_id="fr")
        assert sorted((r["attempt"], r["outcome"]) for r in records) == [
            (1, "error"),
            (2, "success"),
        ]
        assert {r["flow_step_id"] for r in records} == {"train"}
        third = trainer.retry(records[0], command=child("ok"))
        assert third.link.attempt == 3
        third.wait(60)


class TestCrashes:
    """A child that dies without reporting an end gets an honest error, also in the log."""

    @pytest.mark.parametrize(
        ("mode", "code", "exit_code", "retryable"),
        [
            ("sigkill", "PROCESS_CRASHED", -signal.SIGKILL, True),
            ("abort", "PROCESS_CRASHED", -signal.SIGABRT, False),
            ("exit3", "PROCESS_CRASHED", 3, False),
            ("exit0", "PROCESS_EXITED_WITHOUT_RESULT", 0, False),
        ],
    )
    def test_crash_modes(
        self, trainer: FlowTrainer, mode: str, code: str, exit_code: int, retryable: bool
    ) -> None:
        step = trainer.start_process(child(mode), flow_run_id="fr", flow_step_id="train")
        outcome = step.wait(60)
        assert outcome is not None
        assert outcome.status == "error"
        assert outcome.exit_code == exit_code
        assert outcome.error is not None
        assert outcome.error["error_code"] == code
        assert outcome.retryable is retryable
        state = read_state(trainer.home, step.training_id)
        assert state.errors[-1].error_code == code
        assert state.errors[-1].details is not None
        assert state.errors[-1].details["exit_code"] == exit_code
        assert state.status == "error"
        if mode == "sigkill":
            assert state.errors[-1].details["signal"] == "SIGKILL"
            assert state.epoch == 2, "progress before the crash is intact"
            assert state.metrics["loss"] == pytest.approx(1.0 / 25)

    def test_command_not_found(self, trainer: FlowTrainer) -> None:
        step = trainer.start_process(
            ["/no/such/trainer", "--x"], flow_run_id="fr", flow_step_id="t"
        )
        outcome = step.wait(30)
        assert outcome is not None
        assert outcome.error is not None
        assert outcome.error["error_code"] == "LAUNCH_FAILED"
        assert outcome.exit_code is None
        assert statuses(trainer.home, step.training_id) == ["preparing", "error"]

    @pytest.mark.parametrize(("code", "status"), [("0", "done"), ("4", "error")])
    def test_plain_script_gets_an_honest_run(
        self, trainer: FlowTrainer, code: str, status: str
    ) -> None:
        step = trainer.start_process(child("plain", code, "0.6"), claim_timeout=0.2)
        outcome = step.wait(30)
        assert outcome is not None
        assert outcome.status == status
        assert statuses(trainer.home, step.training_id)[:2] == ["preparing", "running"]


class TestCancel:
    """Cancel ends a run cancelled, even when the child ignores SIGTERM."""

    def test_cooperative_child(self, trainer: FlowTrainer) -> None:
        step = trainer.start_process(child("wait_term"), flow_step_id="t")
        wait_for(lambda: read_state(trainer.home, step.training_id).epoch == 2)
        outcome = step.cancel(grace=10)
        assert outcome.status == "cancelled"
        assert "SIGTERM" in read_state(trainer.home, step.training_id).message

    def test_child_ignoring_sigterm(self, trainer: FlowTrainer) -> None:
        step = trainer.start_process(child("ignore_term"), flow_step_id="t")
        wait_for(lambda: read_state(trainer.home, step.training_id).epoch == 2)
        started = time.monotonic()
        outcome = step.cancel(grace=1.0)
        assert time.monotonic() - started < 15
        assert outcome.status == "cancelled"
        assert outcome.exit_code == -signal.SIGKILL


class TestInProcess:
    """A callable step reports through the TrainingRun it is given."""

    def test_success(self, trainer: FlowTrainer) -> None:
        def train(run: TrainingRun) -> None:
            run.status("running")
            for step in range(1, 4):
                run.progress(epoch=1, total_epochs=1, step=step, total_steps=3)
                run.metrics(loss=1.0 / step)
            run.status("cooling_down")

        step = trainer.start_callable(train, flow_run_id="fr", flow_step_id="inproc")
        outcome = step.wait(30)
        assert outcome is not None
        assert outcome.outcome == "success"
        assert outcome.key_metrics["final_loss"] == pytest.approx(1.0 / 3)
        assert trainer.records(flow_run_id="fr")[0]["training_id"] == step.training_id

    def test_exception_is_an_error(self, trainer: FlowTrainer) -> None:
        def train(run: TrainingRun) -> None:
            run.status("running")
            raise FileNotFoundError("data.csv")

        step = trainer.start_callable(train)
        outcome = step.wait(30)
        assert outcome is not None
        assert outcome.error is not None
        assert outcome.error["error_code"] == "DATASET_NOT_FOUND"
        assert isinstance(step.exception, FileNotFoundError)

    def test_cancel_cooperative_and_not(self, trainer: FlowTrainer) -> None:
        def polite(run: TrainingRun) -> None:
            run.status("running")
            while not run.cancel_requested:
                time.sleep(0.01)

        step = trainer.start_callable(polite)
        wait_for(lambda: read_state(trainer.home, step.training_id).status == "running")
        assert step.cancel(grace=5).status == "cancelled"

        def stubborn(run: TrainingRun) -> None:
            run.status("running")
            time.sleep(3)
            run.progress(epoch=9)  # ignored: the run already ended

        step = trainer.start_callable(stubborn)
        wait_for(lambda: read_state(trainer.home, step.training_id).status == "running")
        assert step.cancel(grace=0.3).status == "cancelled"


class TestUpdates:
    """A step's updates are throttled views ending with the final one, sync and async."""

    def test_sync_updates(self, trainer: FlowTrainer) -> None:
        step = trainer.start_process(child("slow"))
        views = list(step.updates(interval=0.05, timeout=60))
        assert views[-1]["status"] == "done"
        seqs = [v["stats"]["last_seq"] for v in views]
        assert seqs == sorted(seqs)
        assert len(set(seqs)) >= len(seqs) - 1

    def test_async_updates(self, trainer: FlowTrainer) -> None:
        step = trainer.start_process(child("ok"))

        async def collect() -> list[dict[str, Any]]:
            return [view async for view in step.aupdates(interval=0.05)]

        views = asyncio.run(collect())
        assert views[-1]["status"] == "done"
        assert views[-1]["progress"]["fraction"] == 1.0


class TestRestart:
    """A new process reading only the logs gives the same records and drill-downs."""

    def test_requery_after_restart(self, trainer: FlowTrainer) -> None:
        steps = [
            trainer.start_process(child(mode), flow_id="f", flow_run_id="fr", flow_step_id=f"s{i}")
            for i, mode in enumerate(("ok", "oom", "exit3"))
        ]
        for step in steps:
            step.wait(60)
        before = trainer.records(flow_run_id="fr")
        script = (
            "import json, sys; from pulse_transports.flows import FlowTrainer; "
            "t = FlowTrainer(home=sys.argv[1]); "
            "print(json.dumps({'records': t.records(flow_run_id='fr'), "
            "'drill': t.drill_down(sys.argv[2])}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, str(trainer.home), steps[1].training_id],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        after = json.loads(out.stdout)
        assert after["records"] == json.loads(json.dumps(before))
        drill = after["drill"]
        assert drill["view"]["last_error"]["error_code"] == "CUDA_OOM"
        assert [t["status"] for t in drill["view"]["timeline"]][-1] == "error"
        assert "loss" in drill["metric_history"]


class TestPulseRun:
    """`pulse run` supervises any command and exits with its status."""

    def test_exit_status_and_link(self, tmp_path: Path) -> None:
        home = tmp_path / "home"
        done = subprocess.run(
            [
                PULSE,
                "run",
                "--home",
                str(home),
                "--training-id",
                "wrapped-1",
                "--flow-run-id",
                "fr",
                "--claim-timeout",
                "0.2",
                "--",
                *child("plain", "0", "0.5"),
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert read_state(home, "wrapped-1").status == "done"
        assert read_state(home, "wrapped-1").meta.flow_run_id == "fr"  # type: ignore[union-attr]
        failed = subprocess.run(
            [
                PULSE,
                "run",
                "--home",
                str(home),
                "--training-id",
                "wrapped-2",
                "--",
                *child("exit3"),
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        assert failed.returncode == 3
        assert read_state(home, "wrapped-2").errors[-1].error_code == "PROCESS_CRASHED"
        missing = subprocess.run(
            [PULSE, "run", "--home", str(home), "--", "/no/such/cmd"],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        assert missing.returncode == 127
        assert "LAUNCH_FAILED" in missing.stderr

    def test_ctrl_c_cancels(self, tmp_path: Path) -> None:
        home = tmp_path / "home"
        proc = subprocess.Popen(
            [
                PULSE,
                "run",
                "--home",
                str(home),
                "--training-id",
                "wrapped-3",
                "--",
                *child("wait_term"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for(lambda: read_state(home, "wrapped-3").epoch == 2)
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert read_state(home, "wrapped-3").status == "cancelled"
        assert proc.returncode != 0

    def test_bad_arguments(self, tmp_path: Path) -> None:
        bad = subprocess.run(
            [PULSE, "run", "--home", str(tmp_path), "--training-id", "../x", "--", "true"],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        assert bad.returncode == 2
        assert "training_id" in bad.stderr


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except (FileNotFoundError, AttributeError):
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")
