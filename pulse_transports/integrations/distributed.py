"""Distributed jobs: which process reports a run, and how other ranks' failures reach it.

This module owns the rank rules of the integrations (torchrun, DDP,
Accelerate, Lightning strategies, mp.spawn, SLURM/MPI launchers):

* **One writer.** Exactly one process reports a run: global rank 0. It gets a
  :class:`MainRun` (a :class:`~pulse_core.emitter.TrainingRun` whose metadata
  carries ``world_size``). Other ranks get a :class:`PeerRun`: silent, it
  reports nothing -- unless configured (``all_ranks=True`` or
  ``PULSE_RANKS=all``), when each rank reports its own run
  ``<training_id>.rank<N>``.
* **One training_id.** Every rank must know the run's id to forward a failure
  to it: ``PULSE_TRAINING_ID`` when set (``pulse run`` and the Flow Manager
  set it; launchers pass the environment to every worker); otherwise rank 0
  makes a new id and sends it to the others with a broadcast (Lightning's
  ``strategy.broadcast``, or ``torch.distributed.broadcast_object_list`` once
  a process group is up). With neither, other ranks stay silent and cannot
  forward failures (logged once).
* **Failures of other ranks reach the run** (the file lock lets only rank 0
  write the log, and a second writer could not pick seq numbers anyway):
  a failing rank writes one small JSON *rank error file*,
  ``<home>/logs/training/ranks/<training_id>/rank-<N>.json``, atomically and
  before its process exits. Rank 0's :class:`MainRun` folds them in: a
  watcher thread checks the folder every ``poll`` seconds (a ``stat`` while
  nothing changes) and reports the first failure as the run's error --
  the rank's own code (``CUDA_OOM``, ...) with ``rank``, ``host`` and ``pid``
  in the details -- which ends the run ``error``. Before rank 0 records an
  ending of its own (its exception, often a follow-on "connection closed by
  peer"; a cancel by the launcher's SIGTERM; a normal close) it checks the
  folder once more, waiting up to ``PEER_WAIT`` seconds on a failure, so the
  root cause wins. A reader can fold the same files in for a rank 0 killed
  outright (:func:`read_rank_errors`).
* **A rank that dies without a word** (SIGKILL, a segfault) writes no error
  file. While its :class:`PeerRun` is open a rank is registered
  (``rank-<N>.alive``, see ``_rank_errors``); the watcher checks the
  registered ranks of its host at every look (``os.kill(pid, 0)``, the
  start time against pid reuse), and a rank gone without an error file
  ends the run ``PROCESS_CRASHED`` "rank 1 was killed by SIGKILL" -- by the
  supervisor's rule (:mod:`pulse_transports.supervise`, restated in
  :func:`crash_code`), retryable only for SIGKILL. A rank the launcher
  stopped with SIGTERM is not a crash. So torchrun's SIGTERM to rank 0
  after a peer was killed no longer ends the run "cancelled by SIGTERM".

The rank files are not ``*.jsonl`` and live in a subfolder, so log readers
never take them for run logs; they and :class:`PeerRun` are written by the
private ``_rank_errors`` module and re-exported here. This module imports no
framework: torch is used only if the training script already imported it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from pulse_core._log import get_logger
from pulse_core.emitter import ENV_TRAINING_ID, TrainingRun, new_training_id
from pulse_core.events import TERMINAL_STATUSES
from pulse_transports.integrations._rank_errors import (
    MAX_PEER_ERRORS,
    PeerRun,
    RankError,
    describe_exception,
    rank_error_path,
    read_rank_errors,
    write_rank_error,
)
from pulse_transports.integrations._rank_watch import POLL, RankErrorWatcher
from pulse_transports.integrations._registration import (
    PeerEnding,
    _int,
    crash_code,
    peer_ending,
    rank_dir,
    registration_path,
)

log = get_logger("pulse.distributed")

__all__ = [
    "ENV_RANKS",
    "MAX_PEER_ERRORS",
    "PEER_WAIT",
    "POLL",
    "Broadcast",
    "MainRun",
    "PeerEnding",
    "PeerRun",
    "RankError",
    "RankErrorWatcher",
    "RankInfo",
    "agree_training_id",
    "crash_code",
    "describe_exception",
    "open_run",
    "peer_ending",
    "rank_dir",
    "rank_error_path",
    "rank_info",
    "read_rank_errors",
    "registration_path",
    "report_all_ranks",
    "resolve_broadcast",
    "torch_broadcast",
    "write_rank_error",
]

#: ``0`` (default): only global rank 0 reports; ``all``: every rank reports
#: its own run ``<training_id>.rank<N>``.
ENV_RANKS: Final = "PULSE_RANKS"
#: Seconds rank 0 waits for another rank's error file before recording a
#: failure of its own (a peer's death often surfaces on rank 0 as a
#: communication error first).
PEER_WAIT: Final = 1.0

# Environment variables that name a process's rank, in order of trust.
_RANK_VARS: Final = (
    ("RANK", "WORLD_SIZE"),  # torchrun, torch.distributed env://, Accelerate
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),  # Open MPI
    ("PMI_RANK", "PMI_SIZE"),  # MPICH, Intel MPI
    ("SLURM_PROCID", "SLURM_NTASKS"),  # srun
)


@attrs.frozen
class RankInfo:
    """Where this process stands in a distributed job.

    Attributes:
        rank: the global rank (0 in a single-process job).
        world_size: how many processes the job has (1 in a single-process job).
        local_rank: the rank on this host.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """True for the process that reports the run (global rank 0)."""
        return self.rank == 0


