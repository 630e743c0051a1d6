"""Reading and following run logs: ``tail -f`` for ``<home>/logs/training/*.jsonl``.

This module owns the reading side of the file transport:

* :class:`LogFollower` reads one log from an offset and follows its appends,
  folding the events into the run's state. It never raises for what is in the
  file: a line that is not a decodable event (garbage, binary, a torn
  fragment) is skipped, counted and logged with a structlog warning naming
  the file and the byte offset. A line longer than :data:`MAX_LINE` is skipped
  without ever being held in memory. A partial line at the end of the file is
  not consumed until its newline arrives; once the writer is known to be gone
  (:meth:`LogFollower.settle`) it is decoded if it can be and counted bad if
  not.
* Compaction (the writer renames a downsampled copy over the log), truncation
  and deletion are detected on every poll by comparing the path's inode and
  size with the open file: the old file is drained to its end, then the new
  one is read from its start while events with a seq at or below the last one
  applied are skipped -- so the state ends the same as if nothing happened.
* The run's owner: a follower given the ``training_id`` (a run log's file
  name is its id) folds from a state owned by that id, so lines of another
  run are ``foreign_event`` anomalies -- even the first line -- and are not
  returned as the run's events. Without it (an arbitrary file) the first
  line's id is the owner.
* a :class:`~pulse_transports.position.Checkpoint` (a position plus the
  state) lets a follower stop and resume later, even in another process
  (serialised by :mod:`pulse_transports.history`).
* :func:`follow` -- a log followed as it grows, woken by a
  :class:`~pulse_transports.notify.Notifier`.

Liveness, the index and restart recovery are :mod:`pulse_transports.history`.
This module must never import :mod:`pulse_transports.cli` or write any file.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import attrs

from pulse_core._fastfold import LineFolder
from pulse_core._log import get_logger
from pulse_core.closing import ClosesOnExit
from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.events import Event, StateCheckpoint
from pulse_core.policy import BAD_LOG_EVERY, BAD_LOG_FIRST, sampled
from pulse_core.state import RunState
from pulse_transports.notify import Notifier
from pulse_transports.position import Checkpoint, Position, fingerprint, taken_in

log = get_logger("pulse.follow")

#: Lines longer than this (bytes, without the newline) are skipped unread.
MAX_LINE: Final = 1 << 20
#: Bytes read per system call.
CHUNK: Final = 1 << 18
#: Bad lines whose details a follower keeps (all are counted).
KEEP_BAD: Final = 20


@attrs.frozen
class BadLine:
    """A line that was skipped: where it is and why."""

    offset: int
    line: int
    reason: str


# -- the follower ----------------------------------------------------------------


class LogFollower(ClosesOnExit):
    """Read one run's log from an offset and follow its appends.

    Call :meth:`poll` whenever the file may have changed (a :class:`Notifier`
    tells when); it returns the events applied since the last call. Nothing in
    the file makes it raise.

    Args:
        path: the log file (may be absent, or deleted later); kept as given.
        checkpoint: where a previous follower stopped (resume from there).
        max_line: lines longer than this many bytes are skipped unread.
        training_id: the run the log belongs to (its file name); lines of
            any other run are anomalies. None: the first line's run.
        fast: a read for the state only: common lines are folded from their
            JSON a chunk at a time (``fast`` is then the LineFolder, its
            ``folded`` counts them); :meth:`poll` does not return them.

    Attributes:
        bad_lines: lines skipped because they are not decodable events
            (including over-long lines and a torn last line of a dead writer).
        blank_lines: empty lines (a writer whose write failed starts its next
            line with a newline; they carry nothing and are not warned about).
        skipped: events not applied because their seq was already applied
            (re-read after compaction, truncation or a resume).
        replaced: how many times the file was replaced or truncated.
        deleted: True while the path does not exist (it was deleted or never
            created); the events read so far are kept.
        bad: details of the first :data:`KEEP_BAD` bad lines.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        checkpoint: Checkpoint | None = None,
        max_line: int = MAX_LINE,
        training_id: str | None = None,
        fast: bool = False,
    ) -> None:
        self.path = path
        self.training_id = training_id
        self.max_line = max_line
        self.bad_lines = self.blank_lines = self.skipped = self.replaced = 0
        self.deleted = False
        self.bad: list[BadLine] = []
        if checkpoint is not None and training_id is not None:
            owner = checkpoint.state.training_id
            if owner is None:
                checkpoint = Checkpoint(
                    checkpoint.position, attrs.evolve(checkpoint.state, training_id=training_id)
                )
            elif owner != training_id:
                checkpoint = None  # folded under another owner: read the log again
        if checkpoint is not None:
            start = checkpoint.state
        else:
            start = RunState(training_id=training_id) if training_id is not None else RunState()
        self._folder = LineFolder(start)
        self.fast = self._folder if fast else None
        self._resume = checkpoint.position if checkpoint else None
        self._skip_upto = 0  # events with seq <= this are already applied
        self._fd = -1
        self._ino: tuple[int, int] | None = None
        self._read_pos = 0  # bytes of the file read so far
        self._offset = 0  # start of the first line not consumed
        self._line_no = 0
        self._buf = bytearray()  # the partial line being read
        self._skipping = False  # inside an over-long line
        self._pending_counted = False  # the partial line was already settled

    # -- public ------------------------------------------------------------------

    @property
    def state(self) -> RunState:
        """The run's state after every event applied so far."""
        return self._folder.state

    @property
    def last_seq(self) -> int:
        """The highest seq applied."""
        return self._folder.last_seq

    @property
    def offset(self) -> int:
        """The byte offset of the first line not consumed yet."""
        return self._offset

    @property
    def lines(self) -> int:
        """Complete lines consumed so far (of any kind)."""
        return self._line_no

    @property
    def pending(self) -> bool:
        """True if a partial line waits at the end of the file for its newline."""
        return bool(self._buf) or self._skipping

    def position(self) -> Position:
        """Where this follower is (for :class:`Checkpoint`)."""
        if self._resume is not None and self._fd < 0:
            return self._resume
        inode, device = self._ino if self._ino else (None, None)
        tail = fingerprint(self._fd, self._offset) if self._fd >= 0 else ""
        return Position(
            offset=self._offset,
            line=self._line_no,
            last_seq=self._folder.last_seq,
            inode=inode,
            device=device,
            fingerprint=tail,
        )

    def checkpoint(self) -> Checkpoint:
        """The position and state, to resume later with ``checkpoint=``."""
        return Checkpoint(self.position(), self.state)

    def poll(self) -> list[Event]:
        """Read everything appended since the last call and apply it.

        Returns:
            The events applied to the state, in file order.
        """
        out: list[Event] = []
        self._check_file(out)
        if self._fd >= 0:
            self._drain(out)
        return out

    def settle(self) -> list[Event]:
        """Treat a partial last line as final: the writer is gone.

        The fragment is decoded if it is a whole event (a line missing only
        its newline), else counted as a bad line; either way only once. The
        offset does not move past it, so a writer that continues the log
        later is still read correctly.
        """
        out = self.poll()
        if not self.pending or self._pending_counted:
            return out
        self._pending_counted = True
        if self._skipping:
            return out  # an over-long line is counted when it starts
        try:
            event = decode(bytes(self._buf))
        except DecodeError as exc:
            self._bad(self._offset, f"torn last line (the writer is gone): {exc}")
            return out
        if self._apply(event):
            out.append(event)
        self._skip_upto = max(self._skip_upto, event.seq)
        return out

    def close(self) -> None:
        """Close the file (the follower can still report its state)."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    # -- file identity -------------------------------------------------------------

    def _check_file(self, out: list[Event]) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self.deleted:
                if self._fd >= 0:
                    self._drain(out)  # the open file still holds what was written
                    log.info("pulse log deleted while followed", file=str(self.path))
                self.deleted = True
            return
        except OSError as exc:
            log.warning("pulse log cannot be checked", file=str(self.path), error=str(exc))
            return
        identity = (st.st_ino, st.st_dev)
        if self._fd < 0:
            self._open(identity, st.st_size)
            return
        if identity != self._ino:
            self._drain(out)  # a compaction leaves nothing unread in the old file
            self._switch("replaced", out)
            self._open(identity, st.st_size)
        elif st.st_size < self._read_pos:
            self._switch("truncated", out)
            self._open(identity, st.st_size, reopen=False)
        self.deleted = False

    def _open(self, identity: tuple[int, int], size: int, reopen: bool = True) -> None:
        if reopen:
            try:
                fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                log.warning("pulse log cannot be opened", file=str(self.path), error=str(exc))
                return
            self.close()
            self._fd = fd
            st = os.fstat(fd)
            identity, size = (st.st_ino, st.st_dev), st.st_size
        self._ino = identity
        self._read_pos = self._offset = self._line_no = 0
        self.deleted = False
        resume, self._resume = self._resume, None
        if resume is None:
            return
        if taken_in(resume, self._fd, identity, size):
            self._read_pos = self._offset = resume.offset
            self._line_no = resume.line
        else:
            # Another file than the checkpoint's (compacted or rewritten since):
            # read it whole, skipping what the checkpoint state already holds.
            self._skip_upto = max(self._skip_upto, resume.last_seq)
            log.debug("pulse log changed since checkpoint", file=str(self.path))

    def _switch(self, why: str, out: list[Event]) -> None:
        self.replaced += 1
        if self.pending and not self._pending_counted and not self._skipping:
            self._bad(self._offset, f"partial last line of the {why} file")
        self._buf.clear()
        self._skipping = self._pending_counted = False
        self._skip_upto = max(self._skip_upto, self._folder.last_seq)
        log.info(f"pulse log {why} while followed; re-reading it", file=str(self.path))

    # -- lines ---------------------------------------------------------------------

    def _drain(self, out: list[Event]) -> None:
        fd = self._fd
        while True:
            try:
                chunk = os.pread(fd, CHUNK, self._read_pos)
            except OSError as exc:
                log.warning("pulse log read failed", file=str(self.path), error=str(exc))
                return
            if not chunk:
                return
            self._feed(chunk, out)

    def _feed(self, chunk: bytes, out: list[Event]) -> None:
        base = self._read_pos
        self._read_pos = base + len(chunk)
        buf = self._buf
        limit = self.max_line
        start = 0
        blocks = self.fast is not None and limit >= CHUNK  # no line of a chunk is over-long
        while True:
            if blocks and not buf and not self._skipping and not self._pending_counted:
                start = self._feed_lines(chunk, start, base, out)
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not self._skipping:
                    if len(buf) + len(chunk) - start > limit:
                        self._overlong()
                    else:
                        buf += chunk[start:]
                return
            line_start = self._offset
            if self._skipping:
                self._skipping = False
            elif buf:
                if len(buf) + nl - start > limit:
                    self._overlong()
                    self._skipping = False
                else:
                    buf += chunk[start:nl]
                    line = bytes(buf)
                    buf.clear()
                    self._line(line, line_start, out)
            elif nl - start > limit:
                self._overlong()
                self._skipping = False
            else:
                self._line(chunk[start:nl], line_start, out)
            self._pending_counted = False
            self._offset = base + nl + 1
            self._line_no += 1
            start = nl + 1

    def _feed_lines(self, chunk: bytes, start: int, base: int, out: list[Event]) -> int:
        """``_feed`` for the whole lines of ``chunk[start:]``; returns where its tail starts."""
        end = chunk.rfind(b"\n", start)
        if end < 0 or self.fast is None:
            return start
        pieces = chunk[start:end].split(b"\n")
        first, offset, at = self._line_no, base + start, 0
        for i in self.fast.unfolded(pieces, self._skip_upto):  # the others are folded
            offset += sum(map(len, pieces[at:i])) + i - at  # where line i starts
            self._offset, self._line_no, at = offset, first + i, i
            self._line(pieces[i], offset, out, fast=False)
        self._offset, self._line_no = base + end + 1, first + len(pieces)
        return end + 1

    def _overlong(self) -> None:
        if not self._pending_counted:
            self._bad(self._offset, f"line longer than {self.max_line} bytes, skipped unread")
        self._pending_counted = True
        self._buf.clear()
        self._skipping = True

    def _line(self, line: bytes, offset: int, out: list[Event], fast: bool = True) -> None:
        if fast and self.fast is not None and self.fast.fold_line(line, self._skip_upto):
            return
        if not line or line.isspace():
            self.blank_lines += 1
            return
        try:
            event = decode(line)
        except DecodeError as exc:
            if not self._pending_counted:
                self._bad(offset, str(exc))
            return
        if self._apply(event):
            out.append(event)

    def _apply(self, event: Event) -> bool:
        if event.__class__ is StateCheckpoint:
            return False  # the state so far, not an event: it changes no fold
        if self.training_id is not None and event.training_id != self.training_id:
            self._folder.apply(event)  # recorded as a foreign_event anomaly
            return False
        if event.seq <= self._skip_upto:
            self.skipped += 1
            return False
        self._folder.apply(event)
        return True

    def _bad(self, offset: int, reason: str) -> None:
        self.bad_lines += 1
        line = self._line_no + 1
        if len(self.bad) < KEEP_BAD:
            self.bad.append(BadLine(offset=offset, line=line, reason=reason[:300]))
        if sampled(self.bad_lines, BAD_LOG_EVERY, first=BAD_LOG_FIRST):
            log.warning(
                "pulse log line skipped",
                file=str(self.path),
                offset=offset,
                line=line,
                reason=reason[:200],
                bad_lines=self.bad_lines,
            )


def read_log(
    path: Path | str,
    *,
    final: bool = True,
    max_line: int = MAX_LINE,
    training_id: str | None = None,
) -> LogFollower:
    """Read a whole log file once.

    Args:
        path: the file.
        final: settle a partial last line (the file is complete).
        max_line: the over-long line limit.
        training_id: the run the log belongs to (see :class:`LogFollower`).

    Returns:
        The follower after reading (its ``state``, ``bad_lines``, ...).
    """
    with LogFollower(path, max_line=max_line, training_id=training_id, fast=True) as follower:
        (follower.settle if final else follower.poll)()
    return follower


def read_events(path: Path | str, training_id: str, after: int = 0) -> list[Event] | None:
    """The run's events in its log with seq > *after*, in file order; None if no log.

    Read by a :class:`LogFollower` (the log's rules: bad, over-long and
    foreign lines skipped, a torn last line settled). Blocking.
    """
    if not os.path.isfile(path):
        return None
    with LogFollower(path, training_id=training_id) as follower:
        return [e for e in follower.settle() if e.seq > after]


def follow(
    path: Path | str,
    *,
    checkpoint: Checkpoint | None = None,
    stop: threading.Event | None = None,
    tick: float = 1.0,
    notifier: Notifier | None = None,
    training_id: str | None = None,
) -> Iterator[tuple[LogFollower, list[Event]]]:
    """Follow a log: yield ``(follower, new_events)`` as events arrive.

    It also yields (with an empty list) at least every *tick* seconds, so the
    caller can re-evaluate liveness. It ends when *stop* is set.

    Args:
        path: the log file.
        checkpoint: resume from here.
        stop: set it to end the iteration.
        tick: the longest wait between two yields.
        notifier: a shared notifier on the log's folder (one is made if None).
        training_id: the run the log belongs to (see :class:`LogFollower`).
    """
    stop = stop or threading.Event()
    own = notifier is None
    watcher = notifier if notifier is not None else Notifier(Path(path).parent)
    follower = LogFollower(path, checkpoint=checkpoint, training_id=training_id)
    try:
        yield follower, follower.poll()
        while not stop.is_set():
            deadline = time.monotonic() + tick
            events: list[Event] = []
            while not stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                watcher.wait(remaining)
                events = follower.poll()
                if events:
                    break
            yield follower, events
    finally:
        follower.close()
        if own:
            watcher.close()
