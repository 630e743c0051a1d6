"""The process tree of a supervised child, as Linux ``/proc`` shows it.

This module owns finding whether any process of a child's tree has a given
file open -- how the supervisor sees a ``TrainingRun`` in the child about to
take the run's lock. Private to :mod:`pulse_transports.supervise`; imports
nothing of PULSE.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Final

PROC_AVAILABLE: Final = Path("/proc/self/fd").is_dir()


def process_tree(root: int, limit: int = 256) -> list[int]:
    """The pids of *root* and its descendants (Linux ``/proc``), at most *limit*."""
    pids: list[int] = []
    queue = [root]
    while queue and len(pids) < limit:
        pid = queue.pop()
        pids.append(pid)
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as handle:
                    queue.extend(int(child) for child in handle.read().split())
            except (OSError, ValueError):
                continue
    return pids


def tree_opened(root: int, target: str) -> bool:
    """True if a process of *root*'s tree has the file *target* open."""
    for pid in process_tree(root):
        folder = f"/proc/{pid}/fd"
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            try:
                if os.readlink(f"{folder}/{name}") == target:
                    return True
            except OSError:
                continue
    return False


def signal_name(number: int) -> str:
    """The name of signal *number* (``SIGTERM``), or ``signal <n>`` if unknown."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
