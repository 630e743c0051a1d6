"""The Transformers callback, end to end: a tiny GPT-2 (random weights) trained on CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.events import Progress
from pulse_core.state import RunState
from pulse_core.testing import RecordingSink
from pulse_transports.integrations.distributed import PeerRun

pytestmark = [pytest.mark.integrations, pytest.mark.usefixtures("torch_quiet")]

SAMPLES = 24
BATCH = 4


@pytest.fixture
def make_trainer(tmp_path: Path, pulse_home: Path) -> Callable[..., Any]:
    """Build a Trainer on a 1-layer GPT-2 from a config and a random token dataset."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    class Tokens(torch.utils.data.Dataset[dict[str, Any]]):  # type: ignore[misc]
        def __len__(self) -> int:
            return SAMPLES

        def __getitem__(self, index: int) -> dict[str, Any]:
            ids = torch.randint(0, 64, (16,), generator=torch.Generator().manual_seed(index))
            return {"input_ids": ids, "labels": ids}

    def build(callbacks: list[Any], dataset: Any = None, **overrides: Any) -> Any:
        config = GPT2Config(
            n_layer=1,
            n_head=2,
            n_embd=16,
            vocab_size=64,
            n_positions=16,
            bos_token_id=0,
            eos_token_id=0,
        )
        options: dict[str, Any] = {
            "output_dir": str(tmp_path / "out"),
            "per_device_train_batch_size": BATCH,
            "num_train_epochs": 2,
            "logging_steps": 1,
            "report_to": "none",
            "disable_tqdm": True,
            "save_strategy": "no",
            "use_cpu": True,
            "log_level": "error",
            "seed": 0,
        }
        options.update(overrides)
        return Trainer(
            model=GPT2LMHeadModel(config),
            args=TrainingArguments(**options),
            train_dataset=dataset if dataset is not None else Tokens(),
            eval_dataset=Tokens(),
            callbacks=callbacks,
        )

    return build


