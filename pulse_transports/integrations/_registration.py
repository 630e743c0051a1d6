"""Rank registrations: how rank 0 tells a rank that died from one that finished.

Private to :mod:`pulse_transports.integrations.distributed` (which re-exports
:class:`PeerEnding`, :func:`peer_ending`, :func:`crash_code` and
:func:`registration_path`). While a :class:`~pulse_transports.integrations.distributed.PeerRun`
is open its rank is *registered* in ``rank-<N>.alive`` (a JSON line: rank, pid,
host, process start time), removed when the run closes or the process exits
normally; :mod:`faulthandler` appends to that file, from C and at once, a trace
for a SIGTERM and for a fatal signal. :func:`peer_ending` tells rank 0 how a
registered rank that is gone ended. Imports no framework.
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Final

import attrs
import orjson

from pulse_core._log import get_logger
from pulse_core.events import validate_training_id
from pulse_transports._logfile import log_dir
from pulse_transports._proctree import signal_name
from pulse_transports.homemode import make_dirs, open_file

log = get_logger("pulse.distributed")


def _int(value: object, default: int) -> int:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return default


def rank_dir(home: Path | str, training_id: str) -> Path:
    """The directory of one run's rank files (errors and registrations)."""
    return log_dir(Path(home)) / "ranks" / validate_training_id(training_id)


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
                    make_dirs(folder)
                    made.append(folder)  # removed again with the file, if left empty
            line = {
                "rank": int(rank),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "start": _start_time(os.getpid()),
                "timestamp": time.time(),
            }
            fd = open_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            file = os.fdopen(fd, "ab", buffering=0)  # held for faulthandler
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
        self._release_signals()
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()
        for folder in reversed(self._made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: other ranks' files stay
        _registrations.discard(self)

    def _release_signals(self) -> None:
        """Stop faulthandler writing to this registration's file."""
        for signum in self._signals:
            with contextlib.suppress(Exception):
                faulthandler.unregister(signum)
        if self._enabled:
            with contextlib.suppress(Exception):
                faulthandler.disable()

    def forget(self) -> None:
        """In a forked child: leave the parent's registration alone, and its signals to it."""
        self._release_signals()
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
    # A rank that registered again (a second run or loop in one process)
    # appended another registration line: only faulthandler's text is a trace.
    trace = "\n".join(
        line
        for line in rest.decode("utf-8", "replace").splitlines()
        if not line.startswith('{"rank":')
    )
    rank = _int(raw.get("rank"), -1)
    host = str(raw.get("host"))
    if status is not None:
        if os.WIFSIGNALED(status):
            name = signal_name(os.WTERMSIG(status))
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
