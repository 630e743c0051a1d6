"""The hub's home feed: every run log in ``<home>/logs/training/``, followed live.

This module owns :class:`HomeFeed`, the hub's second source of events beside
producer connections. It keeps one :class:`~pulse_transports.follow.LogFollower`
per run log and a :class:`~pulse_transports.notify.Notifier` on the folder
(OS notifications through watchfiles, polling when they are unavailable), so
runs from any writer -- a process with the socket transport off, the v1
bridge, another language writing the protocol, a process started before the
hub -- are live in the hub, and runs that ended or died while the hub was
down are known the moment it starts (:meth:`HomeFeed.prime`).

What it costs: with notifications only the logs named in a notification are
read (one ``stat`` and one ``pread`` each); every :data:`SWEEP` seconds, and
on every wake when polling, all followed logs are looked at. A run that
ended is no longer followed (its file is closed), nor is one whose log has
not grown for :data:`IDLE` seconds (a run lost for good: its writer was
killed); if such a log grows again it is followed afresh and the hub drops
what it already has (by seq). So what is followed is bounded by the runs
writing now, not by every run ever seen.

Events reach the bus in log order; the bus keeps only events newer than the
run's last seq, so a run also reported over the socket is applied once.
Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from array import array
from bisect import bisect_left
from collections.abc import Collection
from pathlib import Path
from typing import Final

from pulse_core._log import get_logger
from pulse_core.events import Event
from pulse_transports.file import log_dir
from pulse_transports.follow import LogFollower
from pulse_transports.inprocess import MAX_RUNS, Bus
from pulse_transports.notify import Notifier

log = get_logger("pulse.homefeed")

#: Seconds between two looks at every followed log (and the folder) while
#: notifications work: a safety net for a missed notification.
SWEEP: Final = 2.0
#: Polling period when OS notifications are unavailable.
POLL: Final = 0.25
#: Longest a feed step waits for a notification (bounds how long closing takes).
WAIT: Final = 0.5
#: Seconds without growth after which a log is no longer followed (until it grows).
IDLE: Final = 600.0
_SUFFIX: Final = ".jsonl"


class HomeFeed:
    """Follow every run log of a home and publish the new events to a bus.

    Args:
        home: the PULSE home.
        max_runs: most logs read at start (the newest by modification time).
        notifications: False to force polling; None for the default.
        poll_interval: polling period without notifications.

    Attributes:
        published: events handed to the bus (new or not).
    """

    def __init__(
        self,
        home: Path | str,
        *,
        max_runs: int = MAX_RUNS,
        notifications: bool | None = None,
        poll_interval: float = POLL,
    ) -> None:
        self.home = Path(home)
        self.folder = log_dir(self.home)
        # Per-run file names stay plain strings here, out of pathlib (see
        # pulse_transports.file.run_file): the hub looks at every log often.
        self._dir = os.fspath(self.folder)
        self.max_runs = max_runs
        self.poll_interval = poll_interval
        self._notifications = notifications
        self._notifier: Notifier | None = None
        self._followers: dict[str, LogFollower] = {}
        self._ended = EndedLogs()  # runs that ended: log size when they did
        self._grew: dict[str, float] = {}  # followed runs: when their log last grew
        self.idle = IDLE
        self._next_sweep = 0.0
        self._lock = threading.Lock()
        self._closed = False
        self.published = 0

    @property
    def mode(self) -> str:
        """``notify``, ``polling`` or ``off`` (the log folder does not exist yet)."""
        return self._notifier.mode if self._notifier is not None else "off"

    @property
    def followed(self) -> int:
        """How many logs are followed now."""
        return len(self._followers)

    @property
    def remembered(self) -> int:
        """How many ended logs are remembered (by size, so as not to read them again)."""
        return len(self._ended)

    # -- blocking steps (worker thread) ----------------------------------------------

    def prime(self) -> dict[str, list[Event]]:
        """Read the newest logs whole (blocking): each run's events, by training id."""
        with self._lock:
            self._ensure_notifier()
            out: dict[str, list[Event]] = {}
            logs = sorted(self._logs(), key=lambda log: log[1].st_mtime, reverse=True)
            for name, _ in logs[: self.max_runs]:
                events = self._poll(name)
                if events:
                    out[name[: -len(_SUFFIX)]] = events
            for name, st in logs[self.max_runs :]:
                # Older than the runs the hub keeps: followed only if they grow.
                self._ended.set(name[: -len(_SUFFIX)], st.st_size)
            self._next_sweep = time.monotonic() + SWEEP
            return out

    def step(self, timeout: float = WAIT) -> list[Event]:
        """Wait (up to *timeout*) for changes, then read them (blocking)."""
        if self._notifier is None:
            time.sleep(min(timeout, self.poll_interval))
            with self._lock:
                self._ensure_notifier()
                # The folder is new: what it holds was written before any watch.
                return self._sweep() if self.folder.is_dir() else []
        self._notifier.wait(timeout)
        with self._lock:
            if self._closed:
                return []
            changed = self._notifier.take_changed()
            now = time.monotonic()
            if changed is None or now >= self._next_sweep:
                self._next_sweep = now + SWEEP
                return self._sweep()
            out: list[Event] = []
            # The notifier watches this one folder (not recursively): a path's
            # name is enough (the reported folder may be spelled differently).
            for name in sorted({os.path.basename(path) for path in changed}):
                if name.endswith(_SUFFIX):
                    out.extend(self._poll(name))
            return out

    def close(self) -> None:
        """Stop watching and close every followed log."""
        with self._lock:
            self._closed = True
            for follower in self._followers.values():
                follower.close()
            self._followers.clear()
            if self._notifier is not None:
                self._notifier.close()

    # -- the loop (a hub feed) ----------------------------------------------------------

    async def __call__(self, bus: Bus) -> None:
        """Publish the home's new events to *bus* until cancelled."""
        try:
            while True:
                # Published in a call of its own: the last events are not held
                # by this frame while it waits (the bus may have let go of them).
                self._publish(bus, await asyncio.to_thread(self.step))
        finally:
            await asyncio.to_thread(self.close)

    def _publish(self, bus: Bus, events: list[Event]) -> None:
        for event in events:
            bus.publish(event)
        self.published += len(events)

    # -- internals ----------------------------------------------------------------------

    def _ensure_notifier(self) -> None:
        if self._notifier is None and self.folder.is_dir():
            self._notifier = Notifier(
                self.folder,
                poll_interval=self.poll_interval,
                notifications=self._notifications,
            )
            log.info("pulse hub follows the home's logs", folder=str(self.folder), mode=self.mode)

    def _sweep(self) -> list[Event]:
        """Look at every log of the folder (new ones included)."""
        out: list[Event] = []
        try:
            names = sorted(n for n in os.listdir(self._dir) if n.endswith(_SUFFIX))
        except OSError:
            return out
        now = time.monotonic()
        present = {name[: -len(_SUFFIX)] for name in names}
        self._ended.keep_only(present)  # a log deleted (retention): nothing left to skip
        for tid in list(self._followers):
            if tid + _SUFFIX not in names:
                self._followers.pop(tid).close()  # deleted: the hub keeps what it has
                self._grew.pop(tid, None)
            elif now - self._grew.get(tid, now) > self.idle and not self._followers[tid].pending:
                self._unfollow(tid)  # silent for long: a lost run; followed again if it grows
        for name in names:
            out.extend(self._poll(name))
        return out

    def _logs(self) -> list[tuple[str, os.stat_result]]:
        """The folder's logs: file name and stat."""
        out = []
        try:
            with os.scandir(self._dir) as entries:
                for entry in entries:
                    if entry.name.endswith(_SUFFIX):
                        with contextlib.suppress(OSError):
                            out.append((entry.name, entry.stat()))
        except OSError:
            pass
        return out

    def _poll(self, name: str) -> list[Event]:
        """Read what is new in the log *name* (of the folder)."""
        tid = name[: -len(_SUFFIX)]
        follower = self._followers.get(tid)
        if follower is None:
            size = self._ended.get(tid)
            if size is not None:
                try:
                    if os.stat(os.path.join(self._dir, name)).st_size == size:
                        return []  # an ended run's log, unchanged
                except OSError:
                    return []
            follower = LogFollower(os.path.join(self._dir, name), training_id=tid)
            self._followers[tid] = follower
        events = follower.poll()
        if events or tid not in self._grew:
            self._grew[tid] = time.monotonic()
        if follower.state.is_terminal and not follower.pending:
            self._unfollow(tid)  # an ended run: its file is closed
        else:
            self._ended.pop(tid)
        return events

    def _unfollow(self, tid: str) -> None:
        """Stop following a log (until it grows past where it was read)."""
        follower = self._followers.pop(tid)
        self._ended.set(tid, follower.offset)
        self._grew.pop(tid, None)
        follower.close()


