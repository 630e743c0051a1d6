"""The Lightning callback, end to end: a linear model trained by ``Trainer.fit`` on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.events import Progress
from pulse_core.state import RunState
from pulse_core.testing import RecordingSink

pytestmark = [pytest.mark.integrations, pytest.mark.usefixtures("torch_quiet")]

SAMPLES = 32
BATCH = 8
DDP_WORKER = Path(__file__).with_name("lightning_ddp_worker.py")


@pytest.fixture
def fit(tmp_path: Path, pulse_home: Path) -> Callable[..., Any]:
    """Fit a linear LightningModule on random data; returns the Trainer.

    ``fail_at`` raises that exception in the training step of that global step.
    """
    import lightning
    import torch

    class Linear(lightning.LightningModule):  # type: ignore[misc]
        def __init__(self, fail_at: int | None, exc: BaseException | None) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.fail_at, self.exc = fail_at, exc

        def training_step(self, batch: Any, index: int) -> Any:
            if self.global_step == self.fail_at and self.exc is not None:
                raise self.exc
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss, on_step=True)
            return loss

        def validation_step(self, batch: Any, index: int) -> None:
            x, y = batch
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(x), y))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    data = torch.utils.data.TensorDataset(torch.randn(SAMPLES, 4), torch.randn(SAMPLES, 1))

    def run_fit(
        callbacks: list[Any],
        *,
        fail_at: int | None = None,
        exc: BaseException | None = None,
        validate: bool = True,
        **options: Any,
    ) -> Any:
        settings: dict[str, Any] = {
            "max_epochs": 2,
            "logger": False,
            "enable_checkpointing": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(tmp_path),
            "num_sanity_val_steps": 1,
        }
        settings.update(options)
        trainer = lightning.Trainer(callbacks=callbacks, **settings)
        loader = torch.utils.data.DataLoader(data, batch_size=BATCH)
        trainer.fit(Linear(fail_at, exc), loader, loader if validate else None)
        return trainer

    return run_fit


class TestLifecycle:
    """A normal fit replays to preparing -> running -> done with Lightning's numbers."""

    def test_short_fit(
        self,
        fit: Callable[..., Any],
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """Epochs, batches per epoch, loss and validation loss match what Lightning logged."""
        from pulse_transports.integrations.lightning import PulseCallback

        trainer = fit([PulseCallback(name="linear")])
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "done"]
        assert (state.epoch, state.total_epochs) == (2, 2)
        assert (state.step, state.total_steps) == (SAMPLES // BATCH, SAMPLES // BATCH)
        logged = trainer.callback_metrics
        assert state.metrics["loss"] == pytest.approx(float(logged["train_loss"]))
        assert state.metrics["val_loss"] == pytest.approx(float(logged["val_loss"]))
        assert state.metrics["lr"] == pytest.approx(0.05)
        assert state.metrics["time_per_epoch"] > 0
        assert state.meta is not None
        assert state.meta.labels["framework"] == "lightning"

    def test_progress_in_order(self, fit: Callable[..., Any]) -> None:
        """Every epoch starts at step 0 and ends at its last batch."""
        from pulse_transports.integrations.lightning import PulseCallback

        sink = RecordingSink()
        fit([PulseCallback(sinks=[sink])])
        seen = [(p.epoch, p.step) for p in sink.of_type(Progress)]
        assert seen == sorted(seen)
        assert (2, 0) in seen
        assert seen[-1] == (2, 4)

    def test_only_global_steps(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """With max_epochs=-1 and max_steps the run is a global step count of the budget."""
        from pulse_transports.integrations.lightning import PulseCallback

        fit([PulseCallback()], max_epochs=-1, max_steps=6, validate=False)
        (state,) = read_runs()
        assert state.status == "done"
        assert (state.step, state.total_steps, state.total_epochs) == (6, 6, None)

    def test_final_checkpoint_cools_down(
        self,
        fit: Callable[..., Any],
        tmp_path: Path,
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """The checkpoint saved after the last batch is cooling_down; earlier ones are not."""
        from lightning.pytorch.callbacks import ModelCheckpoint

        from pulse_transports.integrations.lightning import PulseCallback

        checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_epochs=1, save_top_k=-1)
        fit([PulseCallback(), checkpoints], enable_checkpointing=True, validate=False)
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "cooling_down", "done"]
        assert len(list((tmp_path / "ckpt").glob("*.ckpt"))) == 2


class TestEndings:
    """Failures, interrupts and stops end the run with the right status and code."""

    def test_cuda_oom(
        self,
        fit: Callable[..., Any],
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """A CUDA out-of-memory error in a training step ends the run error/CUDA_OOM."""
        from pulse_transports.integrations.lightning import PulseCallback

        boom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            fit([PulseCallback()], fail_at=5, exc=boom)
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "error"]
        (error,) = state.errors
        assert error.error_code == "CUDA_OOM"
        assert (error.epoch, error.step) == (2, 1)

    def test_keyboard_interrupt(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Ctrl-C during fit ends the run cancelled (Lightning then exits with status 1)."""
        import signal

        from pulse_transports.integrations.lightning import PulseCallback

        previous = signal.getsignal(signal.SIGINT)
        try:
            with pytest.raises(SystemExit):
                fit([PulseCallback()], fail_at=3, exc=KeyboardInterrupt())
        finally:
            signal.signal(signal.SIGINT, previous)  # Lightning ignores SIGINT after Ctrl-C
        (state,) = read_runs()
        assert state.status == "cancelled"
        assert state.errors == ()

    def test_should_stop_is_cancelled(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """trainer.should_stop set by other code ends the run cancelled, saying why."""
        import lightning

        from pulse_transports.integrations.lightning import PulseCallback

        class Stopper(lightning.Callback):  # type: ignore[misc]
            def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
                if trainer.global_step == 3:
                    trainer.should_stop = True

        trainer = fit([PulseCallback(), Stopper()])
        (state,) = read_runs()
        assert trainer.global_step == 3
        assert state.status == "cancelled"
        assert "trainer.should_stop" in state.message

    def test_early_stopping_is_done(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """A stop by EarlyStopping is a normal finish: done, saying so."""
        from lightning.pytorch.callbacks import EarlyStopping

        from pulse_transports.integrations.lightning import PulseCallback

        stopper = EarlyStopping(monitor="val_loss", mode="max", patience=0, min_delta=10.0)
        trainer = fit([PulseCallback(), stopper], max_epochs=5)
        (state,) = read_runs()
        assert trainer.current_epoch < 5
        assert state.status == "done"
        assert "early stopping" in state.message

    @pytest.mark.usefixtures("every_step")
    def test_cancel_request(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """run.request_cancel() sets trainer.should_stop; the run ends cancelled."""
        import lightning

        from pulse_transports.integrations.lightning import PulseCallback

        pulse = PulseCallback()

        class Canceller(lightning.Callback):  # type: ignore[misc]
            def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
                if trainer.global_step == 2:
                    assert pulse.run is not None
                    pulse.run.request_cancel("stopped from the panel")

        trainer = fit([Canceller(), pulse])
        (state,) = read_runs()
        assert trainer.global_step == 3
        assert (state.status, state.message) == ("cancelled", "stopped from the panel")


class TestRuns:
    """Which run the callback reports to."""

    def test_lent_run_stays_open(self, fit: Callable[..., Any]) -> None:
        """A run given to the callback is reported to but ended by its owner."""
        from pulse_transports.integrations.lightning import PulseCallback

        sink = RecordingSink()
        with TrainingRun(sinks=[sink], background=False) as run:
            fit([PulseCallback(run)])
            assert run.current_status == "running"
        assert run.current_status == "done"

    def test_second_fit_opens_a_new_run(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """One callback used for two fits reports two runs, both done."""
        from pulse_transports.integrations.lightning import PulseCallback

        callback = PulseCallback()
        fit([callback])
        fit([callback])
        assert [s.status for s in read_runs()] == ["done", "done"]


class TestDistributed:
    """A 2-process Lightning DDP fit (CPU, gloo) reports one run from global rank 0."""

    def _fit(
        self,
        home: Path,
        tmp_path: Path,
        fail_rank: int | None = None,
        kill_rank: int | None = None,
    ) -> int:
        env = {**os.environ, "PULSE_HOME": str(home)}
        env["PULSE_TEST_FAIL_RANK"] = str(-1 if fail_rank is None else fail_rank)
        env["PULSE_TEST_KILL_RANK"] = str(-1 if kill_rank is None else kill_rank)
        for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "PULSE_TRAINING_ID"):
            env.pop(name, None)
        result = subprocess.run(
            [sys.executable, str(DDP_WORKER)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return result.returncode

    def test_one_run(
        self, pulse_home: Path, tmp_path: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Both processes train; one log, of world size 2, ends done at the last batch."""
        assert self._fit(pulse_home, tmp_path) == 0
        (state,) = read_runs()
        assert state.meta is not None
        assert (state.meta.world_size, state.meta.name) == (2, "lightning-ddp")
        assert (state.status, state.epoch, state.step, state.total_steps) == ("done", 2, 4, 4)

    def test_failure_on_rank_one(
        self, pulse_home: Path, tmp_path: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Rank 1's CUDA OOM reaches the run (the id came over strategy.broadcast)."""
        assert self._fit(pulse_home, tmp_path, fail_rank=1) != 0
        (state,) = read_runs()
        assert state.status == "error"
        (error,) = state.errors
        assert error.error_code == "CUDA_OOM"
        assert error.details is not None
        assert error.details["rank"] == 1

    def test_sigkill_of_rank_one(
        self, pulse_home: Path, tmp_path: Path, read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Rank 1 SIGKILLed mid-fit: the run's error names rank 1 and the signal."""
        assert self._fit(pulse_home, tmp_path, kill_rank=1) != 0
        (state,) = read_runs()
        assert state.status == "error"
        (error,) = state.errors
        assert (error.error_code, error.is_retryable) == ("PROCESS_CRASHED", True)
        assert error.message.startswith("rank 1 was killed by SIGKILL")
        assert error.details is not None
        assert error.details["rank"] == 1