def _torch_dist() -> Any:
    """``torch.distributed`` if the program already imported it and a group is up."""
    if "torch.distributed" not in sys.modules:
        return None  # never import torch for this: the script would have
    dist = sys.modules["torch.distributed"]
    try:
        if dist.is_available() and dist.is_initialized():
            return dist
    except Exception:  # noqa: BLE001 - a half-initialised torch must not break reporting
        return None
    return None


def rank_info(env: Mapping[str, str] | None = None) -> RankInfo:
    """Find this process's rank and the job's world size.

    An initialised ``torch.distributed`` process group wins; then the
    variables launchers set: ``RANK``/``WORLD_SIZE`` (torchrun, Accelerate),
    Open MPI, MPICH/Intel MPI, SLURM; then Lightning's ``NODE_RANK`` +
    ``LOCAL_RANK`` (any process on another node than 0, or with a non-zero
    local rank, is not rank 0). Nothing set: a single-process job.

    Args:
        env: the environment to read (default ``os.environ``).
    """
    environ = os.environ if env is None else env
    local = _int(environ.get("LOCAL_RANK", 0), 0)
    dist = _torch_dist() if env is None else None
    if dist is not None:
        return RankInfo(dist.get_rank(), dist.get_world_size(), local)
    for rank_var, size_var in _RANK_VARS:
        if environ.get(rank_var, "").strip():
            world = max(_int(environ.get(size_var, 1), 1), 1)
            return RankInfo(max(_int(environ[rank_var], 0), 0), world, local)
    if environ.get("LOCAL_RANK", "").strip():
        node = _int(environ.get("NODE_RANK") or environ.get("GROUP_RANK") or 0, 0)
        world = max(_int(environ.get("WORLD_SIZE", 1), 1), 1)
        per_node = _int(environ.get("LOCAL_WORLD_SIZE", 0), 0) or 1
        return RankInfo(node * per_node + local, world, local)
    return RankInfo()


def report_all_ranks(env: Mapping[str, str] | None = None) -> bool:
    """True if ``PULSE_RANKS=all`` asks every rank to report its own run."""
    environ = os.environ if env is None else env
    return environ.get(ENV_RANKS, "").strip().lower() == "all"


# -- agreeing on the training_id ----------------------------------------------------------

Broadcast = Callable[[str], str]


def torch_broadcast() -> Broadcast | None:
    """A broadcast from rank 0 over the running ``torch.distributed`` group, if any."""
    dist = _torch_dist()
    if dist is None or dist.get_world_size() <= 1:
        return None

    def broadcast(value: str) -> str:
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return str(box[0])

    return broadcast


