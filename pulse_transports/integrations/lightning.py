"""PyTorch Lightning: a ``Callback`` that reports a ``Trainer.fit`` run to PULSE.

This module owns :class:`PulseCallback` for ``lightning.pytorch`` (the
``pytorch_lightning`` package is used when ``lightning`` is not installed;
:func:`callback_class` builds the callback for the other one)::

    trainer = lightning.Trainer(..., callbacks=[PulseCallback()])

Mapping (shared rules: :mod:`pulse_transports.integrations._common`):

==========================  ====================================================
Lightning hook              PULSE
==========================  ====================================================
``setup`` (stage ``fit``)   the run opens: ``meta`` (with ``world_size``),
                            ``preparing`` (the sanity check runs in it)
``on_train_start``          ``running``; ``total_epochs`` = ``max_epochs``,
                            ``total_steps`` = ``num_training_batches``
``on_train_epoch_start``    ``epoch`` = ``current_epoch + 1``, ``step`` = 0
``on_train_batch_end``      ``step`` = ``batch_idx + 1``; ``loss`` from the
                            step's output; ``samples_per_second`` (the batch's
                            size x world size per step)
``on_train_epoch_end``      ``time_per_epoch``; logged epoch metrics and ``lr``
``on_validation_epoch_end`` logged validation metrics (not during the sanity check)
final checkpoint            ``cooling_down`` ("saving the final checkpoint")
``on_fit_end``              ``done``; ``cancelled`` if a cancel was requested or
                            ``trainer.should_stop`` ended training early and no
                            ``EarlyStopping`` callback stopped it
``on_exception``            ``error`` with its code (CUDA OOM -> ``CUDA_OOM``);
                            KeyboardInterrupt -> ``cancelled``
==========================  ====================================================

Steps are batches (``batch_idx + 1``), so with ``accumulate_grad_batches``
they are not optimizer steps. With ``max_epochs=-1`` and a ``max_steps``
budget only global steps are known: ``step`` = ``trainer.global_step``,
``total_steps`` = ``max_steps``, no epochs. A cancel requested on the run
(``run.request_cancel()``) sets ``trainer.should_stop``.

Only global rank 0 reports (``trainer.global_rank``); the training_id goes to
the other ranks with ``trainer.strategy.broadcast`` so that their failures
reach the run (:mod:`pulse_transports.integrations.distributed`).

Imports ``lightning`` (or ``pytorch_lightning``); only this module.
"""

from __future__ import annotations

import math
import time
from typing import Any

# The ignores keep mypy quiet whether or not (and however typed) the packages are installed.
try:
    from lightning.pytorch import (  # type: ignore[import-not-found, unused-ignore]
        Callback as _LightningCallback,
    )
except ImportError:  # pragma: no cover - the standalone package
    from pytorch_lightning import (  # type: ignore[import-not-found, assignment, unused-ignore]
        Callback as _LightningCallback,
    )

from pulse_transports.integrations._common import (
    RunContext,
    numeric_items,
)


