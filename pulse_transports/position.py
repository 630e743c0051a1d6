"""Where a log reader stopped: a position in a file, and the state up to it.

This module owns :class:`Position` (offset, line, last seq, the file's
identity and a fingerprint of the bytes before the offset),
:class:`Checkpoint` (a position plus the run's state),
:func:`position_matches` (is a file still the one a position was taken in,
grown or not; :func:`taken_in` for a file already open) and
:func:`read_file` (read a file by descriptor, failure as a value).
:mod:`pulse_transports.follow` takes positions; the index stores them.
Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

import attrs

from pulse_core.state import RunState

T = TypeVar("T")

#: Bytes before the offset a checkpoint remembers, to tell a rewritten file.
FINGERPRINT_BYTES: Final = 64


@attrs.frozen
class Position:
    """Where a follower is in a log, enough to resume it later.

    Attributes:
        offset: the byte offset of the first line not consumed yet.
        line: how many lines (of any kind) lie before ``offset``.
        last_seq: the highest seq applied to the state.
        inode, device: the identity of the file ``offset`` refers to.
        fingerprint: a hash of the bytes just before ``offset``; a file with
            the same inode whose bytes there differ was rewritten.
    """

    offset: int = 0
    line: int = 0
    last_seq: int = 0
    inode: int | None = None
    device: int | None = None
    fingerprint: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The position as a JSON-ready dict."""
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Position:
        """Build a position from :meth:`to_dict` output (unknown keys ignored)."""
        names = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@attrs.frozen
class Checkpoint:
    """A follower's position and the state of the run up to it."""

    position: Position
    state: RunState


def fingerprint(fd: int, offset: int) -> str:
    """A short hash of the bytes just before *offset* in the open file *fd*."""
    size = min(offset, FINGERPRINT_BYTES)
    if size <= 0:
        return ""
    data = os.pread(fd, size, offset - size)
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def read_file(path: Path | str, read: Callable[[int], T], failed: T) -> T:
    """What *read* finds in *path* opened read-only; *failed* if it cannot be opened or read.

    *read* gets the file descriptor, which is closed after it returns.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return failed
    try:
        return read(fd)
    except OSError:
        return failed
    finally:
        os.close(fd)


def position_matches(path: Path | str, position: Position) -> bool:
    """Tell whether *path* is still the file *position* was taken in, grown or not.

    True when the inode and device are the same, the file is at least
    ``offset`` bytes long and the bytes just before ``offset`` are unchanged.
    """

    def matches(fd: int) -> bool:
        st = os.fstat(fd)
        return taken_in(position, fd, (st.st_ino, st.st_dev), st.st_size)

    return read_file(path, matches, False)


def taken_in(position: Position, fd: int, identity: tuple[int, int], size: int) -> bool:
    """Tell whether an open file is the one *position* was taken in, grown or not.

    *fd* is the file, *identity* its inode and device, *size* its length.
    """
    return (
        (position.inode, position.device) == identity
        and position.offset <= size
        and fingerprint(fd, position.offset) == position.fingerprint
    )
