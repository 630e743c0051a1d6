"""Rank error files, rank registrations, and the silent run of ranks other than 0.

This private module of :mod:`pulse_transports.integrations.distributed` (which
re-exports its names) owns how a failing rank tells rank 0 about its failure:
one small JSON file per rank,
``<home>/logs/training/ranks/<training_id>/rank-<N>.json``, written
atomically before the process exits, and :class:`PeerRun`, the run object a
non-reporting rank gets.

While a :class:`PeerRun` is open its rank is registered (``rank-<N>.alive``,
:mod:`pulse_transports.integrations._registration`), so rank 0 learns of a
rank that dies without a word (SIGKILL, the out-of-memory killer, a
segfault). Imports no framework.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs
import orjson

from pulse_core._log import get_logger
from pulse_core.closing import EndsOnExit
from pulse_core.emitter import classify_exception, register_abortable, unregister_abortable
from pulse_core.events import TERMINAL_STATUSES, is_error_code
from pulse_transports._logfile import replace, write_file
from pulse_transports.homemode import make_dirs
from pulse_transports.integrations._registration import Registration, _int, rank_dir

log = get_logger("pulse.distributed")

#: Most rank error files read per run (a job of thousands of failing ranks
#: reports the first ones).
MAX_PEER_ERRORS: Final = 32


# -- rank error files -----------------------------------------------------------------


@attrs.frozen
class RankError:
    """One rank's failure, as written to its rank error file."""

    rank: int
    error_code: str
    message: str
    is_retryable: bool = False
    details: Mapping[str, Any] = attrs.field(factory=dict)
    host: str = ""
    pid: int = 0
    timestamp: float = 0.0
    world_size: int | None = None


def rank_error_path(home: Path | str, training_id: str, rank: int) -> Path:
    """The error file of one rank of one run."""
    return rank_dir(home, training_id) / f"rank-{int(rank)}.json"


def write_rank_error(home: Path | str, training_id: str, error: RankError) -> Path:
    """Write *error* as the rank's error file, atomically (temp file, fsync, rename).

    Returns:
        The file written.

    Raises:
        OSError: if the folder or file cannot be written.
    """
    path = rank_error_path(home, training_id, error.rank)
    make_dirs(path.parent)
    data = orjson.dumps(attrs.asdict(error), default=str)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_file(tmp, data)
    replace(tmp, path)
    return path


def _parse(data: bytes) -> RankError | None:
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(raw, dict):
        return None
    code = str(raw.get("error_code", ""))
    details = raw.get("details")
    world = raw.get("world_size")
    return RankError(
        rank=_int(raw.get("rank"), -1),
        error_code=code if is_error_code(code) else "UNHANDLED_EXCEPTION",
        message=str(raw.get("message", ""))[:1000],
        is_retryable=bool(raw.get("is_retryable", False)),
        details=details if isinstance(details, dict) else {},
        host=str(raw.get("host", "")),
        pid=_int(raw.get("pid"), 0),
        timestamp=float(raw.get("timestamp") or 0.0),
        world_size=world if isinstance(world, int) else None,
    )


def read_rank_errors(home: Path | str, training_id: str) -> list[RankError]:
    """The rank error files of a run, oldest first (unreadable files are skipped)."""
    folder = rank_dir(home, training_id)
    found: list[RankError] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if not (entry.name.startswith("rank-") and entry.name.endswith(".json")):
                continue
            try:
                error = _parse(Path(entry.path).read_bytes())
            except OSError:
                continue
            if error is not None:
                found.append(error)
            if len(found) >= MAX_PEER_ERRORS:
                break
    return sorted(found, key=lambda e: (e.timestamp, e.rank))


def describe_exception(exc: BaseException) -> tuple[str, bool, str, dict[str, Any]]:
    """``(error_code, retryable, message, details)`` for an exception, as the emitter reports it."""
    code, retryable = classify_exception(exc)
    kind = f"{type(exc).__module__}.{type(exc).__qualname__}"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    details = {
        "exception_type": kind,
        "trace_id": secrets.token_hex(8),
        "traceback": text[-4000:],
    }
    return code, retryable, f"{type(exc).__name__}: {exc}"[:500], details


# -- the two kinds of run ----------------------------------------------------------------


