"""Keras 3: a ``keras.callbacks.Callback`` that reports a ``model.fit`` run to PULSE.

This module owns :class:`PulseCallback` for Keras 3 (any backend)::

    model.fit(x, y, epochs=5, callbacks=[PulseCallback()])

Mapping (shared rules: :mod:`pulse_transports.integrations._common`):

=====================  ==========================================================
Keras event            PULSE
=====================  ==========================================================
``on_train_begin``     the run opens (``meta`` with ``world_size``, ``preparing``)
                       and is ``running``; ``total_epochs`` = ``epochs``,
                       ``total_steps`` = ``params["steps"]`` (batches per epoch)
``on_epoch_begin``     ``epoch`` = ``epoch + 1``, ``step`` = 0
``on_train_batch_end`` ``step`` = ``batch + 1`` (with ``steps_per_execution`` the
                       last batch of the execution); ``loss``;
                       ``samples_per_second``
``on_epoch_end``       ``time_per_epoch``; the epoch's metrics (``val_*`` too)
``on_train_end``       ``done``; ``cancelled`` if a cancel was requested, or if
                       ``model.stop_training`` ended training early and no
                       ``EarlyStopping`` callback stopped it (when that cannot
                       be told: ``done``)
exception in a step    ``error`` with its code (CUDA OOM -> ``CUDA_OOM``);
                       KeyboardInterrupt -> ``cancelled``
=====================  ==========================================================

Keras callbacks have no exception hook: the callback wraps the model's
``train_function`` for the length of ``fit`` (restored at the end or on the
failure), so an exception in a training step ends the run. Exceptions
elsewhere in ``fit`` (a data generator, another callback) end it through the
emitter's process-wide hook when uncaught, or through
``with PulseCallback() as cb: model.fit(..., callbacks=[cb])``.

A cancel requested on the run (``run.request_cancel()``) sets
``model.stop_training``. Keras does not tell a callback about the others: the
callback finds the fit's ``CallbackList`` (the caller of ``on_train_begin``)
to tell an ``EarlyStopping`` stop (``done``) from another one (``cancelled``);
if it cannot find it, any stop is ``done``.

Only global rank 0 reports (ranks from the environment, see
:func:`~pulse_transports.integrations.distributed.rank_info`).

The error message is the exception's own text without what Keras adds to it:
ANSI escape codes (bold) and the multi-line wrapper ``Exception encountered
when calling Layer ... Arguments received by ...`` (:func:`clean_message`);
the exception that propagates is untouched.

Imports ``keras`` (only this module).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from types import FrameType
from typing import Any, Final

import keras  # type: ignore[import-untyped, import-not-found, unused-ignore]

from pulse_transports.integrations._common import (
    Run,
    RunContext,
    numeric_items,
)

_NOT_METRICS: Final = frozenset({"loss"})
_ANSI: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_WRAPPED: Final = re.compile(
    r"^\s*Exception encountered when calling [^\n]*\n(?P<inner>.*?)"
    r"(?:\n\s*Arguments received by .*)?$",
    re.DOTALL,
)


def clean_message(text: str) -> str:
    """*text* without ANSI escape codes and Keras's layer-call wrapper, on one line."""
    text = _ANSI.sub("", text)
    match = _WRAPPED.match(text)
    if match is not None and match.group("inner").strip():
        text = match.group("inner")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


@contextmanager
def _cleaned(exc: BaseException) -> Iterator[None]:
    """While reporting *exc*, let its text be :func:`clean_message`'s (restored after)."""
    args = exc.args
    try:
        if len(args) == 1 and isinstance(args[0], str):
            cleaned = clean_message(args[0])
            if cleaned != args[0]:
                exc.args = (cleaned,)
    except Exception:  # noqa: BLE001, S110 - an exception that refuses new args: report as is
        pass
    try:
        yield
    finally:
        with suppress(Exception):  # an exception that refuses its args back: as is
            exc.args = args


#: How many frames up from ``on_train_begin`` the fit's CallbackList is looked for.
_FRAMES: Final = 8


def _batch_size(data: Any) -> int | None:
    """The leading dimension of a batch as Keras hands it to ``train_function``."""
    while isinstance(data, list | tuple) and data:
        data = data[0]
    shape = getattr(data, "shape", None)
    return int(shape[0]) if shape else None


