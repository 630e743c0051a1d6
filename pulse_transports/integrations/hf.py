"""Hugging Face Transformers: a ``TrainerCallback`` that reports a Trainer's run to PULSE.

This module owns :class:`PulseCallback` for ``transformers.Trainer`` (and
subclasses such as TRL's trainers). One line::

    trainer = Trainer(..., callbacks=[PulseCallback()])

Mapping (shared rules: :mod:`pulse_transports.integrations._common`):

=====================  =========================================================
Trainer event          PULSE
=====================  =========================================================
``on_init_end``        the run opens: ``meta`` (with ``world_size``), ``preparing``
``on_train_begin``     ``running``; ``total_epochs`` = ``state.num_train_epochs``,
                       ``total_steps`` = optimizer steps per epoch
``on_epoch_begin``     ``epoch`` = the epoch in progress (1-based), ``step`` = 0
``on_step_end``        ``step`` = optimizer steps done in this epoch
``on_log``             ``loss``; ``lr`` (learning rate), ``grad_norm``, eval and
                       summary values as named metrics; ``tokens_per_second``
                       (with ``include_num_input_tokens_seen``)
steps                  ``samples_per_second`` (steps x total batch size per second)
``on_epoch_end``       ``time_per_epoch``
final save             ``cooling_down`` ("saving the final checkpoint")
``on_train_end``       ``done`` (``cancelled`` if a cancel was requested, or if
                       ``control.should_training_stop`` ended training early and
                       no ``EarlyStoppingCallback`` fired)
exception in train()   ``error`` with its code (CUDA OOM -> ``CUDA_OOM``),
                       KeyboardInterrupt -> ``cancelled``
=====================  =========================================================

Steps are the Trainer's optimizer steps (``global_step``): with gradient
accumulation one step is several batches. Steps per epoch are computed as the
Trainer does (``ceil(len(train_dataloader) / gradient_accumulation_steps)``).
Without a dataloader length (an ``IterableDataset`` with ``max_steps``) only
global steps are known: ``step`` = ``global_step``, ``total_steps`` =
``max_steps``, no epochs.

Exceptions: the Trainer has no exception hook, so the callback wraps the
``train`` method of the Trainer it belongs to (found when the Trainer calls
``on_init_end``; :meth:`PulseCallback.attach` does it by hand for a callback
added later). Only exceptions that escape ``train()`` end the run: the
Trainer's own ``auto_find_batch_size`` retries after an OOM stay invisible.

Only the main process reports (``state.is_world_process_zero``); the other
ranks forward a failure (:mod:`pulse_transports.integrations.distributed`).

``report_to="pulse"`` is not offered: Transformers resolves ``report_to``
names through a closed table and rejects other names, with no plugin hook.

Imports ``transformers`` (only this module).
"""

from __future__ import annotations

import functools
import math
import sys
import time
import weakref
from types import FrameType
from typing import Any, Final

from transformers import TrainerCallback  # type: ignore[import-not-found, unused-ignore]

from pulse_transports.integrations._common import (
    Run,
    RunContext,
    numeric_items,
)

#: Keys of ``on_log`` that are not metrics (or are reported under another name).
_NOT_METRICS: Final = frozenset({"epoch", "loss", "learning_rate", "step"})
#: How many frames up from ``on_init_end`` the Trainer is looked for.
_FRAMES: Final = 12


