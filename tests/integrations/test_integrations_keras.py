"""The Keras 3 callback, end to end: a small Sequential model (torch backend) fitted on CPU."""

from __future__ import annotations

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


@pytest.fixture
def fit(pulse_home: Path) -> Callable[..., Any]:
    """Fit a Dense model on random data; returns the History.

    ``fail_at`` raises that exception in that training step (1-based, over the fit).
    """
    import keras
    import numpy as np

    class Failing(keras.layers.Layer):  # type: ignore[misc]
        def __init__(self, fail_at: int | None, exc: BaseException | None) -> None:
            super().__init__()
            self.fail_at, self.exc, self.calls = fail_at, exc, 0

        def call(self, x: Any, training: bool | None = None) -> Any:
            if training:
                self.calls += 1
                if self.calls == self.fail_at and self.exc is not None:
                    raise self.exc
            return x

    rng = np.random.default_rng(0)
    x = rng.standard_normal((SAMPLES, 4)).astype("float32")
    y = rng.standard_normal((SAMPLES, 1)).astype("float32")

    def run_fit(
        callbacks: list[Any],
        *,
        fail_at: int | None = None,
        exc: BaseException | None = None,
        epochs: int = 2,
    ) -> Any:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), Failing(fail_at, exc), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
        return model.fit(
            x,
            y,
            batch_size=BATCH,
            epochs=epochs,
            validation_data=(x, y),
            callbacks=callbacks,
            verbose=0,
        )

    return run_fit


class TestLifecycle:
    """A normal fit replays to preparing -> running -> done with the numbers Keras reported."""

    def test_short_fit(
        self,
        fit: Callable[..., Any],
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """Epochs, batches per epoch, loss and val_loss match the History."""
        from pulse_transports.integrations.keras import PulseCallback

        history = fit([PulseCallback(name="dense", batch_size=BATCH)])
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "done"]
        assert (state.epoch, state.total_epochs) == (2, 2)
        assert (state.step, state.total_steps) == (SAMPLES // BATCH, SAMPLES // BATCH)
        assert state.metrics["loss"] == pytest.approx(history.history["loss"][-1])
        assert state.metrics["val_loss"] == pytest.approx(history.history["val_loss"][-1])
        assert state.metrics["time_per_epoch"] > 0
        assert state.meta is not None
        assert state.meta.labels["framework"] == "keras"

    def test_progress_in_order(self, fit: Callable[..., Any]) -> None:
        """Every epoch starts at step 0 and ends at its last batch."""
        from pulse_transports.integrations.keras import PulseCallback

        sink = RecordingSink()
        fit([PulseCallback(sinks=[sink])])
        seen = [(p.epoch, p.step) for p in sink.of_type(Progress)]
        assert seen == sorted(seen, key=lambda p: (p[0] or 0, p[1] or 0))
        assert (2, 0) in seen
        assert seen[-1] == (2, 4)

    def test_train_function_restored(self, fit: Callable[..., Any]) -> None:
        """After fit the model's train_function is Keras's own again."""
        from pulse_transports.integrations.keras import PulseCallback

        callback = PulseCallback()
        fit([callback])
        assert not getattr(callback.model.train_function, "_pulse_wrapped", False)


class TestEndings:
    """Failures, interrupts and stops end the run with the right status and code."""

    def test_cuda_oom(
        self,
        fit: Callable[..., Any],
        read_runs: Callable[[], list[RunState]],
        statuses: Callable[[RunState], list[str]],
    ) -> None:
        """A CUDA out-of-memory error in a training step ends the run error/CUDA_OOM."""
        from pulse_transports.integrations.keras import PulseCallback

        boom = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            fit([PulseCallback()], fail_at=6, exc=boom)
        (state,) = read_runs()
        assert statuses(state) == ["preparing", "running", "error"]
        (error,) = state.errors
        assert error.error_code == "CUDA_OOM"
        assert (error.epoch, error.step) == (2, 1)
        # Keras's ANSI codes and layer-call wrapper are stripped (issue 20).
        assert error.message == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"

    def test_keyboard_interrupt(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """Ctrl-C in a training step ends the run cancelled."""
        from pulse_transports.integrations.keras import PulseCallback

        with pytest.raises(KeyboardInterrupt):
            fit([PulseCallback()], fail_at=3, exc=KeyboardInterrupt())
        (state,) = read_runs()
        assert state.status == "cancelled"

    def test_exception_outside_a_step_with_context(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """An exception from another callback is reported when the callback is a `with` block."""
        import keras

        from pulse_transports.integrations.keras import PulseCallback

        class Broken(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                raise FileNotFoundError("/data/shard-7 is gone")

        with pytest.raises(FileNotFoundError), PulseCallback() as pulse:
            fit([pulse, Broken()])
        (state,) = read_runs()
        assert state.status == "error"
        assert state.errors[0].error_code == "DATASET_NOT_FOUND"

    def test_stop_training_is_cancelled(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """model.stop_training set by other code ends the run cancelled."""
        import keras

        from pulse_transports.integrations.keras import PulseCallback

        class Stopper(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                self.model.stop_training = True

        fit([PulseCallback(), Stopper()], epochs=3)
        (state,) = read_runs()
        assert (state.status, state.epoch) == ("cancelled", 1)
        assert "model.stop_training" in state.message

    def test_early_stopping_is_done(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """A stop by EarlyStopping is a normal finish: done, saying so."""
        import keras

        from pulse_transports.integrations.keras import PulseCallback

        stopper = keras.callbacks.EarlyStopping(monitor="val_loss", mode="max", patience=0)
        history = fit([PulseCallback(), stopper], epochs=5)
        (state,) = read_runs()
        assert len(history.history["loss"]) < 5
        assert state.status == "done"
        assert "early stopping" in state.message

    @pytest.mark.usefixtures("every_step")
    def test_cancel_request(
        self, fit: Callable[..., Any], read_runs: Callable[[], list[RunState]]
    ) -> None:
        """run.request_cancel() sets model.stop_training; the run ends cancelled."""
        import keras

        from pulse_transports.integrations.keras import PulseCallback

        pulse = PulseCallback()

        class Canceller(keras.callbacks.Callback):  # type: ignore[misc]
            def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
                if batch == 1:
                    assert pulse.run is not None
                    pulse.run.request_cancel("stopped from the panel")

        history = fit([Canceller(), pulse])
        (state,) = read_runs()
        assert len(history.history["loss"]) == 1
        assert (state.status, state.message) == ("cancelled", "stopped from the panel")
        assert (state.epoch, state.step) == (1, 2)


class TestRuns:
    """Which run the callback reports to."""

    def test_lent_run_stays_open(self, fit: Callable[..., Any]) -> None:
        """A run given to the callback is reported to but ended by its owner."""
        from pulse_transports.integrations.keras import PulseCallback

        sink = RecordingSink()
        with TrainingRun(sinks=[sink], background=False) as run:
            fit([PulseCallback(run)])
            assert run.current_status == "running"
        assert run.current_status == "done"
