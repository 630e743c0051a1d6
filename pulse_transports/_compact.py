"""Compaction of a run's JSONL log: which lines stay, and the rewrite itself.

This module owns the choice of lines a compacted log keeps (:func:`compact_lines`)
and the rewrite of a log into ``<log>.tmp`` (:func:`write_compacted`). The file
transport (:mod:`pulse_transports.file`) decides when to compact, renames the
temp file over the log and reopens it.

A big log is compacted out of process: ``python -m pulse_transports._compact
LOG TARGET PARENT_PID`` reads the log, writes and fsyncs ``LOG.tmp``, renames it
over ``LOG`` and prints ``{"kept": lines, "before": bytes, "after": bytes}``.
Decoding a multi-MiB log holds the GIL for long stretches and makes garbage;
in a fresh interpreter that work never reaches the training thread (the
writer thread waits for the child without the GIL). The child inherits the
run's lock fd, so a new writer cannot take the run while the child may still
rename; and it renames nothing once the writer that started it is gone. It
lowers its own CPU priority (``nice``) so that it yields a shared core to training.

Imports no pulse_transports module but the file helpers (:mod:`~pulse_transports._logfile`):
the child imports little more than this one.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Final

import orjson

from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.events import Event, Heartbeat, Metrics, Progress, StateCheckpoint
from pulse_transports._logfile import discard, replace, write_file

_SAMPLES: Final = (Progress, Metrics)
#: Exit code of a child whose parent (the writer) is gone before the rename.
ORPHANED: Final = 3
#: How much the child lowers its CPU priority.
NICENESS: Final = 10


def tmp_path(path: Path) -> Path:
    """The temp file a compaction writes beside *path* before renaming it over."""
    return path.with_name(path.name + ".tmp")


def compact_lines(lines: list[bytes], target: int) -> list[bytes]:
    """Choose the lines a compacted log keeps, in their original order.

    Every line that is not progress, metrics or heartbeat is kept (bad lines
    are dropped); progress and metrics are downsampled in fixed buckets to fit
    *target* bytes; only the last heartbeat is kept; checkpoints are dropped
    (their line counts no longer hold; the writer appends a new one). Deterministic.
    """
    essential: list[int] = []
    samples: list[tuple[int, Event]] = []
    last_heartbeat = -1
    for index, line in enumerate(lines):
        try:
            event = decode(line)
        except DecodeError:
            continue
        if isinstance(event, _SAMPLES):
            samples.append((index, event))
        elif isinstance(event, Heartbeat):
            last_heartbeat = index
        elif isinstance(event, StateCheckpoint):
            continue  # the writer appends a fresh one right after compacting
        else:
            essential.append(index)
    if last_heartbeat >= 0:
        essential.append(last_heartbeat)
    essential_bytes = sum(len(lines[i]) + 1 for i in essential)
    budget = max(target - essential_bytes, target // 4)
    keep = set(essential)
    if samples:
        average = sum(len(lines[i]) + 1 for i, _ in samples) / len(samples)
        room = max(int(budget / average), 4)
        if room >= len(samples):
            keep.update(i for i, _ in samples)
        else:
            # Buckets are equal ranges of seq (not of line count), so a run
            # compacted many times keeps an even resolution over its whole
            # length. Each bucket keeps up to 5 lines: the last progress and
            # the first, last, lowest- and highest-loss metrics.
            buckets = max(room // 5, 1)
            first_seq, last_seq = samples[0][1].seq, samples[-1][1].seq
            span = max(last_seq - first_seq + 1, 1)
            grouped: dict[int, list[tuple[int, Event]]] = {}
            for item in samples:
                grouped.setdefault((item[1].seq - first_seq) * buckets // span, []).append(item)
            for bucket in grouped.values():
                keep.update(_bucket_keep(bucket))
    return [lines[i] for i in sorted(keep)]


def _bucket_keep(bucket: list[tuple[int, Event]]) -> set[int]:
    progress = [i for i, e in bucket if isinstance(e, Progress)]
    metrics = [(i, e) for i, e in bucket if isinstance(e, Metrics)]
    chosen: set[int] = set()
    if progress:
        chosen.add(progress[-1])
    if metrics:
        chosen.add(metrics[0][0])
        chosen.add(metrics[-1][0])
        with_loss = [
            (e.loss, i) for i, e in metrics if isinstance(e, Metrics) and e.loss is not None
        ]
        if with_loss:
            chosen.add(min(with_loss)[1])
            chosen.add(max(with_loss)[1])
    return chosen


def write_compacted(path: Path, target: int) -> tuple[int, int, int]:
    """Write the compacted *path* to its temp file and fsync it (no rename).

    Returns:
        (lines kept, bytes before, bytes after). On an error the temp file is
        removed and the log is untouched.
    """
    data = path.read_bytes()
    kept = compact_lines(data.splitlines(), target=target)
    body = b"".join(line + b"\n" for line in kept)
    write_file(tmp_path(path), body)
    return len(kept), len(data), len(body)


def main(argv: list[str]) -> int:
    """The child's entry: compact LOG to TARGET bytes and rename, if PARENT_PID lives."""
    path, target, parent = Path(argv[0]), int(argv[1]), int(argv[2])
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICENESS)  # background work: the training process comes first
    kept, before, after = write_compacted(path, target)
    tmp = tmp_path(path)
    if os.getppid() != parent:
        # The writer died while we worked: a new writer may be about to append
        # to the old log; leave it whole (the inherited lock is released on exit).
        discard(tmp)
        return ORPHANED
    replace(tmp, path)
    sys.stdout.buffer.write(orjson.dumps({"kept": kept, "before": before, "after": after}))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
