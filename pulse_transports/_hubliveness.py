"""The hub's watch over the liveness of the runs it holds.

Private to :mod:`pulse_transports.hub`: :func:`liveness_now` (one run's
liveness, checking its writer's lock) and :class:`HubLiveness`, the part of
the hub that checks every held run's writer each tick and when a producer
leaves, pushes a fresh snapshot when a run's liveness changes, and heals
the home's v1 snapshot when a run turns lost. Must not be imported by
:mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from pathlib import Path
from typing import Final

from pulse_core._log import get_logger
from pulse_core.events import forget_checked_ids
from pulse_core.liveness import ALIVE, ENDED, LOST, LOST_AFTER, STALE_AFTER, Liveness
from pulse_core.state import RunState
from pulse_transports._hubconn import HubConnections
from pulse_transports._mailbox import trim_heap
from pulse_transports.file import run_file
from pulse_transports.liveness import check_writer, run_liveness

log = get_logger("pulse.hub")

#: Seconds after a producer's disconnection at which its run's writer is
#: checked again: the kernel closes a dead process's socket and releases its
#: lock in no fixed order.
_RECHECKS: Final = (0.0, 0.1, 0.3)
#: Least seconds between two returns of freed memory to the system.
TRIM_EVERY: Final = 5.0


def liveness_now(
    home: Path,
    training_id: str,
    state: RunState,
    *,
    now: float,
    stale_after: float = STALE_AFTER,
    lost_after: float = LOST_AFTER,
) -> Liveness:
    """One run's liveness, checking its writer's lock when it has one (blocking).

    A run reported only over the socket has no lock file: its writer is then
    unknown and silence alone decides.
    """
    if state.is_terminal:
        return ENDED
    lock = run_file(home, training_id, ".lock")
    writer = check_writer(home, training_id, state) if os.path.exists(lock) else None
    return run_liveness(
        state, now=now, writer=writer, stale_after=stale_after, lost_after=lost_after
    )


class HubLiveness(HubConnections):
    """Liveness checks of the held runs (a base of :class:`~pulse_transports.hub.Hub`)."""

    #: training id -> (its liveness at the last check, its last seq then).
    liveness: dict[str, tuple[Liveness, int]]
    _checks: set[asyncio.Task[None]]
    _check_lock: asyncio.Lock

    def _to_check(self, only: str | None = None) -> dict[str, RunState]:
        """The held runs whose writer may have died since the last check."""
        runs = self.bus.states()
        for gone in self.liveness.keys() - runs.keys():
            del self.liveness[gone]  # the bus forgot the run: so do we
        if only is not None:
            runs = {only: runs[only]} if only in runs else {}
        out = {}
        for tid, state in runs.items():
            if state.is_terminal:
                self.liveness.pop(tid, None)
                continue
            known = self.liveness.get(tid)
            if known is not None and known[0] == LOST and known[1] == state.last_seq:
                continue  # lost and silent since: nothing can have changed
            out[tid] = state
        return out

    def _measure(self, runs: dict[str, RunState]) -> dict[str, Liveness]:
        """Each run's liveness now (blocking: reads lock files)."""
        s = self.settings
        now = time.time()
        return {
            tid: liveness_now(
                s.home, tid, state, now=now, stale_after=s.stale_after, lost_after=s.lost_after
            )
            for tid, state in runs.items()
        }

    async def check_liveness(self, training_id: str | None = None) -> dict[str, Liveness]:
        """Check the writers of the held runs (or of one); push and heal what changed.

        Returns:
            The runs whose liveness changed, with their new liveness.
        """
        async with self._check_lock:
            runs = self._to_check(training_id)
            if not runs:
                return {}
            fresh = await self._blocking(self._measure, runs)
            changed: dict[str, Liveness] = {}
            states = self.bus.states()
            for tid, live in fresh.items():
                state = states.get(tid)
                if state is None or state.is_terminal:
                    continue  # it ended (or left) while we looked
                old = self.liveness.get(tid)
                self.liveness[tid] = (live, runs[tid].last_seq)
                # A run first seen alive is no news: its subscribers assume it.
                # Events that reached subscribers after a stale/lost snapshot
                # (late lines from the log) read as "alive": say it again.
                moved = old is not None and old[1] != runs[tid].last_seq
                if (old[0] if old is not None else ALIVE) != live or (live != ALIVE and moved):
                    changed[tid] = live
            for tid, live in changed.items():
                told = self.bus.restate(tid)
                log.info(
                    "pulse hub: run liveness changed", training_id=tid, liveness=live, told=told
                )
            if any(live == LOST for live in changed.values()):
                await self._blocking(self._heal_v1)
            return changed

    def _heal_v1(self) -> None:
        """Make the home's v1 snapshot honest about a run that turned lost (blocking)."""
        from pulse_transports.v1 import heal_v1_snapshot

        s = self.settings
        try:
            healed = heal_v1_snapshot(s.home, stale_after=s.stale_after, lost_after=s.lost_after)
        except Exception:  # a repair's failure must never stop the hub
            log.exception("pulse hub could not heal the v1 snapshot")
            return
        if healed:
            log.info("pulse hub healed the v1 snapshot of a lost run", home=str(s.home))

    def _spawn_check(self, training_id: str) -> None:
        """Check one run's writer now and a little later (its producer left)."""

        async def recheck() -> None:
            last = 0.0
            for at in _RECHECKS:
                await asyncio.sleep(at - last)
                last = at
                if await self.check_liveness(training_id) or training_id not in self.bus.states():
                    return

        task = asyncio.create_task(recheck())
        self._checks.add(task)
        task.add_done_callback(self._checks.discard)

    async def _watch_liveness(self) -> None:
        """Check the held runs' writers every tick, for the hub's life."""
        subscribers, trimmed, pending = 0, 0.0, False
        while True:
            try:
                await self.check_liveness()
                # Ended runs, and lost ones silent as long, leave memory...
                lost = {t for t, (live, _) in self.liveness.items() if live == LOST}
                expired = self.bus.expire(lost=lost)
                pending = bool(expired) or pending
                pending = pending or self.bus.subscribers() < subscribers
                subscribers = self.bus.subscribers()
                now = time.monotonic()
                # At most every TRIM_EVERY while runs keep expiring, and at once
                # when they stop: the memory of a burst of expiries comes back.
                if pending and (now - trimmed > TRIM_EVERY or not expired):
                    trimmed, pending = now, False  # ... and what they held goes back:
                    # a few small objects made while runs were held keep the
                    # allocator's arenas: the checked ids, and closed connections
                    # (asyncio transports are cycles, freed by a full collection).
                    forget_checked_ids()
                    gc.collect()
                    await self._blocking(trim_heap)
            except asyncio.CancelledError:
                raise
            except Exception:  # the watch must outlive one bad check
                log.exception("pulse hub liveness check failed")
            await asyncio.sleep(self.settings.liveness_tick)
