"""Who may report a run to the hub: its writer, not any process that can connect.

Private to :mod:`pulse_transports.hub`. This module owns the hub's run
ownership rules, from facts the hub can check itself:

* the run's lock file (:func:`pulse_transports.file.writer_alive`, and the
  holder's pid and host written in it): while a live process on this host
  holds it, only that process -- or one of its ancestors or descendants (a
  supervisor and its training child) -- may report the run over the Unix
  socket, whose peer's pid the kernel tells (``SO_PEERCRED``);
* otherwise (no lock: a socket-only producer; a TCP peer, whose pid is not
  known), the connection that reports the run keeps it while it speaks: a
  second connection is refused until the first has been silent for
  :data:`TAKEOVER_QUIET` seconds -- so a genuine writer reconnecting after a
  blip, whose old connection the hub has not seen close, waits at most that;
* a seq far beyond what the hub holds for the run (:data:`MAX_SEQ_JUMP`) or
  beyond what every reader can represent (:data:`MAX_SEQ`, 2^53 - 1) is
  refused: accepted, it would make the hub ignore the run's real events.

Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from pathlib import Path
from typing import Final

import orjson

from pulse_transports.file import lock_path, writer_alive

#: Seconds an owning producer connection must have been silent before another
#: connection may take its run over (a reconnecting writer's old connection
#: is silent: the writer now speaks on the new one).
TAKEOVER_QUIET: Final = 3.0
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
        info = orjson.loads(lock_path(home, training_id).read_bytes())
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


def ownership_refusal(
    home: Path, training_id: str, *, pid: int | None, owner_quiet: float | None
) -> str | None:
    """Why a new producer connection may not report *training_id*, or None if it may.

    Args:
        home: the hub's home (the run's lock file).
        training_id: the run the hello names.
        pid: the connecting process (Unix socket), None if unknown (TCP).
        owner_quiet: seconds since the run's current producer connection was
            last heard from; None if it has none.
    """
    holder = lock_holder(home, training_id)
    if holder is not None and pid is not None:
        if related(holder, pid):
            return None  # the writer itself (or its supervisor): any older connection yields
        return (
            f"run {training_id!r} is written by pid {holder}, which holds its lock; "
            f"this process (pid {pid}) may not report it"
        )
    if owner_quiet is not None and owner_quiet < TAKEOVER_QUIET:
        return (
            f"run {training_id!r} is reported by another connection, heard "
            f"{owner_quiet:.1f} s ago; its writer reconnecting is let in once that "
            f"connection has been silent for {TAKEOVER_QUIET:g} s"
        )
    return None


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
