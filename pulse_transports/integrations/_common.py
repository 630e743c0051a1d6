"""What every framework callback does with its run; shared by hf, lightning and keras.

This module owns the rules the callbacks have in common, so the three
frameworks map to PULSE the same way:

* **Opening**: the run given to the callback (*lent*: the callback never ends
  it on success, the owner's ``with`` does), else the current run
  (:func:`~pulse_transports.integrations.tracking.current_run`, also lent), else
  one the callback opens by rank (:func:`~pulse_transports.integrations.distributed.open_run`:
  only global rank 0 reports) and owns.
* **Progress**: ``epoch`` is the 1-based epoch in progress, ``step`` the steps
  done in it and ``total_steps`` the steps per epoch. When a framework knows
  only global steps (no epoch length, or a ``max_steps`` budget without
  epochs) the whole run is one step count: ``step`` = global step,
  ``total_steps`` = the step budget, no epochs.
* **Per-step cost**: a callback hands each step's values to
  :meth:`RunBinding.step`, which keeps them and reads the clock; only every
  :data:`STEP_INTERVAL` seconds are they forwarded to the run (with the
  throughput of :class:`Throughput` and a look at a cancel request), and
  before anything else is reported (an epoch change, validation metrics, a
  status, an error), so nothing reported is stale or out of order.
* **Ending**: a failure (an exception leaving training, or the framework's
  exception hook) ends the run through ``run.fail_with`` -- CUDA OOM becomes
  ``CUDA_OOM``, KeyboardInterrupt ``cancelled`` (see
  :func:`pulse_core.emitter.classify_exception`). Training that returns ends
  an owned run ``done``; ``cancelled`` if a cancel was requested on the run
  (the callbacks also turn a request into the framework's stop flag), or if
  the framework's stop flag ended training before its planned end and no
  early-stopping callback set it. Early stopping is a normal finish (``done``).
* **Context manager**: ``with PulseCallback() as cb: fit(..., callbacks=[cb])``
  reports any exception leaving the block, whatever the framework's hooks see.

Imports no framework.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from pulse_core._log import get_logger
from pulse_core.closing import ClosesOnExit
from pulse_core.emitter import TrainingRun
from pulse_core.events import TERMINAL_STATUSES
from pulse_transports.integrations.distributed import (
    Broadcast,
    PeerRun,
    RankInfo,
    agree_training_id,
    open_run,
    rank_info,
    resolve_broadcast,
)
from pulse_transports.integrations.tracking import current_run

log = get_logger("pulse.integrations")

Run = TrainingRun | PeerRun

#: Seconds over which throughput is averaged.
RATE_WINDOW: Final = 1.0
#: Seconds between two forwards of per-step values to the run. The run
#: rate-limits too; this spares the training loop two run calls per step.
STEP_INTERVAL: Final = 0.05


def numeric_items(values: Mapping[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The entries of *values* that are numbers (tensors kept as they are), minus *skip*."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key in skip or value is None or isinstance(value, bool | str):
            continue
        if isinstance(value, int | float) or hasattr(value, "__float__"):
            out[str(key)] = value
    return out


class Throughput:
    """Samples (or steps) per second over windows of at least :data:`RATE_WINDOW` seconds.

    :meth:`add` per step is one addition; :meth:`rate` is asked when the
    caller reads the clock anyway and gives a rate once a window is over.
    """

    __slots__ = ("_count", "_start", "window")

    def __init__(self, window: float = RATE_WINDOW) -> None:
        self.window = window
        self._count = 0.0
        self._start = time.monotonic()

    def reset(self, now: float | None = None) -> None:
        """Start a new window (after a pause such as validation)."""
        self._count = 0.0
        self._start = time.monotonic() if now is None else now

    def add(self, amount: float) -> None:
        """Count *amount* samples (or steps)."""
        self._count += amount

    def rate(self, now: float, partial: bool = False) -> float | None:
        """The rate over the window if it is over at *now* (a new one starts), else None.

        With *partial* a window cut short (an epoch's or the run's end) gives
        its rate too, if anything was counted.
        """
        elapsed = now - self._start
        if elapsed <= 0 or (elapsed < self.window and not (partial and self._count)):
            return None
        rate = self._count / elapsed
        self._count = 0.0
        self._start = now
        return rate


class RunBinding:
    """The run a callback reports to, and the lifecycle rules every callback shares.

    Args:
        run: a run to report to (lent: never ended here on success).
        framework: the framework's name, put in the run's labels.
        all_ranks: every rank reports its own run (default ``$PULSE_RANKS``).
        run_options: passed to the run the binding opens (``name``,
            ``sinks``, ``labels``, ...).
    """

    def __init__(
        self,
        run: Run | None,
        *,
        framework: str,
        all_ranks: bool | None = None,
        run_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.run: Run | None = run
        self.owned = False
        self._agreed = False  # this rank took part in the training_id broadcast
        self.framework = framework
        self.all_ranks = all_ranks
        self.run_options = dict(run_options or {})
        self.rates = Throughput()
        #: what the counted amounts are: ``samples_per_second`` or an extra
        #: metric name such as ``steps_per_second``.
        self.rate_name = "samples_per_second"
        self._step: Any = None
        self._loss: Any = None
        self._due = 0.0
        self._clock = time.monotonic

    # -- opening --------------------------------------------------------------------

    def open(
        self,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        broadcast: Broadcast | bool = True,
    ) -> Run:
        """The run to report to, opened (and owned) if there is none yet.

        In a job of several processes the first call (per fit) on every rank
        agrees on the training_id with one broadcast from rank 0, whichever
        run each rank ends up with -- so that no rank waits in a broadcast
        the others never make. An owned run that already ended (a second
        ``fit``/``train`` call) is replaced by a new one.
        """
        run = self.run
        if run is not None and self._agreed and not (self.owned and run.closed):
            return run
        found = rank_info()
        info = RankInfo(
            found.rank if rank is None else int(rank),
            found.world_size if world_size is None else max(int(world_size), 1),
            found.local_rank,
        )
        if run is not None and self.owned and run.closed:
            run = None
        if run is None and not self.owned:
            run = current_run()
        training_id = None
        if info.world_size > 1:
            offer = run.training_id if run is not None else None
            training_id = agree_training_id(info, resolve_broadcast(broadcast), offer=offer)
        self._agreed = True
        if run is not None:
            self.run = run  # lent: the user's run, or the current one
            return run
        options = dict(self.run_options)
        labels = {"framework": self.framework, **dict(options.pop("labels", None) or {})}
        if training_id is not None:
            options.setdefault("training_id", training_id)
        self.run = open_run(
            rank=info.rank,
            world_size=info.world_size,
            broadcast=False,
            all_ranks=self.all_ranks,
            labels=labels,
            **options,
        )
        self.owned = True
        return self.run

    # -- per-step values -----------------------------------------------------------------

    def step(self, step: Any, loss: Any = None, samples: float = 1.0) -> bool:
        """Hold this step's values; forward them if :data:`STEP_INTERVAL` has passed.

        Returns:
            True if the values were forwarded now.
        """
        self._step = step
        if loss is not None:
            self._loss = loss
        self.rates._count += samples  # Throughput.add, without a call per step
        now = self._clock()
        if now < self._due:
            return False
        self._due = now + STEP_INTERVAL
        self.flush(now)
        return True

    def flush(self, now: float | None = None, partial: bool = False) -> None:
        """Forward held step values (and a due throughput) to the run now.

        *partial*: the window ends here (epoch or run end): report its rate.
        """
        run = self.run
        if run is None:
            return
        if self._step is not None:
            run.progress(step=self._step)
            self._step = None
        if self._loss is not None:
            run.metrics(loss=self._loss)
            self._loss = None
        rate = self.rates.rate(self._clock() if now is None else now, partial)
        if rate is not None:
            if self.rate_name == "samples_per_second":
                run.metrics(samples_per_second=rate)
            else:
                run.metrics(**{self.rate_name: rate})

    def restart_rates(self) -> None:
        """Held values out, and a new throughput window (after a pause in training)."""
        self.flush(partial=True)
        self.rates.reset()

    @property
    def cancel_requested(self) -> bool:
        """True if a cancel was requested on the run (checked at forwards, not every step)."""
        run = self.run
        return run is not None and run.cancel_requested

    # -- lifecycle --------------------------------------------------------------------

    def running(self, message: str) -> None:
        """Move a run that has not started yet to ``running``."""
        run = self.run
        if run is not None and run.current_status in ("idle", "preparing"):
            run.status("running", message)
        self.rates.reset()

    def cool_down(self, message: str) -> None:
        """Move a running run to ``cooling_down`` (training steps are over)."""
        run = self.run
        if run is not None and run.current_status == "running":
            self.flush()
            run.status("cooling_down", message)

    def finish(
        self,
        *,
        stopped_early: bool = False,
        early_stopping: bool | None = None,
        flag: str = "the stop flag",
        where: str = "",
    ) -> None:
        """Training returned: end an owned run (done, or cancelled; see the module docs).

        Args:
            stopped_early: the framework's stop flag ended training before
                its planned end.
            early_stopping: an early-stopping callback set the flag (True),
                something else did (False), or it cannot be told (None: done).
            flag: how the framework calls its stop flag, for the message.
            where: where training stopped, e.g. ``"epoch 2 of 5"``.
        """
        self.flush(partial=True)
        run = self.run
        if run is None or not self.owned:
            return
        if run.current_status not in TERMINAL_STATUSES and not run.cancel_requested:
            at = f" at {where}" if where else ""
            if stopped_early and early_stopping is False:
                run.cancel(f"training stopped early{at}: {flag} was set")
            elif stopped_early:
                run.status("done", f"stopped early{at} (early stopping)")
        run.close()

    def fail(self, exc: BaseException) -> None:
        """Training raised *exc*: end the run (error, or cancelled for an interrupt)."""
        self.flush()
        run = self.run
        if run is None:
            return
        run.fail_with(exc)
        if self.owned:
            run.close()

    def close(self) -> None:
        """End an owned run that is still open (done if it ran, else cancelled)."""
        self.flush()
        if self.owned and self.run is not None:
            self.run.close()


class RunContext(ClosesOnExit):
    """Base of the framework callbacks: binds the run; in a ``with``, an exception ends it.

    Args:
        run: a run to report to (kept open at the end: its owner ends it);
            default the current run, else a run opened for this training.
        name: the run's name (when the callback opens it).
        all_ranks: every rank reports its own run (default ``$PULSE_RANKS``).
        run_options: more :class:`~pulse_core.emitter.TrainingRun` arguments
            for a run the callback opens (``sinks``, ``labels``, ...).
    """

    #: The framework's name, put in the run's labels.
    framework: ClassVar[str]
    binding: RunBinding

    def __init__(
        self,
        run: Run | None = None,
        *,
        name: str | None = None,
        all_ranks: bool | None = None,
        **run_options: Any,
    ) -> None:
        super().__init__()  # the framework's callback base, next in the MRO
        if name is not None:
            run_options["name"] = name
        self.binding = RunBinding(
            run, framework=self.framework, all_ranks=all_ranks, run_options=run_options
        )

    def exited_with(self, exc: BaseException) -> None:
        """Training raised *exc* inside the ``with`` block: the run ends by it."""
        self.binding.fail(exc)

    def close(self) -> None:
        """End an owned run that is still open (nothing after a failure ended it)."""
        self.binding.close()

    @property
    def run(self) -> Run | None:
        """The run this callback reports to (None before training started)."""
        return self.binding.run
