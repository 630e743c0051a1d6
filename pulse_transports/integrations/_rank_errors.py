"""Rank error files, rank registrations, and the silent run of ranks other than 0.

This private module of :mod:`pulse_transports.integrations.distributed` (which
re-exports its names) owns how a failing rank tells rank 0 about its failure:
one small JSON file per rank,
``<home>/logs/training/ranks/<training_id>/rank-<N>.json``, written
atomically before the process exits, and :class:`PeerRun`, the run object a
non-reporting rank gets.

It also owns how rank 0 learns of a rank that dies without a word (SIGKILL,
the out-of-memory killer, a segfault): while a :class:`PeerRun` is open its
rank is *registered* in ``rank-<N>.alive`` (a JSON line: rank, pid, host,
process start time), removed when the run closes or the process exits
normally. :mod:`faulthandler` appends to that file, from C and at once, a
trace for a SIGTERM (the launcher stopping the rank: not a crash) and for a
fatal signal (SIGSEGV, SIGABRT, ...). :func:`peer_ending` tells rank 0 how a
registered rank that is gone ended. Imports no framework.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import os
import secrets
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import attrs
import orjson

from pulse_core._log import get_logger
from pulse_core.emitter import classify_exception, register_abortable, unregister_abortable
from pulse_core.events import TERMINAL_STATUSES, is_error_code, validate_training_id

log = get_logger("pulse.distributed")

#: Most rank error files read per run (a job of thousands of failing ranks
#: reports the first ones).
MAX_PEER_ERRORS: Final = 32


def _int(value: object, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


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


def rank_dir(home: Path | str, training_id: str) -> Path:
    """The folder of one run's rank error files."""
    return Path(home) / "logs" / "training" / "ranks" / validate_training_id(training_id)


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
    path.parent.mkdir(parents=True, exist_ok=True)
    data = orjson.dumps(attrs.asdict(error), default=str)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
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


class PeerRun:
    """What a rank other than 0 reports to: nothing, except its own failure.

    It has the calls training code and the callbacks make on a
    :class:`~pulse_core.emitter.TrainingRun` (all cheap no-ops); a failure
    (:meth:`fail_with`, :meth:`error`, an exception leaving ``with``, an
    uncaught exception) writes this rank's error file for rank 0 to fold in.
    A KeyboardInterrupt or a clean ``SystemExit`` is not a failure: rank 0
    sees the same interrupt.

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

    def error(
        self,
        error_code: str,
        message: str,
        is_retryable: bool = False,
        details: Mapping[str, Any] | None = None,
        *,
        fatal: bool = True,
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

    @property
    def current_status(self) -> str:
        """This rank's view of the status (never reported)."""
        return self._status

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """Stop watching for uncaught exceptions on this rank; unregister it; idempotent."""
        self._closed = True
        unregister_abortable(self)
        if self._registration is not None:
            self._registration.remove()

    def __enter__(self) -> PeerRun:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc is not None:
                self.fail_with(exc)
        finally:
            self.close()


def _watch_peer(run: PeerRun) -> None:
    """Make an uncaught exception on this rank write the rank's error file.

    Registered with the emitter's one process-hook registry (one
    ``sys.excepthook`` for runs and peers alike).
    """
    register_abortable(run)


# -- rank registrations: how rank 0 tells a rank that died from one that finished ----------

#: faulthandler's first line for each fatal signal it reports.
_FATAL_SIGNALS: Final = {
    "Segmentation fault": "SIGSEGV",
    "Aborted": "SIGABRT",
    "Bus error": "SIGBUS",
    "Floating point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
}


def registration_path(home: Path | str, training_id: str, rank: int) -> Path:
    """The registration file of one rank of one run."""
    return rank_dir(home, training_id) / f"rank-{int(rank)}.alive"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


class Registration:
    """This rank's ``rank-<N>.alive`` file, kept while its :class:`PeerRun` is open.

    The file stays open for :mod:`faulthandler` to append a signal's trace to.
    Folders made for it are removed again with it when empty.
    """

    def __init__(self, path: Path, made: list[Path], file: Any) -> None:
        self.path = path
        self._made = made
        self._file = file
        self._signals: list[int] = []
        self._enabled = False
        self._lock = threading.Lock()
        self._removed = False

    @classmethod
    def create(cls, home: Path, training_id: str, rank: int) -> Registration | None:
        """Register *rank* of *training_id* under *home*; None (logged) if it cannot be written."""
        try:
            path = registration_path(home, training_id, rank)
            made: list[Path] = []
            for folder in reversed([path.parent, *path.parent.parents]):
                if folder.is_dir():
                    continue
                with contextlib.suppress(FileExistsError):
                    folder.mkdir()
                    made.append(folder)  # removed again with the file, if left empty
            line = {
                "rank": int(rank),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "start": _start_time(os.getpid()),
                "timestamp": time.time(),
            }
            file = open(path, "ab", buffering=0)  # noqa: SIM115 - held for faulthandler
            file.write(orjson.dumps(line) + b"\n")
        except (OSError, ValueError) as exc:
            log.warning(
                "pulse: could not register this rank; its death without an error "
                "will not be told apart from a normal end",
                rank=rank,
                error=f"{type(exc).__name__}: {exc}"[:300],
            )
            return None
        registration = cls(path, made, file)
        registration._watch_signals()
        _registrations.add(registration)
        if "multiprocessing" in sys.modules:
            # A rank started by multiprocessing with fork ends with os._exit
            # after its target returns: its finalizers run, atexit does not.
            import multiprocessing.util  # only if the program uses it

            multiprocessing.util.Finalize(registration, registration.remove, exitpriority=0)
        return registration

    def _watch_signals(self) -> None:
        # Written by faulthandler in C at the moment the signal arrives (a
        # Python handler would wait for the main thread, which may be stuck
        # in a collective); chained, so the signal still does what it did.
        register = getattr(faulthandler, "register", None)
        if register is not None and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                register(signal.SIGTERM, file=self._file, all_threads=False, chain=True)
                self._signals.append(signal.SIGTERM)
        if not faulthandler.is_enabled():
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                faulthandler.enable(file=self._file, all_threads=False)
                self._enabled = True

    def remove(self) -> None:
        """Unregister: the rank ended normally (idempotent)."""
        with self._lock:
            if self._removed:
                return
            self._removed = True
        for signum in self._signals:
            with contextlib.suppress(Exception):
                faulthandler.unregister(signum)
        if self._enabled:
            with contextlib.suppress(Exception):
                faulthandler.disable()
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: other ranks' files stay
        _registrations.discard(self)

    def forget(self) -> None:
        """In a forked child: leave the parent's registration alone, and its signals to it."""
        for signum in self._signals:
            with contextlib.suppress(Exception):
                faulthandler.unregister(signum)
        if self._enabled:
            with contextlib.suppress(Exception):
                faulthandler.disable()
        self._removed = True
        _registrations.discard(self)