def _raise_at(step: int, exc: BaseException) -> Any:
    from transformers import TrainerCallback

    class Raiser(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == step:
                raise exc

    return Raiser()


def _last_logged(trainer: Any, key: str) -> float:
    return float(next(e[key] for e in reversed(trainer.state.log_history) if key in e))


class TestLifecycle:
    """A normal Trainer run replays to preparing -> running -> done with the Trainer's numbers."""

    def test_short_training(
        self,
        make_trainer: Callable[..., Any],
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """Epochs, steps per epoch, loss and learning rate match what the Trainer logged."""
        from pulse_transports.integrations.hf import PulseCallback

        trainer = make_trainer([PulseCallback(name="tiny-gpt2")])
        trainer.train()
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "done"]
        assert (state.epoch, state.total_epochs) == (2, 2)
        assert (state.step, state.total_steps) == (SAMPLES // BATCH, SAMPLES // BATCH)
        assert state.metrics["loss"] == pytest.approx(_last_logged(trainer, "loss"))
        assert state.metrics["lr"] == pytest.approx(_last_logged(trainer, "learning_rate"))
        assert state.metrics["train_loss"] == pytest.approx(_last_logged(trainer, "train_loss"))
        assert state.metrics["samples_per_second"] > 0
        assert state.metrics["time_per_epoch"] > 0
        assert state.meta is not None
        assert state.meta.name == "tiny-gpt2"
        assert state.meta.labels["framework"] == "transformers"

    def test_progress_in_order(self, make_trainer: Callable[..., Any], pulse_home: Path) -> None:
        """Progress goes through epoch 1, then epoch 2 from step 0 to 6; never backwards."""
        from pulse_transports.integrations.hf import PulseCallback

        sink = RecordingSink()
        trainer = make_trainer([PulseCallback(sinks=[sink])])
        trainer.train()
        seen = [(p.epoch, p.step) for p in sink.of_type(Progress)]
        assert seen[-1] == (2, 6)
        assert seen == sorted(seen)
        assert (2, 0) in seen

    def test_gradient_accumulation(
        self, make_trainer: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Steps are optimizer steps: 6 batches with accumulation 2 are 3 steps per epoch."""
        from pulse_transports.integrations.hf import PulseCallback

        trainer = make_trainer([PulseCallback()], gradient_accumulation_steps=2)
        trainer.train()
        (state,) = read_runs()
        assert (state.epoch, state.step, state.total_steps) == (2, 3, 3)
        assert trainer.state.global_step == 6

    def test_only_global_steps(
        self, make_trainer: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """An iterable dataset with max_steps reports global steps of the budget, no epochs."""
        import torch

        from pulse_transports.integrations.hf import PulseCallback

        class Stream(torch.utils.data.IterableDataset[dict[str, Any]]):  # type: ignore[misc]
            def __iter__(self) -> Any:
                for index in range(1000):
                    ids = torch.randint(
                        0, 64, (16,), generator=torch.Generator().manual_seed(index)
                    )
                    yield {"input_ids": ids, "labels": ids}

        trainer = make_trainer([PulseCallback()], dataset=Stream(), max_steps=5)
        trainer.train()
        (state,) = read_runs()
        assert state.status == "done"
        assert (state.step, state.total_steps) == (5, 5)
        assert state.total_epochs is None

    def test_final_checkpoint_cools_down(
        self,
        make_trainer: Callable[..., Any],
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """Saving the last checkpoint is cooling_down; earlier saves keep the run running."""
        from pulse_transports.integrations.hf import PulseCallback

        trainer = make_trainer([PulseCallback()], save_strategy="epoch")
        trainer.train()
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "cooling_down", "done"]
        assert state.timeline[2].message == "saving the final checkpoint"
        assert (state.epoch, state.step) == (2, 6)

    def test_evaluation_metrics(
        self, make_trainer: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Evaluation results logged by the Trainer arrive as named metrics."""
        from pulse_transports.integrations.hf import PulseCallback

        trainer = make_trainer([PulseCallback()], eval_strategy="epoch")
        trainer.train()
        (state,) = read_runs()
        assert state.metrics["eval_loss"] == pytest.approx(_last_logged(trainer, "eval_loss"))


class TestEndings:
    """Failures, interrupts and stops end the run with the right status and code."""

    def test_cuda_oom(
        self,
        make_trainer: Callable[..., Any],
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """A CUDA out-of-memory error escaping train() ends the run error/CUDA_OOM, retryable."""
        from pulse_transports.integrations.hf import PulseCallback

        boom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        trainer = make_trainer([PulseCallback(), _raise_at(3, boom)])
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            trainer.train()
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "error"]
        (error,) = state.errors
        assert error.error_code == "CUDA_OOM"
        assert error.is_retryable
        assert (error.epoch, error.step) == (1, 3)

    def test_interrupt(
        self,
        make_trainer: Callable[..., Any],
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """A KeyboardInterrupt escaping train() ends the run cancelled."""
        from pulse_transports.integrations.hf import PulseCallback

        trainer = make_trainer([PulseCallback(), _raise_at(2, KeyboardInterrupt())])
        with pytest.raises(KeyboardInterrupt):
            trainer.train()
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "cancelled"]
        assert state.errors == ()

    @pytest.mark.usefixtures("every_step")
    def test_cancel_request_stops_training(
        self, make_trainer: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """run.request_cancel() makes the Trainer stop and the run end cancelled."""
        from transformers import TrainerCallback

        from pulse_transports.integrations.hf import PulseCallback

        pulse = PulseCallback()

        class Canceller(TrainerCallback):  # type: ignore[misc]
            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.global_step == 2:
                    assert pulse.run is not None
                    pulse.run.request_cancel("stopped from the panel")

        trainer = make_trainer([pulse, Canceller()])
        trainer.train()
        (state,) = read_runs()
        assert state.status == "cancelled"
        assert state.message == "stopped from the panel"
        assert trainer.state.global_step == 3

    def test_stop_flag_without_early_stopping_is_cancelled(
        self, make_trainer: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """control.should_training_stop set by another callback ends the run cancelled."""
        from transformers import TrainerCallback

        from pulse_transports.integrations.hf import PulseCallback

        class Stopper(TrainerCallback):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                if state.global_step == 4:
                    control.should_training_stop = True

        trainer = make_trainer([PulseCallback(), Stopper()])
        trainer.train()
        (state,) = read_runs()
        assert state.status == "cancelled"
        assert "control.should_training_stop" in state.message

    def test_early_stopping_is_done(
        self, make_trainer: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """A stop by EarlyStoppingCallback is a normal finish: done, saying so."""
        from transformers import EarlyStoppingCallback

        from pulse_transports.integrations.hf import PulseCallback

        trainer = make_trainer(
            [PulseCallback(), EarlyStoppingCallback(early_stopping_patience=1)],
            eval_strategy="steps",
            eval_steps=1,
            save_strategy="steps",
            save_steps=1,
            metric_for_best_model="eval_loss",
            greater_is_better=True,  # the loss falls: "worse" at once, stop after 2 evals
            load_best_model_at_end=True,
            num_train_epochs=4,
        )
        trainer.train()
        (state,) = read_runs()
        assert trainer.state.global_step < trainer.state.max_steps
        assert state.status == "done"
        assert "early stopping" in state.message


class TestRuns:
    """Which run the callback reports to, by rank and by who owns it."""

    def test_lent_run_stays_open(self, make_trainer: Callable[..., Any]) -> None:
        """A run given to the callback is reported to but left for its owner to end."""
        from pulse_transports.integrations.hf import PulseCallback

        sink = RecordingSink()
        with TrainingRun(sinks=[sink], background=False) as run:
            make_trainer([PulseCallback(run)]).train()
            assert run.current_status == "running"
        assert run.current_status == "done"
        assert sink.of_type(Progress)[-1].epoch == 2

    def test_current_run_is_used(self, make_trainer: Callable[..., Any]) -> None:
        """Inside `with TrainingRun()` the callback reports to that run without being told."""
        from pulse_transports.integrations.hf import PulseCallback

        sink = RecordingSink()
        with TrainingRun(sinks=[sink], background=False) as run:
            callback = PulseCallback()
            make_trainer([callback]).train()
            assert callback.run is run
        assert sink.of_type(Progress)[-1].step == 6

    def test_other_ranks_are_silent(self, pulse_home: Path) -> None:
        """A process that is not world process zero gets a silent run and writes no log."""
        from pulse_transports.integrations.hf import PulseCallback

        callback = PulseCallback()
        args = SimpleNamespace(world_size=2, process_index=1)
        callback.on_init_end(args, SimpleNamespace(is_world_process_zero=False), None)
        assert isinstance(callback.run, PeerRun)
        assert callback.run.rank == 1
        assert not (pulse_home / "logs" / "training").exists()