def agree_training_id(
    info: RankInfo,
    broadcast: Broadcast | None = None,
    env: Mapping[str, str] | None = None,
    offer: str | None = None,
) -> str | None:
    """The run's training_id as every rank sees it (None if it cannot be known here).

    ``PULSE_TRAINING_ID`` if set. Otherwise, in a job of several processes,
    rank 0 sends *offer* (the id of a run it already has) or a new id to the
    others with *broadcast* -- a collective call: every rank must call this
    at the same point. Without a broadcast rank 0 still gets an id and other
    ranks None.
    """
    environ = os.environ if env is None else env
    given = environ.get(ENV_TRAINING_ID, "").strip()
    if given:
        return given
    mine = (offer or new_training_id()) if info.is_main else ""
    if info.world_size > 1 and broadcast is not None:
        try:
            mine = broadcast(mine)
        except Exception as exc:  # noqa: BLE001 - reporting must not break training start
            log.warning(
                "pulse: could not share the training_id between ranks; other ranks "
                "will not forward their failures",
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
    return mine or None


def resolve_broadcast(broadcast: Broadcast | bool | None) -> Broadcast | None:
    """A broadcast function: the one given, ``torch.distributed``'s for True, None for False."""
    if broadcast is True:
        return torch_broadcast()
    if broadcast is False or broadcast is None:
        return None
    return broadcast


class MainRun(TrainingRun):
    """Rank 0's run in a distributed job: a TrainingRun that folds in other ranks' failures.

    Takes every :class:`~pulse_core.emitter.TrainingRun` argument, plus:

    Args:
        ranks_home: the PULSE home whose ``logs/training/ranks/<id>`` folder
            other ranks write their error files to (None: not watched).
        poll: seconds between two looks at that folder.
        peer_wait: seconds to wait for another rank's error file before
            recording a failure of rank 0's own.
    """

    def __init__(
        self,
        *args: Any,
        ranks_home: Path | str | None = None,
        poll: float = POLL,
        peer_wait: float = PEER_WAIT,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.peer_wait = peer_wait
        self.peers: RankErrorWatcher | None = None
        if ranks_home is not None:
            self.peers = RankErrorWatcher(self, Path(ranks_home), poll=poll)
            self.peers.start()

    def fail_with(self, exc: BaseException) -> None:
        """End the run because of *exc* -- unless another rank's failure came first."""
        if self.peers is not None and self.current_status not in TERMINAL_STATUSES:
            self.peers.check(wait=self.peer_wait)
        super().fail_with(exc)

    def close(self) -> None:
        """Fold in failures of other ranks one last time, then finish as TrainingRun does."""
        if self.peers is not None:
            if self.current_status not in TERMINAL_STATUSES and not self.closed:
                self.peers.check(wait=self.peer_wait if self.cancel_requested else 0.0)
            self.peers.stop()
        super().close()


def _home(env: Mapping[str, str] | None) -> Path | None:
    from pulse_transports.config import load_config

    try:
        return load_config(env=env).home
    except Exception as exc:  # noqa: BLE001 - a bad config must surface in TrainingRun, not here
        log.warning("pulse: no home for rank error files", error=f"{type(exc).__name__}: {exc}")
        return None


def open_run(
    *,
    rank: int | None = None,
    world_size: int | None = None,
    broadcast: Broadcast | bool | None = True,
    all_ranks: bool | None = None,
    home: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    **run_options: Any,
) -> TrainingRun | PeerRun:
    """Open the run this process reports to, by its rank.

    Rank 0 (and a single-process job) gets a :class:`MainRun` with the
    job's world size in its metadata; other ranks a silent :class:`PeerRun`
    (or, with *all_ranks*, a run of their own named ``<id>.rank<N>``).

    Args:
        rank, world_size: this process's global rank and the job's size
            (default: :func:`rank_info`).
        broadcast: how rank 0 sends a new training_id to the others: a
            function, True for ``torch.distributed`` when a group is up (a
            collective: call :func:`open_run` on every rank then), False for none.
        all_ranks: every rank reports its own run (default ``$PULSE_RANKS == "all"``).
        home: where rank error files go (default: the configured home).
        env: the environment (default ``os.environ``).
        run_options: passed on to :class:`~pulse_core.emitter.TrainingRun`
            (``name``, ``sinks``, ``total_epochs``, ...).

    Raises:
        RunLocked, ConfigError: as :class:`~pulse_core.emitter.TrainingRun`.
    """
    found = rank_info(env)
    info = RankInfo(
        found.rank if rank is None else int(rank),
        found.world_size if world_size is None else max(int(world_size), 1),
        found.local_rank,
    )
    if info.world_size <= 1:
        run_options.setdefault("world_size", None)
        if env is not None:
            run_options.setdefault("env", env)
        return TrainingRun(**run_options)
    given_id = run_options.pop("training_id", None)
    training_id = given_id or agree_training_id(info, resolve_broadcast(broadcast), env)
    where = Path(home) if home is not None else _home(env)
    if all_ranks is None:
        all_ranks = report_all_ranks(env)
    if env is not None:
        run_options.setdefault("env", env)
    run_options["world_size"] = info.world_size
    if info.is_main:
        environ = os.environ if env is None else env
        if "handle_signals" not in run_options and not environ.get("PULSE_HANDLE_SIGNALS"):
            # The launcher stops the surviving ranks with SIGTERM when one
            # fails: handled, rank 0 still folds in that rank's error.
            run_options["handle_signals"] = True
        return MainRun(training_id, ranks_home=where, **run_options)
    if all_ranks:
        labels = {**dict(run_options.pop("labels", None) or {}), "rank": str(info.rank)}
        own_id = f"{training_id}.rank{info.rank}" if training_id else None
        return TrainingRun(own_id, labels=labels, **run_options)
    return PeerRun(training_id, rank=info.rank, world_size=info.world_size, home=where)