class PulseCallback(TrainerCallback, RunContext):  # type: ignore[misc, unused-ignore]
    """Report a ``transformers.Trainer`` run to PULSE.

    Takes the arguments of :class:`RunContext`: *run*, *name*, *all_ranks*
    and *run_options*.
    """

    framework = "transformers"
    _trainer: weakref.ReferenceType[Any] | None = None
    _epoch = 0
    _first_epoch = True
    _epoch_start = 0
    _per_epoch: int | None = None
    _max_steps = 0
    _epoch_t0 = 0.0
    _log_t = 0.0
    _log_tokens = 0
    _samples_per_step = 1.0

    # -- finding the trainer ---------------------------------------------------------

    def attach(self, trainer: Any) -> None:
        """Wrap ``trainer.train`` so an exception escaping it ends the run.

        Done automatically for a callback passed to the Trainer's constructor.
        """
        if self._trainer is not None and self._trainer() is trainer:
            return
        original = trainer.train
        binding = self.binding

        @functools.wraps(original)
        def train(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                binding.fail(exc)
                raise

        trainer.train = train
        self._trainer = weakref.ref(trainer)

    def _find_trainer(self) -> None:
        if self._trainer is not None:
            return
        frame: FrameType | None = sys._getframe(2)
        for _ in range(_FRAMES):
            if frame is None:
                return
            owner = frame.f_locals.get("self")
            handler = getattr(owner, "callback_handler", None)
            if handler is not None and any(cb is self for cb in getattr(handler, "callbacks", ())):
                self.attach(owner)
                return
            frame = frame.f_back

    def _open(self, args: Any, state: Any) -> Run:
        world = int(getattr(args, "world_size", 1) or 1)
        rank = 0 if state.is_world_process_zero else max(int(args.process_index), 1)
        return self.binding.open(rank=rank, world_size=world)

    # -- the lifecycle -------------------------------------------------------------

    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """The Trainer is built: open the run (``preparing``)."""
        self._find_trainer()
        self._open(args, state)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Training starts: totals known, the run is ``running``."""
        self._find_trainer()
        run = self._open(args, state)
        self._max_steps = int(state.max_steps or 0)
        loader = kwargs.get("train_dataloader")
        accumulation = max(int(args.gradient_accumulation_steps or 1), 1)
        try:
            batches = len(loader) if loader is not None else None
        except TypeError:
            batches = None
        epochs = int(state.num_train_epochs or 0)
        if batches and 0 < epochs < sys.maxsize // 2:
            self._per_epoch = max(math.ceil(batches / accumulation), 1)
            done = int(state.global_step) // self._per_epoch
            self._epoch = done  # epochs finished before this call (a resumed run)
            run.progress(
                epoch=done + 1,
                total_epochs=epochs,
                step=int(state.global_step) - done * self._per_epoch,
                total_steps=self._per_epoch,
            )
        else:
            self._per_epoch = None
            run.progress(step=int(state.global_step), total_steps=self._max_steps or None)
        self._first_epoch = True
        batch = int(getattr(state, "train_batch_size", None) or args.per_device_train_batch_size)
        self._samples_per_step = float(batch * accumulation * max(int(args.world_size or 1), 1))
        self._log_t = time.monotonic()
        self._log_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        self.binding.running("training started")

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A new epoch: report it with step 0."""
        run = self.binding.run
        self._epoch_t0 = time.monotonic()
        if run is None or self._per_epoch is None:
            return
        self.binding.flush()
        self._epoch += 1
        if self._first_epoch:
            self._epoch_start = (self._epoch - 1) * self._per_epoch
            self._first_epoch = False
        else:
            self._epoch_start = int(state.global_step)
        run.progress(epoch=self._epoch, step=int(state.global_step) - self._epoch_start)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """An optimizer step is done: report the step; honour a cancel request."""
        binding = self.binding
        if binding.run is None:
            return
        step = state.global_step
        done = step if self._per_epoch is None else step - self._epoch_start
        if binding.step(done, None, self._samples_per_step) and binding.cancel_requested:
            control.should_training_stop = True
        if step >= self._max_steps > 0 and control.should_save:
            binding.cool_down("saving the final checkpoint")

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """An epoch ended: report its duration."""
        run = self.binding.run
        if run is not None and self._epoch_t0:
            self.binding.flush(partial=True)
            run.metrics(time_per_epoch=time.monotonic() - self._epoch_t0)
        if state.global_step >= self._max_steps > 0 and control.should_save:
            self.binding.cool_down("saving the final checkpoint")

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        """The Trainer logged: loss, learning rate, eval values, tokens per second."""
        run = self.binding.run
        if run is None or not logs:
            return
        self.binding.flush()
        extra = numeric_items(logs, _NOT_METRICS)
        if "learning_rate" in logs:
            extra["lr"] = logs["learning_rate"]
        tps = None
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        if tokens > self._log_tokens:
            now = time.monotonic()
            if now > self._log_t:
                tps = (tokens - self._log_tokens) / (now - self._log_t)
            self._log_t, self._log_tokens = now, tokens
        run.metrics(loss=logs.get("loss"), tokens_per_second=tps, **extra)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """A checkpoint was saved: after the last step that is cooling down."""
        if state.global_step >= self._max_steps > 0:
            self.binding.cool_down("saving the final checkpoint")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Training is over: an owned run ends (done or cancelled)."""
        step, planned = int(state.global_step), self._max_steps
        stopped = bool(control.should_training_stop) and 0 < step < planned
        self.binding.finish(
            stopped_early=stopped,
            early_stopping=self._early_stopping_fired() if stopped else None,
            flag="control.should_training_stop",
            where=f"step {step} of {planned}",
        )

    def _early_stopping_fired(self) -> bool | None:
        trainer = self._trainer() if self._trainer is not None else None
        if trainer is None:
            return None
        for callback in getattr(trainer.callback_handler, "callbacks", ()):
            patience = getattr(callback, "early_stopping_patience", None)
            counter = getattr(callback, "early_stopping_patience_counter", None)
            if isinstance(patience, int) and isinstance(counter, int) and counter >= patience:
                return True
        return False
