"""Liveness of the runs the hub holds, re-checked on a timer for the web view.

This module owns :class:`LivenessMonitor`: every ``tick`` seconds it asks, for
every run on the hub's bus, whether the run is alive, stale, lost or ended
(:func:`pulse_transports.liveness.run_liveness`) and, when any answer changed,
calls the listeners (the open ``/events`` streams), which push the change to
their browsers. A browser cannot check a writer's lock; the hub can, so a
SIGKILLed producer shows as ``lost`` within a tick, and a silent one as
``stale`` after ``stale_after`` seconds, instead of ``running`` forever.

The writer check reads the run's lock file (``<id>.lock``, held by the
``file`` sink). A run reported only over the socket has no lock; its writer
is then "unknown" and silence alone decides. The checks touch the disk, so
they run in a worker thread. (The hub itself watches the same way for its
socket subscribers: :func:`pulse_transports.hub.liveness_now` is shared.)
Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from pulse_core._log import get_logger
from pulse_core.liveness import Liveness
from pulse_transports.hub import liveness_now
from pulse_transports.inprocess import Bus

log = get_logger("pulse.web")


@attrs.define(eq=False, repr=False)
class LivenessMonitor:
    """Keeps :attr:`liveness` of every run on the bus current; tells listeners of changes.

    Args:
        bus: the hub's bus (its runs are the ones watched).
        home: the PULSE home (where the runs' lock files are).
        stale_after, lost_after: the liveness thresholds, seconds.
        tick: seconds between two checks.
    """

    bus: Bus
    home: Path
    stale_after: float = attrs.field(kw_only=True)
    lost_after: float = attrs.field(kw_only=True)
    tick: float = attrs.field(default=1.0, kw_only=True)
    #: training id -> its liveness at the last check.
    liveness: dict[str, Liveness] = attrs.field(factory=dict, init=False)
    _listeners: set[Callable[[], None]] = attrs.field(factory=set, init=False)
    _task: asyncio.Task[None] | None = attrs.field(default=None, init=False)

    def listen(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call *callback* (in the event loop) after each change; returns the undo."""
        self._listeners.add(callback)
        return lambda: self._listeners.discard(callback)

    def check(self) -> dict[str, Liveness]:
        """Compute every held run's liveness now (blocking: reads lock files)."""
        now = time.time()
        return {
            tid: liveness_now(
                self.home,
                tid,
                state,
                now=now,
                stale_after=self.stale_after,
                lost_after=self.lost_after,
            )
            for tid, state in self.bus.states().items()
        }

    async def refresh(self) -> None:
        """Check once; tell the listeners if anything changed."""
        fresh = await asyncio.to_thread(self.check)
        if fresh != self.liveness:
            self.liveness = fresh
            for callback in list(self._listeners):
                callback()

    def start(self) -> None:
        """Start checking every tick in the running event loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # the monitor must outlive one bad check
                log.exception("pulse web liveness check failed")
            await asyncio.sleep(self.tick)

    async def stop(self) -> None:
        """Stop checking."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
