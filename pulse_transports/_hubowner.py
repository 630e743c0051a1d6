"""Who may report a run to the hub: its writer, not any process that can connect.

Private to :mod:`pulse_transports.hub`. This module owns the hub's run
ownership rules, from facts the hub can check itself:

* the run's lock file (:func:`pulse_transports.file.writer_alive`, and the
  holder's pid and host written in it): while a live process on this host
  holds it, only that process -- or one of its ancestors or descendants (a
  supervisor and its training child) -- may report the run over the Unix
  socket, whose peer's pid the kernel tells (``SO_PEERCRED``);
  a TCP peer (whose pid is not known) may not take the run from a connected
  writer either;
* otherwise (no lock: a socket-only producer; a TCP peer), the same process
  reconnecting gets in at once, and another connection is refused until the
  one reporting the run has been silent for :data:`TAKEOVER_QUIET` seconds --
  so a genuine writer whose old connection the hub has not seen close waits
  at most that;
* a seq far beyond what the hub holds for the run (:data:`MAX_SEQ_JUMP`) or
  beyond what every reader can represent (:data:`MAX_SEQ`, 2^53 - 1) is
  refused: accepted, it would make the hub ignore the run's real events.

Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import orjson

from pulse_transports.file import read_lock_info, writer_alive

#: Seconds an owning producer connection must have been silent before another
#: connection may take its run over: above the default heartbeat interval (5 s),
#: so a live writer keeps its run; a reconnecting writer's old connection is
#: silent, as the writer now speaks on the new one.
TAKEOVER_QUIET: Final = 6.0
#: The highest seq the hub accepts: JavaScript's Number.MAX_SAFE_INTEGER.
MAX_SEQ: Final = 2**53 - 1
#: The largest step of seq above the hub's last seq for a run (about 4.3e9:
#: days of events at 10,000 a second).
MAX_SEQ_JUMP: Final = 2**32
#: Ancestors followed when relating two processes.
_MAX_DEPTH: Final = 64


def peer_pid(sock: socket.socket | None) -> int | None:
    """The pid of a Unix socket's peer (``SO_PEERCRED``), or None if unknown."""
    if sock is None or sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", data)[0]
    return pid if pid > 0 else None


def lock_holder(home: Path, training_id: str) -> int | None:
    """The pid of the live process on this host holding the run's lock, or None."""
    if writer_alive(home, training_id) is not True:
        return None
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        info = read_lock_info(home, training_id)
        if isinstance(info, dict) and info.get("host") == socket.gethostname():
            pid = info.get("pid")
            if isinstance(pid, int) and pid > 0:
                return pid
    return None


def _parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: the fields follow the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


def _ancestors(pid: int) -> set[int]:
    found: set[int] = set()
    current: int | None = pid
    while current is not None and current > 1 and len(found) < _MAX_DEPTH:
        current = _parent(current)
        if current is not None:
            found.add(current)
    return found


def related(a: int, b: int) -> bool:
    """Whether *a* and *b* are the same process, or one descends from the other."""
    return a == b or a in _ancestors(b) or b in _ancestors(a)


class RunOwners:
    """Which connection reports each run, and whether another may take it over.

    The hub calls :meth:`admit` on a producer hello, :meth:`took` when it
    lets the connection report the run, :meth:`heard` on each of its lines and
    :meth:`left` when it is gone.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: training id -> [pid of the reporting process (None: unknown), last heard].
        self._runs: dict[str, list[Any]] = {}

    def admit(self, home: Path, training_id: str, pid: int | None) -> str | None:
        """Why a new producer connection (process *pid*, None if unknown) may not report
        *training_id*, or None if it may (any older connection then yields)."""
        owner = self._runs.get(training_id)
        holder = lock_holder(home, training_id)
        if holder is not None:
            if pid is not None:
                if related(holder, pid):
                    return None  # the writer itself, or its supervisor
                return (
                    f"run {training_id!r} is written by pid {holder}, which holds its lock; "
                    f"this process (pid {pid}) may not report it"
                )
            if owner is not None and owner[0] is not None and related(holder, owner[0]):
                return (
                    f"run {training_id!r} is written by pid {holder}, which holds its lock "
                    "and is connected; another connection may not report it"
                )
        elif owner is not None and pid is not None and owner[0] == pid:
            return None  # the same process, reconnecting
        if owner is not None:
            quiet = self._clock() - owner[1]
            if quiet < TAKEOVER_QUIET:
                return (
                    f"run {training_id!r} is reported by another connection, heard "
                    f"{quiet:.1f} s ago; its writer reconnecting is let in once that "
                    f"connection has been silent for {TAKEOVER_QUIET:g} s"
                )
        return None

    def took(self, training_id: str, pid: int | None) -> None:
        """A connection of process *pid* now reports *training_id*."""
        self._runs[training_id] = [pid, self._clock()]

    def heard(self, training_id: str) -> None:
        """The connection reporting *training_id* sent a line."""
        owner = self._runs.get(training_id)
        if owner is not None:
            owner[1] = self._clock()

    def left(self, training_id: str) -> None:
        """The connection reporting *training_id* is gone."""
        self._runs.pop(training_id, None)


def seq_refusal(seq: int, last_seq: int | None) -> str | None:
    """Why the hub refuses an event's *seq* given the run's *last_seq*, or None."""
    if seq > MAX_SEQ:
        return f"seq {seq} is above {MAX_SEQ} (2^53 - 1), the most every reader can represent"
    base = last_seq or 0
    if seq - base > MAX_SEQ_JUMP:
        return (
            f"seq {seq} jumps {seq - base} past the run's last seq {base} "
            f"(at most {MAX_SEQ_JUMP} is accepted); the event was dropped"
        )
    return None
