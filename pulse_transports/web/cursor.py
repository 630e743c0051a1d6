"""The resume cursor of the ``/events`` stream: what an SSE ``id`` says.

This module owns the cursor's text form. An SSE client (a browser's
``EventSource``) sends back only the ``id`` of the last message it received
(the ``Last-Event-ID`` header), so that one id must say everything needed to
resume every run the stream carries: it is the highest seq the client holds
per run, ``training_id:seq`` pairs sorted by id and joined by commas::

    20261129-013724-123-9f2c41d07b:41,run-b:7

Training ids are ``[A-Za-z0-9._-]`` (protocol.md), so ``:`` and ``,`` never
occur inside one. The cursor is self-contained -- the hub keeps nothing per
client -- so it survives a hub restart. Parsing is lenient: a malformed
entry is left out (that run then gets a snapshot, never a gap). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from pulse_core.errors import InvalidTrainingId
from pulse_core.events import validate_training_id

#: Longest cursor accepted (a Last-Event-ID header or query value), in characters.
MAX_CURSOR: Final = 65_536
#: Most runs one cursor names; entries beyond it are ignored.
MAX_ENTRIES: Final = 1024


def format_cursor(seqs: Mapping[str, int]) -> str:
    """The cursor text of per-run seqs (empty string for none).

    Args:
        seqs: the highest seq the client holds, per training id.
    """
    return ",".join(f"{tid}:{seq}" for tid, seq in sorted(seqs.items()))


def parse_cursor(text: str | None) -> dict[str, int]:
    """Per-run seqs from a cursor; malformed entries are left out.

    Args:
        text: a ``Last-Event-ID`` value (None or empty: nothing held).

    Returns:
        training id -> seq (an integer >= 0). An id named twice keeps the
        larger seq.
    """
    if not text or len(text) > MAX_CURSOR:
        return {}
    seqs: dict[str, int] = {}
    for entry in text.split(",", MAX_ENTRIES)[:MAX_ENTRIES]:
        tid, sep, seq_text = entry.strip().rpartition(":")
        if not sep or not seq_text.isdigit() or len(seq_text) > 19:
            continue
        try:
            validate_training_id(tid)
        except InvalidTrainingId:
            continue
        seq = int(seq_text)
        if seq > seqs.get(tid, -1):
            seqs[tid] = seq
    return seqs