class PeerRun(EndsOnExit):
    """What a rank other than 0 reports to: nothing, except its own failure.

    It has the calls training code and the callbacks make on a
    :class:`~pulse_core.emitter.TrainingRun` (all cheap no-ops); a failure
    (:meth:`fail_with`, :meth:`error`, an exception leaving ``with``, an
    uncaught exception) writes this rank's error file for rank 0 to fold in.
    A KeyboardInterrupt or a clean ``SystemExit`` is not a failure: rank 0
    sees the same interrupt. Its ``current_status`` is this rank's view of
    the run (never reported).

    Args:
        training_id: the run's id as rank 0 reports it (None: failures are
            only logged).
        rank, world_size: this process's place in the job.
        home: the PULSE home whose ``logs/training/ranks`` folder rank 0 watches.
    """

    def __init__(
        self,
        training_id: str | None,
        *,
        rank: int,
        world_size: int,
        home: Path | str | None,
    ) -> None:
        self.training_id = training_id
        self.rank = rank
        self.world_size = world_size
        self.home = Path(home) if home is not None else None
        self._status = "running"
        self._closed = False
        self._cancel_reason: str | None = None
        self._registration: Registration | None = None
        if training_id is not None and self.home is not None:
            self._registration = Registration.create(self.home, training_id, rank)
        _watch_peer(self)

    # -- the hot path: nothing to do ------------------------------------------------

    def progress(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing: rank 0 reports progress."""

    def metrics(self, *args: Any, **kwargs: Any) -> None:
        """Do nothing: rank 0 reports metrics."""

    def heartbeat(self) -> None:
        """Do nothing: rank 0's run beats."""

    def status(self, state: str, message: str = "") -> None:
        """Remember the status locally (nothing is reported)."""
        if self._status not in TERMINAL_STATUSES:
            self._status = str(state)

    # -- failures -----------------------------------------------------------------

    def _report_error(
        self, error_code: str, message: str, is_retryable: bool, details: Any, fatal: bool
    ) -> None:
        """Write this rank's error file for rank 0 (a fatal one ends this rank's reporting)."""
        if self._status in TERMINAL_STATUSES:
            return
        self._write(error_code, message, is_retryable, dict(details or {}))
        if fatal:
            self._status = "error"

    def fail_with(self, exc: BaseException) -> None:
        """Record *exc* as this rank's failure (an interrupt or clean exit is not one)."""
        if self._status in TERMINAL_STATUSES:
            return
        if isinstance(exc, KeyboardInterrupt) or (
            isinstance(exc, SystemExit) and exc.code in (None, 0)
        ):
            self._status = "cancelled"
            return
        if isinstance(exc, SystemExit):
            self.error(
                "PROCESS_EXITED_WITHOUT_RESULT",
                f"the process exited with status {exc.code!r} before the run finished",
            )
            return
        code, retryable, message, details = describe_exception(exc)
        log.error(
            "pulse: this rank failed; reporting it to rank 0",
            rank=self.rank,
            training_id=self.training_id,
            error_code=code,
            trace_id=details["trace_id"],
            traceback=details["traceback"],
        )
        self.error(code, message, retryable, details)

    def _write(self, code: str, message: str, retryable: bool, details: dict[str, Any]) -> None:
        if self.training_id is None or self.home is None:
            log.warning(
                "pulse: a rank failed but does not know the run's training_id; "
                "set PULSE_TRAINING_ID for every rank to forward failures",
                rank=self.rank,
                error_code=code,
            )
            return
        error = RankError(
            rank=self.rank,
            error_code=code if is_error_code(code) else "UNHANDLED_EXCEPTION",
            message=str(message)[:1000],
            is_retryable=bool(retryable),
            details=details,
            host=socket.gethostname(),
            pid=os.getpid(),
            timestamp=time.time(),
            world_size=self.world_size,
        )
        try:
            write_rank_error(self.home, self.training_id, error)
        except OSError as exc:
            log.warning(
                "pulse: could not write this rank's error file",
                rank=self.rank,
                training_id=self.training_id,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )

    # -- ending ---------------------------------------------------------------------

    def cancel(self, message: str = "") -> None:
        """Mark this rank's view of the run cancelled (nothing is reported)."""
        self.status("cancelled", message)

    def request_cancel(self, message: str = "cancelled") -> None:
        """Remember a cancel request (training code may check :attr:`cancel_requested`)."""
        self._cancel_reason = message or "cancelled"

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel was requested on this rank."""
        return self._cancel_reason is not None

    def close(self) -> None:
        """Stop watching for uncaught exceptions on this rank; unregister it; idempotent."""
        self._closed = True
        unregister_abortable(self)
        if self._registration is not None:
            self._registration.remove()


def _watch_peer(run: PeerRun) -> None:
    """Make an uncaught exception on this rank write the rank's error file.

    Registered with the emitter's one process-hook registry (one
    ``sys.excepthook`` for runs and peers alike).
    """
    register_abortable(run)
