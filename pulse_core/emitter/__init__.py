"""The emitter: what training code calls to report a run.

This package owns :class:`TrainingRun`. Its promises:

* **Cheap**: ``progress()`` and ``metrics()`` store raw values and compare a
  clock reading with a deadline; events are built only when something is
  forwarded (a few tenths of a microsecond for a coalesced call).
* **Never harms training**: no sink failure raises into the caller. Failing
  sinks are buffered within a bounded budget, retried with backoff, counted,
  logged (one short line on stderr, :mod:`pulse_core._log`), and what
  had to be dropped is reported as a
  ``dropped`` event once the sink recovers.
* **Ordered**: status changes and errors are never dropped or delayed by the
  rate limiter, and pending progress/metrics are flushed before them.
* **Honest**: a run never ends ``done`` because of an exception; an
  exception leaving ``with``, an uncaught exception (excepthook), an opted-in
  SIGTERM/SIGINT and an interpreter exit with the run open (atexit) each end
  it as error or cancelled.

Threads: the training thread writes the raw values without a lock (each kind
as one tuple, so a reader never sees half an update) and sets a dirty flag.
Building events and numbering them happens under the run's lock, held only
for that (on the training thread when a sink is due and the lock is free --
it never waits -- or on the run's writer thread). Built events are handed
to each sink's bounded outbox (:mod:`pulse_core.emitter._route`) and the run's one
writer thread does ALL sink I/O -- file writes, fsyncs, compaction, the v1
snapshot, retries -- without holding the run's lock, so the training thread
never waits on a disk. ``status()`` and ``error()`` return once the event is
handed over; ``close()`` hands over the end, then waits for the writer at most
``close_timeout`` seconds (default 5, ``PULSE_CLOSE_TIMEOUT``) and gives up
with one warning rather than hang. The trade-off: a process that dies right
after ``status()`` (``os._exit``, SIGKILL) may lose that line; liveness still
tells the truth, since a dead writer stops its heartbeats and the run reads
``lost``. With ``background=False`` (tests) there is no writer thread and
every call writes inline, synchronously. Call the hot path from one thread
at a time.

Status floods stay bounded: restating the current state with a new note and
non-fatal errors share a token bucket -- a burst of ``FLOOD_BURST``, then one
per the slowest sink's interval (the latest held note wins and goes out when
a token is back); errors held back are counted and the one that goes out
carries ``details["count"]``, the errors it stands for. Lifecycle
transitions and fatal errors are never held back.

Fork: a child process forked with a run open gets an inert copy (every call
a no-op; it never writes to, closes or unlocks the parent's sinks); a thread
that opened a run and dies of an uncaught exception ends that run ``error``
(see :mod:`pulse_core.emitter._hooks`).

The default sinks come from configuration through the ``pulse.config`` entry
point (installed by ``pulse_transports``), so this module never imports the
transports package.

This package's ``__init__`` is the emitter's public face; its private modules:
``_run`` (:class:`TrainingRun`: the initialiser and the hot path),
``_lifecycle`` (status, errors, cancel, the honest end), ``_writer`` (event
building, seq order, the writer thread), ``_route`` (one sink's throttle
and failure buffer), ``_hooks`` (the one registry of process hooks:
excepthook, threading.excepthook, atexit, signals, fork; the registry of
open runs behind :func:`open_runs`), ``_settings`` (the ``PULSE_*`` names,
settings from the environment and the ``pulse.config`` entry points),
``_ids`` (training ids, exception classification) and ``_value`` (turning
given values into event fields). The emitter is the one impure part of
:mod:`pulse_core`; the rest is pure (import-linter contracts in
``pyproject.toml``).
"""

from __future__ import annotations

from pulse_core.emitter import _hooks
from pulse_core.emitter._hooks import Abortable, register_abortable, unregister_abortable
from pulse_core.emitter._ids import classify_exception, new_training_id
from pulse_core.emitter._run import TrainingRun
from pulse_core.emitter._settings import (
    ENV_ATTEMPT,
    ENV_CLOSE_TIMEOUT,
    ENV_FLOW_ID,
    ENV_FLOW_RUN_ID,
    ENV_FLOW_STEP_ID,
    ENV_HANDLE_SIGNALS,
    ENV_HEARTBEAT_INTERVAL,
    ENV_RUN_NAME,
    ENV_STRICT,
    ENV_SUPERVISED,
    ENV_TOTAL_EPOCHS,
    ENV_TRAINING_ID,
)


def open_runs() -> list[TrainingRun]:
    """The runs of this process that are open (created and not yet closed)."""
    return [run for run in _hooks.open_runs() if isinstance(run, TrainingRun)]


__all__ = [
    "ENV_ATTEMPT",
    "ENV_CLOSE_TIMEOUT",
    "ENV_FLOW_ID",
    "ENV_FLOW_RUN_ID",
    "ENV_FLOW_STEP_ID",
    "ENV_HANDLE_SIGNALS",
    "ENV_HEARTBEAT_INTERVAL",
    "ENV_RUN_NAME",
    "ENV_STRICT",
    "ENV_SUPERVISED",
    "ENV_TOTAL_EPOCHS",
    "ENV_TRAINING_ID",
    "Abortable",
    "TrainingRun",
    "classify_exception",
    "new_training_id",
    "open_runs",
    "register_abortable",
    "unregister_abortable",
]
