"""The ``/api/runs`` list, computed at most once per second whatever the requests.

This module owns :class:`RecentRuns`: the rows of ``/api/runs`` (the newest
runs on disk and the runs the hub holds, with their liveness) are computed in
a worker thread by one request at a time, and a result (encoded once) serves every request
with the same ``limit`` for :data:`RUNS_TTL` seconds. A flood of requests then
costs about one computation a second instead of one per request, so it never
crowds the hub's producers off the CPU; a page polling the list sees it at
most that old (live updates come through ``/events``). Must not be imported
by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

#: Seconds one computation of the list serves requests with its ``limit``.
RUNS_TTL: Final = 1.0
#: Distinct ``limit`` values kept (more are computed afresh, one at a time).
_KEPT: Final = 8

Rows = list[dict[str, Any]]


class RecentRuns:
    """A single-flight, time-bounded cache of the ``/api/runs`` rows per ``limit``.

    Args:
        compute: the blocking computation of the rows for a limit.
        blocking: runs a blocking function in a worker thread.
    """

    def __init__(
        self,
        compute: Callable[[int], Rows],
        blocking: Callable[..., Awaitable[Any]],
    ) -> None:
        self._compute = compute
        self._blocking = blocking
        self._lock = asyncio.Lock()
        self._kept: dict[int, tuple[float, bytes]] = {}  # limit -> (when, JSON of the rows)

    async def get(self, limit: int) -> bytes:
        """The rows for *limit* as a JSON array, at most RUNS_TTL seconds old."""
        async with self._lock:
            kept = self._kept.get(limit)
            if kept is not None and time.monotonic() - kept[0] < RUNS_TTL:
                return kept[1]
            encoded: bytes = await self._blocking(self._encoded, limit)
            if len(self._kept) >= _KEPT:
                self._kept.clear()
            self._kept[limit] = (time.monotonic(), encoded)
            return encoded

    def _encoded(self, limit: int) -> bytes:
        return orjson.dumps(self._compute(limit))