class EndedLogs:
    """The size of each ended run's log, by training id, without an object per log.

    A hub hears thousands of runs: a ``dict`` here would keep a string and an
    integer for each, made while runs were held and scattered among what they
    held, and those few small objects keep the allocator's memory from going
    back once the runs expire. Here two arrays (one block of memory each) hold
    the ids' hashes, sorted, and the sizes. Two ids with one hash (about 1 in
    10^13 for 10,000 runs) would share an entry: a log then read again, or
    skipped while its size equals the other's.
    """

    def __init__(self) -> None:
        self._hashes = array("q")
        self._sizes = array("q")

    def __len__(self) -> int:
        return len(self._hashes)

    def _find(self, tid: str) -> tuple[int, bool]:
        key = hash(tid)
        i = bisect_left(self._hashes, key)
        return i, i < len(self._hashes) and self._hashes[i] == key

    def get(self, tid: str) -> int | None:
        i, found = self._find(tid)
        return self._sizes[i] if found else None

    def set(self, tid: str, size: int) -> None:
        i, found = self._find(tid)
        if found:
            self._sizes[i] = size
        else:
            self._hashes.insert(i, hash(tid))
            self._sizes.insert(i, size)

    def pop(self, tid: str) -> None:
        i, found = self._find(tid)
        if found:
            del self._hashes[i]
            del self._sizes[i]

    def keep_only(self, tids: Collection[str]) -> None:
        """Forget every log but those of *tids*."""
        keep = {hash(tid) for tid in tids}
        gone = [i for i, key in enumerate(self._hashes) if key not in keep]
        for i in reversed(gone):
            del self._hashes[i]
            del self._sizes[i]