_registrations: set[Registration] = set()


@atexit.register
def _unregister_all() -> None:
    """A process exiting normally ended its ranks normally."""
    for registration in list(_registrations):
        registration.remove()


def _forget_all() -> None:
    """A forked child (a DataLoader worker) is not the rank: its end is not the rank's."""
    for registration in list(_registrations):
        registration.forget()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_all)


@attrs.frozen
class PeerEnding:
    """How a registered rank whose process is gone ended (see :func:`peer_ending`).

    Attributes:
        rank, pid, host: the rank and its process.
        signal: the signal that killed it (``SIGKILL``, ``SIGSEGV``, ...), None
            for an exit with a status.
        exit_code: the exit status, when one was seen.
        inferred: True when no trace was left at all: SIGKILL (or an
            ``os._exit``) is the only way a registered rank ends like that.
        stopped: True when the rank was told to stop (SIGTERM): not a crash.
        trace: the fault trace the rank left, if any.
    """

    rank: int
    pid: int
    host: str
    signal: str | None
    exit_code: int | None = None
    inferred: bool = False
    stopped: bool = False
    trace: str = ""


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _gone(pid: int, start: int | None) -> tuple[bool, int | None]:
    """Whether *pid* (started at *start*) is gone, and its wait status if still readable."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True, None
    except OSError:
        pass  # not ours to signal: the start time below tells whether it is the rank
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False, None
    fields = text[text.rindex(")") + 2 :].split()
    if start is not None and len(fields) > 19 and fields[19] != str(start):
        return True, None  # the pid now belongs to another process
    if fields and fields[0] in ("Z", "X"):  # a zombie: dead, its status still there
        try:
            return True, int(fields[49])
        except (IndexError, ValueError):
            return True, None
    return False, None


def peer_ending(path: Path) -> PeerEnding | None:
    """How the rank registered in *path* ended, if its process is gone (else None).

    Only ranks on this host can be looked at; a registration removed in the
    meantime (a normal end) gives None too.
    """
    try:
        first, _, rest = path.read_bytes().partition(b"\n")
        raw = orjson.loads(first)
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(raw, dict) or raw.get("host") != socket.gethostname():
        return None
    pid = _int(raw.get("pid"), 0)
    start = raw.get("start")
    if pid <= 0 or pid == os.getpid():
        return None
    gone, status = _gone(pid, start if isinstance(start, int) else None)
    if not gone:
        return None
    try:
        # Read again now that the process is gone: a normal end removed the
        # file, and whatever the rank wrote before dying is in it.
        rest = path.read_bytes().partition(b"\n")[2]
    except FileNotFoundError:
        return None
    except OSError:
        pass
    trace = rest.decode("utf-8", "replace")
    rank = _int(raw.get("rank"), -1)
    host = str(raw.get("host"))
    if status is not None:
        if os.WIFSIGNALED(status):
            name = _signal_name(os.WTERMSIG(status))
            return PeerEnding(
                rank, pid, host, name, -os.WTERMSIG(status), stopped=name == "SIGTERM"
            )
        return PeerEnding(rank, pid, host, None, os.WEXITSTATUS(status), trace=trace[-4000:])
    for text, name in _FATAL_SIGNALS.items():
        if f"Fatal Python error: {text}" in trace:
            return PeerEnding(rank, pid, host, name, trace=trace[-4000:])
    if trace.strip():
        return PeerEnding(rank, pid, host, "SIGTERM", stopped=True, trace=trace[-4000:])
    return PeerEnding(rank, pid, host, "SIGKILL", inferred=True)


def crash_code(ending: PeerEnding) -> tuple[str, bool, str]:
    """``(error_code, is_retryable, message)`` for a rank that died, by the supervisor's rule.

    The rule restated from :mod:`pulse_transports.supervise` (a process that
    ends without reporting): killed by a signal -> ``PROCESS_CRASHED``,
    retryable only for SIGKILL; exit status 0 ->
    ``PROCESS_EXITED_WITHOUT_RESULT``; another status -> ``PROCESS_CRASHED``.
    """
    who = f"rank {ending.rank}"
    if ending.signal is not None:
        message = f"{who} was killed by {ending.signal}"
        if ending.inferred:
            message += " (its process vanished without an error, exit or signal trace)"
        return "PROCESS_CRASHED", ending.signal == "SIGKILL", message
    if ending.exit_code == 0:
        return (
            "PROCESS_EXITED_WITHOUT_RESULT",
            False,
            f"{who} exited with status 0 while the run was going on",
        )
    return "PROCESS_CRASHED", False, f"{who} exited with status {ending.exit_code}"
