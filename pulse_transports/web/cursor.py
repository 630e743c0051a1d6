"""The resume cursor of the ``/events`` stream: what an SSE ``id`` says.

This module owns the cursor's text form. An SSE client (a browser's
``EventSource``) sends back only the ``id`` of the last message it received
(the ``Last-Event-ID`` header), so that one id must say everything needed to
resume every run the stream carries. It says it in two parts:

* a **quiet mark** ``@<seconds>`` (Unix time, whole seconds): the client
  holds, whole, every run whose last event is at or before that time and
  that the cursor does not name -- runs that ended (or were lost) and have
  been quiet since;
* the highest seq the client holds of every other run it holds, as
  ``training_id:seq`` pairs sorted by id.

All joined by commas::

    @1765062000,20261129-013724-123-9f2c41d07b:41,run-b:7

So the cursor names only the runs that are live or moved recently: its size
follows the runs running now, not every run the stream ever carried. Training
ids are ``[A-Za-z0-9._-]`` (protocol.md), so ``:``, ``,`` and ``@`` never
occur inside one. The cursor is self-contained -- the hub keeps nothing per
client -- so it survives a hub restart. Parsing is lenient: a malformed
entry is left out (that run then gets a snapshot, never a gap). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs

from pulse_core.errors import InvalidTrainingId
from pulse_core.events import validate_training_id

#: Longest cursor accepted (a Last-Event-ID header or query value), in characters.
MAX_CURSOR: Final = 65_536
#: Most runs one cursor names; entries beyond it are ignored.
MAX_ENTRIES: Final = 1024


@attrs.frozen
class Cursor:
    """A parsed cursor.

    Attributes:
        seqs: training id -> the highest seq the client holds.
        quiet: the quiet mark (Unix seconds), or None: runs not named whose
            last event is at or before it are held whole by the client.
    """

    seqs: Mapping[str, int] = attrs.field(factory=dict)
    quiet: int | None = None


def format_cursor(seqs: Mapping[str, int], quiet: int | None = None) -> str:
    """The cursor text (empty string for nothing held).

    Args:
        seqs: the highest seq the client holds, per training id it names.
        quiet: the quiet mark, or None.
    """
    entries = [f"{tid}:{seq}" for tid, seq in sorted(seqs.items())]
    if quiet is not None:
        entries.insert(0, f"@{quiet}")
    return ",".join(entries)


def parse_cursor(text: str | None) -> Cursor:
    """A cursor from its text; malformed entries are left out.

    Args:
        text: a ``Last-Event-ID`` value (None or empty: nothing held).

    Returns:
        The named runs' seqs (an id named twice keeps the larger seq) and the
        quiet mark (the first ``@digits`` entry, if any).
    """
    if not text or len(text) > MAX_CURSOR:
        return Cursor()
    seqs: dict[str, int] = {}
    quiet: int | None = None
    for raw in text.split(",", MAX_ENTRIES)[:MAX_ENTRIES]:
        entry = raw.strip()
        if entry.startswith("@"):
            if quiet is None and entry[1:].isdigit() and len(entry) <= 20:
                quiet = int(entry[1:])
            continue
        tid, sep, seq_text = entry.rpartition(":")
        if not sep or not seq_text.isdigit() or len(seq_text) > 19:
            continue
        try:
            validate_training_id(tid)
        except InvalidTrainingId:
            continue
        seq = int(seq_text)
        if seq > seqs.get(tid, -1):
            seqs[tid] = seq
    return Cursor(seqs, quiet)
