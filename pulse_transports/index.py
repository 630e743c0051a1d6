"""The run index, ``<home>/index.sqlite``: a rebuildable cache of every run's folded state.

This module owns :class:`RunIndex` (stdlib SQLite) and its rows
(:class:`IndexRow`). It is a cache, never a source of truth: one row per
training id holds the log's identity when it was read (inode, device, size,
mtime in ns), where reading stopped (a
:class:`~pulse_transports.follow.Position` as JSON), the folded state
(:func:`pulse_core.statecodec.encode_state`) and the ``ls`` summary as
JSON. When rows are used, continued or rebuilt is
:mod:`pulse_transports.history`'s decision. A corrupt index file is deleted
and rebuilt; one written by another state format
(:data:`~pulse_core.statecodec.STATE_FORMAT`) is emptied; an index that
cannot be opened or written (read-only home, locked) is skipped.

Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import attrs

from pulse_core._log import get_logger
from pulse_core.statecodec import STATE_FORMAT
from pulse_transports.homemode import open_file

log = get_logger("pulse.history")

INDEX_FILE: Final = "index.sqlite"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    training_id TEXT PRIMARY KEY,
    inode INTEGER NOT NULL,
    device INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    position TEXT NOT NULL,
    terminal INTEGER NOT NULL,
    sort_key REAL NOT NULL,
    bad_lines INTEGER NOT NULL,
    summary TEXT NOT NULL,
    state BLOB NOT NULL
);
"""
_SELECT: Final = (
    "SELECT training_id, inode, device, size, mtime_ns, position, terminal, sort_key, "
    "bad_lines, summary, state FROM runs"
)
_SELECT_ONE: Final = _SELECT + " WHERE training_id = ?"
_INSERT: Final = (
    "INSERT OR REPLACE INTO runs (training_id, inode, device, size, mtime_ns, position, "
    "terminal, sort_key, bad_lines, summary, state) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


@attrs.frozen
class IndexRow:
    """One run's row: the log's identity, where reading stopped, state and summary."""

    training_id: str
    inode: int
    device: int
    size: int
    mtime_ns: int
    position: str
    terminal: int
    sort_key: float
    bad_lines: int
    summary: str
    state: bytes


class RunIndex:
    """The SQLite index at ``<home>/index.sqlite``: a rebuildable cache.

    Every failure to read it is a reason to rebuild, never an error: a file
    that is not a database (or is damaged) is deleted and created anew; an
    index that cannot be opened or written (read-only, locked) is skipped.
    """

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / INDEX_FILE
        self.db: sqlite3.Connection | None = None
        self.rebuilt = False

    def open(self) -> bool:
        """Open (creating or rebuilding as needed); False if no index can be used."""
        for _attempt in range(2):
            try:
                with contextlib.suppress(OSError):  # made private first: sqlite uses the umask
                    os.close(open_file(self.path, os.O_RDWR | os.O_CREAT))
                db = sqlite3.connect(self.path, timeout=2.0, isolation_level=None)
            except sqlite3.Error as exc:
                log.debug("pulse index unavailable", path=str(self.path), error=str(exc))
                return False
            try:
                self._prepare(db)
            except sqlite3.OperationalError as exc:  # locked, read-only, ...
                db.close()
                log.debug("pulse index unavailable", path=str(self.path), error=str(exc))
                return False
            except sqlite3.DatabaseError as exc:  # not a database, malformed
                db.close()
                self._delete(str(exc))
                continue
            self.db = db
            return True
        return False

    def _prepare(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA synchronous=OFF")  # a cache: a torn write is a rebuild
        db.executescript(_SCHEMA)
        row = db.execute("SELECT value FROM info WHERE key = 'format'").fetchone()
        if row is None or row[0] != STATE_FORMAT:
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM runs")
                db.execute("INSERT OR REPLACE INTO info VALUES ('format', ?)", (STATE_FORMAT,))
            if row is not None:
                self.rebuilt = True

    def _delete(self, why: str) -> None:
        log.warning(
            "pulse index is corrupt; rebuilding it from the logs", path=str(self.path), error=why
        )
        self.rebuilt = True
        for suffix in ("", "-journal", "-wal", "-shm"):
            with contextlib.suppress(OSError):
                os.unlink(f"{self.path}{suffix}")

    def rows(self, training_id: str | None = None) -> dict[str, IndexRow]:
        """The stored rows (all, or one id's); empty if the index is unusable."""
        if self.db is None:
            return {}
        try:
            if training_id is None:
                cursor = self.db.execute(_SELECT)
            else:
                cursor = self.db.execute(_SELECT_ONE, (training_id,))
            return {r[0]: IndexRow(*r) for r in cursor}
        except sqlite3.DatabaseError as exc:
            self.close()
            if not isinstance(exc, sqlite3.OperationalError):
                self._delete(str(exc))
                self.open()
            return {}

    def write(self, rows: Iterable[IndexRow], gone: Iterable[str] = ()) -> None:
        """Store rows and forget ids whose logs are gone (best effort)."""
        if self.db is None:
            return
        values = [attrs.astuple(r) for r in rows]
        removed = [(tid,) for tid in gone]
        if not values and not removed:
            return
        try:
            with self.db:
                self.db.execute("BEGIN IMMEDIATE")
                self.db.executemany(_INSERT, values)
                self.db.executemany("DELETE FROM runs WHERE training_id = ?", removed)
        except sqlite3.Error as exc:
            log.debug("pulse index not updated", path=str(self.path), error=str(exc))

    def close(self) -> None:
        """Close the database."""
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None