class PulseCallback(RunContext, keras.callbacks.Callback):  # type: ignore[misc, unused-ignore]
    """Report a Keras ``model.fit`` run to PULSE.

    Takes the arguments of :class:`RunContext` (*run*, *name*, *all_ranks*,
    *run_options*) and *batch_size*: samples per batch, for
    ``samples_per_second`` (default: the first batch's size).
    """

    framework = "keras"
    _others: list[Any] | None = None
    _fit_model: Any = None
    _original: Any = None
    _epoch = 0
    _epochs: int | None = None
    _step = 0
    _steps: int | None = None
    _epoch_t0 = 0.0

    def __init__(
        self, run: Run | None = None, *, batch_size: int | None = None, **options: Any
    ) -> None:
        super().__init__(run, **options)
        self.batch_size = batch_size

    # -- the exception path --------------------------------------------------------

    def exited_with(self, exc: BaseException) -> None:
        """Report *exc* with its text cleaned (Keras' tracebacks in the message)."""
        with _cleaned(exc):
            super().exited_with(exc)

    def _wrap(self, model: Any) -> None:
        original = getattr(model, "train_function", None)
        if original is None or getattr(original, "_pulse_wrapped", False):
            return
        binding = self.binding

        def train_function(*args: Any, **kwargs: Any) -> Any:
            if self.batch_size is None and args:
                self.batch_size = _batch_size(args[0])
            try:
                return original(*args, **kwargs)
            except BaseException as exc:
                self._unwrap()
                with _cleaned(exc):
                    binding.fail(exc)
                raise

        train_function._pulse_wrapped = True  # type: ignore[attr-defined]
        self._fit_model, self._original = model, original
        model.train_function = train_function

    def _unwrap(self) -> None:
        model, original = self._fit_model, self._original
        if model is not None and original is not None:
            model.train_function = original
        self._fit_model = self._original = None

    def _find_others(self) -> list[Any] | None:
        frame: FrameType | None = sys._getframe(2)
        for _ in range(_FRAMES):
            if frame is None:
                return None
            members = getattr(frame.f_locals.get("self"), "callbacks", None)
            if isinstance(members, list) and any(cb is self for cb in members):
                return members
            frame = frame.f_back
        return None

    # -- the lifecycle -------------------------------------------------------------

    def on_train_begin(self, logs: Any = None) -> None:
        """``fit`` starts: open the run, report the totals, ``running``."""
        run = self.binding.open(broadcast=True)
        params = self.params or {}
        epochs = params.get("epochs")
        steps = params.get("steps")
        self._epochs = int(epochs) if isinstance(epochs, int) and epochs > 0 else None
        self._steps = int(steps) if isinstance(steps, int) and steps > 0 else None
        run.progress(total_epochs=self._epochs, total_steps=self._steps)
        self._wrap(self._model)
        self._others = self._find_others()
        self.binding.running("training started")

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        """A new epoch: report it with step 0."""
        self._epoch_t0 = time.monotonic()
        self._epoch = epoch + 1
        self._step = 0
        run = self.binding.run
        if run is not None:
            self.binding.flush()
            run.progress(epoch=self._epoch, step=0)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        """A batch is done: step, loss, throughput; honour a cancel request."""
        binding = self.binding
        if binding.run is None:
            return
        self._step = step = batch + 1
        size = self.batch_size
        if binding.step(step, logs.get("loss") if logs else None, size or 1.0):
            binding.rate_name = "samples_per_second" if size else "steps_per_second"
            if binding.cancel_requested and self._model is not None:
                self._model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        """An epoch ended: its duration and metrics (validation ones too)."""
        run = self.binding.run
        if run is None:
            return
        self.binding.flush()
        extra = numeric_items(logs or {}, _NOT_METRICS)
        elapsed = time.monotonic() - self._epoch_t0 if self._epoch_t0 else None
        loss = (logs or {}).get("loss")
        run.metrics(loss=loss, time_per_epoch=elapsed, **extra)
        self.binding.restart_rates()

    def on_train_end(self, logs: Any = None) -> None:
        """``fit`` returned: an owned run ends (done or cancelled)."""
        self._unwrap()
        model = self._model
        planned = self._epochs
        complete = (
            planned is not None
            and self._epoch >= planned
            and (self._steps is None or self._step >= self._steps)
        )
        stopped = bool(getattr(model, "stop_training", False)) and not complete
        fired: bool | None = None
        if stopped and self._others is not None:
            fired = any(
                isinstance(cb, keras.callbacks.EarlyStopping) and int(cb.stopped_epoch or 0) > 0
                for cb in self._others
            )
        self.binding.finish(
            stopped_early=stopped,
            early_stopping=fired,
            flag="model.stop_training",
            where=f"epoch {self._epoch} of {planned}",
        )
