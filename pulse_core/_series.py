"""The reducer's mutable metric series (private to :mod:`pulse_core.reducer`).

A series is a bounded list of windows (see :class:`pulse_core.state.Series`):
closed windows are immutable tuples, the open one a list updated in place.
Must never import I/O modules.
"""

from __future__ import annotations

from typing import Any

from pulse_core.state import MAX_WINDOWS, Series, Window


class SeriesAcc:
    """Mutable metric series: closed windows as immutable tuples, the open one a list.

    The open (last) window is updated in place (no 8-tuple per sample): the
    metrics step is the costliest part of a replay.
    """

    __slots__ = ("count", "cur", "width", "windows")

    def __init__(self, series: Series | None = None) -> None:
        self.cur: list[Any] | None = None
        if series is None:
            self.width, self.count, self.windows = 1, 0, []
        else:
            self.width, self.count = series.width, series.count
            self.windows = list(series.windows)
            if self.windows:
                self.cur = list(self.windows.pop())

    def add(self, value: float, ts: float) -> None:
        index = self.count
        self.count = index + 1
        cur = self.cur
        if cur is not None:
            if index < cur[0] + self.width:
                cur[1] += 1
                cur[3] = value
                if value < cur[4]:
                    cur[4] = value
                elif value > cur[5]:
                    cur[5] = value
                cur[7] = ts
                return
            windows = self.windows
            windows.append(tuple(cur))
            if len(windows) >= MAX_WINDOWS:
                # Windows start at multiples of width and MAX_WINDOWS is even,
                # so pairs merge into windows aligned at multiples of 2*width:
                # the result depends only on the sequence, never on where a
                # fold was checkpointed.
                self.windows = [
                    _merge(windows[i], windows[i + 1]) for i in range(0, len(windows), 2)
                ]
                self.width *= 2
        self.cur = [index, 1, value, value, value, value, ts, ts]

    def extend(self, values: list[float], stamps: list[float]) -> None:
        """:meth:`add` each of *values* (never NaN) with its timestamp, in order.

        The values that fall in the open window update it once: ``min`` and
        ``max`` keep the first of equal values, as ``add``'s strict
        comparisons do. A value that opens a window -- or meets a window of
        odd bounds (a hostile checkpoint's) -- goes through ``add`` itself.
        """
        add = self.add
        i, n = 0, len(values)
        while i < n:
            cur = self.cur
            room = 0 if cur is None else cur[0] + self.width - self.count
            if (
                room.__class__ is not int
                or room <= 0
                or cur is None  # (room is 0 then: for mypy)
                or cur[4].__class__ is not float
                or cur[5].__class__ is not float
                or not cur[4] <= cur[5]
            ):
                add(values[i], stamps[i])
                i += 1
                continue
            end = n if n - i <= room else i + room
            run = values[i:end]
            self.count += end - i
            cur[1] += end - i
            cur[3] = run[-1]
            # min/max keep their first argument when equal, as add's strict < and >.
            cur[4] = min(cur[4], *run)
            cur[5] = max(cur[5], *run)
            cur[7] = stamps[end - 1]
            i = end

    def freeze(self) -> Series:
        windows = tuple(self.windows)
        if self.cur is not None:
            windows += (tuple(self.cur),)
        return Series(width=self.width, count=self.count, windows=windows)


def _merge(a: Window, b: Window) -> Window:
    return (a[0], a[1] + b[1], a[2], b[3], min(a[4], b[4]), max(a[5], b[5]), a[6], b[7])