def _batch_size(batch: Any) -> int | None:
    """The leading dimension of a batch: a tensor, or the first tensor in a tuple/list/dict."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()), None)
    elif isinstance(batch, list | tuple):
        batch = batch[0] if batch else None
    shape = getattr(batch, "shape", None)
    if shape:
        return int(shape[0])
    return len(batch) if isinstance(batch, list | tuple) else None


def _loss(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        return outputs.get("loss")
    return outputs if hasattr(outputs, "__float__") else None


class _PulseLightning(RunContext):
    """The hooks of the Lightning callback (mixed into the framework's ``Callback``)."""

    framework = "lightning"
    _epoch = 0
    _step = 0
    _total_epochs: int | None = None
    _total_steps: int | None = None
    _global = False
    _max_steps = 0
    _epoch_t0 = 0.0
    _batch: int | None = None
    _world = 1

    def _at_end(self) -> bool:
        if self._global:
            return self._max_steps > 0 and self._step >= self._max_steps
        return (
            self._total_epochs is not None
            and self._total_steps is not None
            and self._epoch >= self._total_epochs
            and self._step >= self._total_steps
        )

    # -- the lifecycle -------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """``fit`` starts: open the run (``preparing``)."""
        if stage == "fit":
            self.binding.open(
                rank=int(trainer.global_rank),
                world_size=int(trainer.world_size),
                broadcast=trainer.strategy.broadcast,
            )

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """The training loop starts: totals known, the run is ``running``."""
        run = self.binding.open(
            rank=int(trainer.global_rank),
            world_size=int(trainer.world_size),
            broadcast=trainer.strategy.broadcast,
        )
        max_epochs = trainer.max_epochs
        self._world = max(int(trainer.world_size), 1)
        self._max_steps = int(trainer.max_steps or -1)
        batches = trainer.num_training_batches
        per_epoch = (
            int(batches) if isinstance(batches, int | float) and math.isfinite(batches) else None
        )
        self._global = (max_epochs is None or max_epochs < 0 or per_epoch is None) and (
            self._max_steps > 0
        )
        if self._global:
            self._step = int(trainer.global_step)
            run.progress(step=self._step, total_steps=self._max_steps)
        else:
            self._total_epochs = (
                int(max_epochs) if max_epochs is not None and max_epochs > 0 else None
            )
            self._total_steps = per_epoch
            self._epoch = int(trainer.current_epoch) + 1
            run.progress(
                epoch=self._epoch,
                total_epochs=self._total_epochs,
                step=0,
                total_steps=self._total_steps,
            )
        self.binding.running("training started")

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """A new epoch: report it with step 0."""
        self._epoch_t0 = time.monotonic()
        run = self.binding.run
        if run is None or self._global:
            return
        self.binding.flush()
        self._epoch = int(trainer.current_epoch) + 1
        self._step = 0
        run.progress(epoch=self._epoch, step=0)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """A batch is done: step, loss, throughput; honour a cancel request."""
        binding = self.binding
        if binding.run is None:
            return
        self._step = step = trainer.global_step if self._global else batch_idx + 1
        size = self._batch
        if size is None:
            size = self._batch = (_batch_size(batch) or 1) * self._world
        if binding.step(step, _loss(outputs), size):
            self._batch = None  # measured again on the next batch: the last one may be short
            if binding.cancel_requested:
                trainer.should_stop = True

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """An epoch ended: its duration, the logged epoch metrics and the learning rate."""
        run = self.binding.run
        if run is None:
            return
        self.binding.flush(partial=True)
        extra = numeric_items(trainer.callback_metrics, frozenset({"loss"}))
        optimizers = trainer.optimizers
        if optimizers:
            groups = optimizers[0].param_groups
            if groups and "lr" in groups[0]:
                extra["lr"] = groups[0]["lr"]
        elapsed = time.monotonic() - self._epoch_t0 if self._epoch_t0 else None
        run.metrics(time_per_epoch=elapsed, **extra)

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        """Validation starts: training's held values go out before the pause."""
        if not trainer.sanity_checking:
            self.binding.flush()

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        """Validation ended: its logged metrics (the sanity check's are not reported)."""
        run = self.binding.run
        if run is None or trainer.sanity_checking:
            return
        run.metrics(**numeric_items(trainer.callback_metrics, frozenset({"loss"})))
        self.binding.restart_rates()

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: Any) -> None:
        """A checkpoint is being saved: after the last step that is cooling down."""
        if self._at_end():
            self.binding.cool_down("saving the final checkpoint")

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        """``fit`` returned: an owned run ends (done or cancelled)."""
        stopped = bool(trainer.should_stop) and not self._at_end()
        fired: bool | None = None
        if stopped:
            fired = any(
                str(getattr(getattr(cb, "stopping_reason", None), "name", "NOT_STOPPED"))
                != "NOT_STOPPED"
                for cb in trainer.early_stopping_callbacks
            )
        where = (
            f"step {self._step} of {self._max_steps}"
            if self._global
            else f"epoch {self._epoch} of {self._total_epochs}"
        )
        self.binding.finish(
            stopped_early=stopped,
            early_stopping=fired,
            flag="trainer.should_stop",
            where=where,
        )

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        """``fit`` raised (or was interrupted): the run ends error or cancelled."""
        self.binding.fail(exception)


def callback_class(base: type[Any]) -> type[Any]:
    """The PULSE callback built on *base* (``pytorch_lightning.Callback``, say)."""
    return type("PulseCallback", (_PulseLightning, base), {"__doc__": PulseCallback.__doc__})


class PulseCallback(_PulseLightning, _LightningCallback):  # type: ignore[misc, unused-ignore]
    """Report a Lightning ``Trainer.fit`` run to PULSE.

    Takes the arguments of :class:`RunContext`: *run*, *name*, *all_ranks*
    and *run_options*.
    """
