"""The ``/api/runs`` list, and how much of the event loop the JSON API may take.

This module owns :class:`RecentRuns`: the rows of ``/api/runs`` (the newest
runs on disk and the runs the hub holds, with their liveness) are computed in
a worker thread by one request at a time, and a result, encoded once, serves
every request with the same ``limit`` for :data:`RUNS_TTL` seconds. A page
polling the list sees it at most that old (live updates come through
``/events``). And :class:`Pacing`: at most :data:`API_TURNS` requests handled
at once on the loop the hub shares, at most :data:`API_WORKERS` blocking
reads at once. A flood of requests then waits its turn instead of crowding
the hub's producers. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs
import orjson

from pulse_core.liveness import Liveness
from pulse_core.projections import to_summary
from pulse_core.state import RunState
from pulse_transports.history import HomeNotFound, recover
from pulse_transports.inprocess import Bus

#: Seconds one computation of the list serves requests with its ``limit``.
RUNS_TTL: Final = 1.0
#: Distinct ``limit`` values kept (more are computed afresh, one at a time).
_KEPT: Final = 8
#: Most blocking API reads running at once (the others wait their turn).
API_WORKERS: Final = 2
#: Most requests (``/events`` streams aside) handled at once on the event loop.
API_TURNS: Final = 4

T = TypeVar("T")


class Pacing:
    """How much of the event loop and of the worker threads the JSON API takes."""

    def __init__(self) -> None:
        self.turns = asyncio.Semaphore(API_TURNS)
        self._workers = asyncio.Semaphore(API_WORKERS)

    async def blocking(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking read in a worker thread, at most API_WORKERS at once."""
        async with self._workers:
            return await asyncio.to_thread(func, *args)


@attrs.define(eq=False, repr=False)
class RecentRuns:
    """The ``/api/runs`` rows per ``limit``: single flight, at most RUNS_TTL old.

    Args:
        bus: the hub's bus (the runs it holds).
        home: the PULSE home (the newest runs on disk).
        stale_after, lost_after: the liveness thresholds, seconds.
        liveness: a held run's liveness now (blocking: reads its lock).
        pacing: where the computation runs.
    """

    bus: Bus
    home: Path
    stale_after: float
    lost_after: float
    _liveness: Callable[[str, RunState, float], Liveness]
    _pacing: Pacing
    _lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    #: limit -> (when, JSON of the rows)
    _kept: dict[int, tuple[float, bytes]] = attrs.field(factory=dict, init=False)

    async def body(self, limit: int) -> bytes:
        """The ``/api/runs`` answer for *limit*: ``{"runs": [...], "time": now}``."""
        async with self._lock:
            kept = self._kept.get(limit)
            if kept is None or time.monotonic() - kept[0] >= RUNS_TTL:
                encoded = await self._pacing.blocking(self._encoded, limit)
                if len(self._kept) >= _KEPT:
                    self._kept.clear()
                kept = self._kept[limit] = (time.monotonic(), encoded)
        return b'{"runs":' + kept[1] + b',"time":' + orjson.dumps(time.time()) + b"}"

    def _encoded(self, limit: int) -> bytes:
        return orjson.dumps(self.rows(limit))

    def rows(self, limit: int) -> list[dict[str, Any]]:
        """Live and recent runs, newest first, as ``pulse ls --json`` rows (blocking)."""
        now = time.time()
        rows: dict[str, dict[str, Any]] = {}
        try:
            records = recover(
                self.home,
                now=now,
                stale_after=self.stale_after,
                lost_after=self.lost_after,
                limit=limit,
            )
        except HomeNotFound:
            records = []
        for record in records:
            rows[record.training_id] = dict(record.summary)
        for tid, state in self.bus.states().items():
            live = self._liveness(tid, state, now)
            rows[tid] = to_summary(state, liveness=live, now=now, training_id=tid)
        for row in rows.values():
            row.pop("log", None)  # a server path: nothing for a browser

        def newest(row: dict[str, Any]) -> tuple[float, str]:
            at = row.get("created_at") or row.get("last_event_at") or 0.0
            return (float(at), str(row.get("training_id")))

        return sorted(rows.values(), key=newest, reverse=True)[:limit]
