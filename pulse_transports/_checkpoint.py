"""Checkpoints in a run's log: the folded state, written by the writer, read back.

This module owns both sides of the ``state_checkpoint`` line (specs/protocol.md):

* :class:`CheckpointWriter` -- the file writer's fold of its own run. It folds
  every line the writer appends (from the state the log held when it opened)
  and says when a checkpoint is due: every :data:`EVERY_LINES` lines or
  :data:`EVERY_BYTES` bytes, whichever comes first, but never closer than
  :data:`SPACING` times the last checkpoint's own size (so checkpoints stay a
  small part of the log). It is also due as soon as the run ends (a line with
  a terminal status) if :data:`END_BYTES` were written since the last one: an
  ended run -- what most logs in a home are -- is then recovered from its last
  line, at the same cost whatever the log's size (unless another process
  appended to the log: the file writer then leaves it out, so that readers
  fold those lines and count the bad ones). The writer also appends one
  after every compaction:
  its state is the run's true state, not the fold of the downsampled file. A
  log recreated after it was deleted restarts the fold from the restated lines
  (readers of the new file see its ``dropped`` note).
* :func:`last_checkpoint` -- a reader's start: the last checkpoint of a log
  (found from the end, reading backwards), as a follower
  :class:`~pulse_transports.position.Checkpoint` just after that line, so
  cold recovery folds only the tail: O(runs), not O(bytes).
* :func:`fold_log` -- the state of a whole log from its last checkpoint.

A checkpoint whose state codec format differs from ours, or that does not
decode, is passed over (the reader looks further back, or folds the log).
Private to the file transport; must not import other pulse_transports
modules but its own helpers.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

import orjson

from pulse_core._fastfold import fold_lines
from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.events import PROTOCOL_VERSION, Event, StateCheckpoint, StatusChanged, is_terminal
from pulse_core.reducer import Folder
from pulse_core.state import RunState
from pulse_core.statecodec import STATE_FORMAT, state_from_obj, state_to_obj
from pulse_transports.position import Checkpoint, Position, fingerprint, read_file

#: A checkpoint is due after this many lines since the last one ...
EVERY_LINES: Final = 1000
#: ... or this many bytes, whichever comes first ...
EVERY_BYTES: Final = 64 * 1024
#: ... but not before the log grew by this many times the last checkpoint's size.
SPACING: Final = 4
#: When the run ends, a checkpoint is due if this many bytes came after the last one.
END_BYTES: Final = 16 * 1024
#: What every checkpoint line starts with (the codec writes ``type`` first).
MARK: Final = b'{"type":"state_checkpoint"'
#: The longest checkpoint line (event lines stop at 64 KiB; readers take 1 MiB).
MAX_CHECKPOINT_BYTES: Final = 512 * 1024
#: Bytes read per step when searching a log backwards.
BLOCK: Final = 1 << 16


class CheckpointWriter:
    """The writer's own fold of its run, and when to write it down (module doc)."""

    def __init__(self, state: RunState, limit: int = MAX_CHECKPOINT_BYTES) -> None:
        self._folder = Folder(state)
        self._limit = min(limit, MAX_CHECKPOINT_BYTES)
        self._lines = 0  # since the last checkpoint
        self._bytes = 0
        self._spacing = 0
        #: The last line noted ended the run (a terminal status).
        self.ending = False

    def restart(self, events: list[Event]) -> None:
        """Fold afresh from *events*: a recreated log holds only these (restated)."""
        self._folder = Folder(RunState(training_id=self._folder.state.training_id))
        for event in events:
            self._folder.apply(event)
        self._lines = self._bytes = 0

    @property
    def state(self) -> RunState:
        """The run's state after every line written so far."""
        return self._folder.state

    def note(self, event: Event, size: int) -> bool:
        """Fold one line written (*size* bytes); True if a checkpoint is now due."""
        self._folder.apply(event)
        self._lines += 1
        self._bytes += size
        self.ending = isinstance(event, StatusChanged) and is_terminal(event.status)
        if self.ending and self._bytes >= END_BYTES:
            return True  # the run ended: readers start from its last line
        if self._bytes < self._spacing:
            return False
        return self._lines >= EVERY_LINES or self._bytes >= EVERY_BYTES

    def line(self, timestamp: float, lines: int) -> bytes | None:
        """The checkpoint line of the state now (None if longer than the limit).

        Args:
            timestamp: the wall-clock time of writing.
            lines: how many lines of the log lie before it.
        """
        self._lines = self._bytes = 0
        state = self._folder.state
        if state.training_id is None:
            return None
        # The wire object written directly (the codec's to_dict would walk the
        # whole state through cattrs: ~15 ms instead of ~1).
        wire = {
            "type": "state_checkpoint",
            "v": PROTOCOL_VERSION,
            "training_id": state.training_id,
            "seq": self._folder.last_seq,
            "timestamp": timestamp,
            "format": STATE_FORMAT,
            "state": state_to_obj(state),
            "lines": lines,
        }
        try:
            line = orjson.dumps(wire, option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # text that is not valid Unicode: the next one may do
            return None
        self._spacing = SPACING * len(line)
        # Never cut down like other lines: a truncated state would be a lie.
        return line if len(line) <= self._limit else None


def _parse(line: bytes, training_id: str) -> StateCheckpoint | None:
    try:
        event = decode(line)
    except DecodeError:
        return None
    if not isinstance(event, StateCheckpoint) or event.training_id != training_id:
        return None
    return event if event.format == STATE_FORMAT else None


def last_checkpoint(path: Path | str, training_id: str) -> Checkpoint | None:
    """The last usable checkpoint of a log, as a follower checkpoint; None if none.

    Reads the log backwards in blocks until it finds one; a log without any
    is read whole (at most once, without decoding the other lines).
    """
    return read_file(path, lambda fd: _last_checkpoint(fd, training_id), None)


def _last_checkpoint(fd: int, training_id: str) -> Checkpoint | None:
    """:func:`last_checkpoint` in the open log *fd*."""
    st = os.fstat(fd)
    end = st.st_size
    tail = b""  # the start of the line cut at the block's end
    while end > 0:
        start = max(0, end - BLOCK)
        data = os.pread(fd, end - start, start) + tail
        at = len(data)
        while True:
            at = data.rfind(MARK, 0, at)
            if at < 0:
                break
            if at > 0 and data[at - 1] != 0x0A:
                continue  # not at a line start (inside some text)
            if at == 0 and start > 0:
                break  # maybe not at a line start: seen again with the block before
            stop = data.find(b"\n", at)
            if stop < 0:
                continue  # not ended yet: being written
            found = _parse(data[at:stop], training_id)
            if found is None:
                continue
            offset = start + stop + 1
            try:
                state = state_from_obj(found.state)
            except ValueError:
                continue
            position = Position(
                offset=offset,
                line=found.lines + 1,
                last_seq=found.seq,
                inode=st.st_ino,
                device=st.st_dev,
                fingerprint=fingerprint(fd, offset),
            )
            return Checkpoint(position, state)
        cut = data.find(b"\n")
        tail = data[: cut + 1] if cut >= 0 and start > 0 else b""
        if start > 0 and cut < 0:
            tail = data  # one long line across blocks
            if len(tail) > MAX_CHECKPOINT_BYTES:
                tail = b""  # longer than any checkpoint: not one
        end = start
    return None


def fold_log(path: Path, training_id: str) -> tuple[RunState, int, int]:
    """The state of a whole log (from its last checkpoint), its lines and the tail's bytes.

    The line count is exact when there is no checkpoint and otherwise taken
    from it (lines before it) plus the lines after it; the tail is what was
    folded after the checkpoint (the whole log without one).
    """
    found = last_checkpoint(path, training_id)
    if found is None:
        state, offset, lines = RunState(training_id=training_id), 0, 0
    else:
        state, offset, lines = found.state, found.position.offset, found.position.line
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read()
    pieces = data.splitlines()
    return fold_lines(pieces, state), lines + len(pieces), len(data)
