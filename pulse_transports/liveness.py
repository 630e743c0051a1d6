"""Whether a run's writer is alive: the log lock, then the pid; and a run's liveness from it.

This module owns the facts a file reader checks about a run's writer:
:func:`check_writer` (the log lock, :func:`pulse_transports.file.writer_alive`;
when the lock cannot be checked, whether the writer's pid still runs on this
host; a free lock just after a write whose holder lives is a hand-over) and
:func:`run_liveness` (:func:`pulse_core.liveness.liveness_of` given that
check).

Liveness rules: ``ended`` once the run is done, error or cancelled; ``lost``
when the writer's lock is free (or its pid is not running on this host when
the lock cannot be checked) or when nothing was heard for ``lost_after``
seconds; ``stale`` after ``stale_after`` seconds of silence (a heartbeat
makes it ``alive`` again); else ``alive``.

Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from pulse_core.liveness import LOST_AFTER, STALE_AFTER, Liveness, liveness_of
from pulse_core.state import RunState
from pulse_transports._logfile import read_lock_info, writer_alive

#: Seconds after a run's last event during which a free lock whose last
#: holder still lives is taken for a lock hand-over, not a dead writer.
HANDOVER_GRACE = 5.0


def _pid_running(pid: int) -> bool | None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    except OSError:
        return None
    return True


def check_writer(home: Path, training_id: str, state: RunState | None = None) -> bool | None:
    """Tell whether the run's writer is alive: the lock first, the pid as a fallback.

    Returns:
        True if a process holds the log lock; False if the lock is free or
        absent, or -- when the lock cannot be checked -- if the writer's pid
        (from the lock file, else the run's meta) is not running on this
        host; None when neither can tell (a running pid may be a reused one).
    """
    alive = writer_alive(home, training_id)
    if alive is True:
        return True
    pid: Any = None
    host: Any = None
    with contextlib.suppress(OSError, orjson.JSONDecodeError):
        holder = read_lock_info(home, training_id)
        if isinstance(holder, dict):
            pid, host = holder.get("pid"), holder.get("host")
    if alive is False:
        # A free lock whose last holder still lives, on a run that wrote a
        # moment ago, is a hand-over (a supervisor letting its child take the
        # lock: a few ms): not proof of death. Heartbeat age decides instead.
        if (
            state is not None
            and not state.is_terminal
            and state.last_event_at is not None
            and time.time() - state.last_event_at < HANDOVER_GRACE
            and isinstance(pid, int)
            and pid > 0
            and host == socket.gethostname()
            and _pid_running(pid) is True
        ):
            return None
        return False
    if pid is None and state is not None and state.meta is not None:
        pid, host = state.meta.pid, state.meta.host
    if (
        isinstance(pid, int)
        and pid > 0
        and host == socket.gethostname()
        and _pid_running(pid) is False
    ):
        return False
    return None


def run_liveness(
    state: RunState,
    *,
    now: float,
    writer: bool | None,
    stale_after: float = STALE_AFTER,
    lost_after: float = LOST_AFTER,
) -> Liveness:
    """Classify a run: :func:`pulse_core.liveness.liveness_of` given the writer check.

    ``writer`` is what :func:`check_writer` said: ended wins over everything,
    a writer known to be gone means lost; otherwise silence decides (stale,
    then lost after *lost_after*), and any event (a heartbeat too) makes a
    stale run alive again.
    """
    return liveness_of(
        state, now=now, stale_after=stale_after, lost_after=lost_after, writer_alive=writer
    )
