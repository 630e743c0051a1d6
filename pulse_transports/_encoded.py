"""The cache through which the hub and the web stream encode each event once.

Private to :mod:`pulse_transports.inprocess`, which re-exports
:class:`EncodedEvents`. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Final

from pulse_core.codec import encode
from pulse_core.events import Event

#: Bytes of encoded events cached for subscribers (each also freed with its event):
#: what every subscriber sends within moments of a publish. Not more: the lines
#: of held runs' events would stay cached for as long as the runs are held
#: (~1 MB with their entries at 1,000 short runs), and small objects made while
#: runs are held are what keeps the allocator's arenas after they expire.
ENCODED_BYTES: Final = 256 << 10


class EncodedEvents:
    """Every subscriber sends the same event: encode it once, for as long as it is held.

    A line is cached while its event object lives (a weak reference drops
    the entry with the event: when the run's recent events and every
    mailbox let go of it) and while the cache holds at most *max_bytes* of
    lines (the oldest go first); a line longer than a quarter of that is
    never cached (at the default, every line :func:`~pulse_core.codec.encode`
    makes may be). Thread-safe.

    Args:
        max_bytes: the most bytes of lines kept.
    """

    def __init__(self, max_bytes: int = ENCODED_BYTES) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._lines: dict[int, _CachedLine] = {}
        self._lock = threading.Lock()
        self._dead: list[_CachedLine] = []
        self._on_gone = self._gone  # one bound method for every entry

    def __len__(self) -> int:
        return len(self._lines)

    def __call__(self, event: Event) -> bytes:
        """The event's line (newline included)."""
        key = id(event)
        hit = self._lines.get(key)
        if hit is not None and hit() is event:
            return hit.line
        line = encode(event)
        if len(line) > self.max_bytes // 4:
            return line
        # orjson hands its output over in a buffer of at least 4 KiB: a line
        # kept is copied to its own size, so the cache costs what it counts.
        line = bytes(memoryview(line))
        entry = _CachedLine(event, self._on_gone, key, line)
        with self._lock:
            self._purge()
            self._drop(key)
            self._lines[key] = entry
            self.nbytes += len(line)
            while self.nbytes > self.max_bytes:
                self._drop(next(iter(self._lines)))
        return line

    def _drop(self, key: int) -> None:
        entry = self._lines.pop(key, None)
        if entry is not None:
            self.nbytes -= len(entry.line)

    def _gone(self, entry: _CachedLine) -> None:
        """An event was freed: drop its line (at the next call if the lock is busy)."""
        if self._lock.acquire(blocking=False):
            try:
                if self._lines.get(entry.key) is entry:
                    self._drop(entry.key)
            finally:
                self._lock.release()
        else:
            self._dead.append(entry)

    def _purge(self) -> None:
        while self._dead:
            entry = self._dead.pop()
            if self._lines.get(entry.key) is entry:
                self._drop(entry.key)


class _CachedLine(weakref.ref[Event]):
    """A weak reference to an event that also holds its line and its key (one object, not four)."""

    __slots__ = ("key", "line")

    def __new__(
        cls, event: Event, callback: Callable[[_CachedLine], None], key: int, line: bytes
    ) -> _CachedLine:
        return super().__new__(cls, event, callback)

    def __init__(
        self, event: Event, callback: Callable[[_CachedLine], None], key: int, line: bytes
    ) -> None:
        self.key = key
        self.line = line
