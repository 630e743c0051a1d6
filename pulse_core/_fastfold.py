"""The fast fold: common log lines folded straight from their decoded lines.

A whole-log read that wants only the final state (``pulse replay``, cold
recovery, ``load_run``) spent most of its time building event objects
(:mod:`pulse_core._structure`) that the reducer read once and dropped. Here
the common lines -- ``progress``, ``metrics`` and ``heartbeat`` of the run
being folded, and the ``state_checkpoint`` lines the reducer skips -- are
folded into the reducer's own accumulator (:class:`LineFolder` is a
:class:`~pulse_core.reducer.Folder`), in two ways:

* most lines are decoded by msgspec into a struct of their exact shape
  (:mod:`pulse_core._linetype`: the JSON types checked in C, fields read as
  attributes);
* a line msgspec does not take (a field it does not know, an integer past
  64 bits, a checkpoint line, anything else) is read with ``orjson.loads``
  and, if it is a common line all the same, made the struct msgspec would
  have given (:meth:`~pulse_core._dictfold.DictFolder._read_dict`); the
  lines after it too, for a run that doubles while msgspec takes none (a log
  whose every line has a field msgspec does not know is still read fast);

and either way the structs are folded by one loop
(:meth:`LineFolder._fold`).

An optimisation, never a second set of rules: a line is folded here only when
it is exactly the common shape -- every field of the right JSON type, protocol
version 2, the run's own (already validated) training_id, a seq above the last
one, a run started and not ended. Anything else (another type, an odd, missing
or mistyped field, an integer where a float is expected, a duplicate or late
seq, the run's first event, a bad line) is left untouched: the caller decodes
it and applies it the ordinary way (``Folder.apply(decode(line))``). Where it
folds, it does what ``_Acc.apply`` does for that event, calling the
reducer's own steps where they are not the per-value hot path; a property test
(``tests/core/test_fastfold.py``) folds arbitrary and hostile lines both ways.

Private to the core; must never import I/O modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Final

from pulse_core._dictfold import NOBODY, STOP, Checkpoint, DictFolder, Read
from pulse_core._linetype import DECODER, UNSET, CommonMetrics, CommonProgress
from pulse_core._metricfold import BATCH, EMPTY, common_metrics, floats
from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.reducer import INITIAL_STATE
from pulse_core.state import RunState

_DECODE: Final = DECODER.decode
#: Metrics lines batched before their values are folded (a bound on the memory held).
_BATCH: Final = BATCH
#: The longest run of lines read as dicts before msgspec is tried again (fold_block).
_DICT_RUN: Final = 256


class LineFolder(DictFolder):
    """A :class:`~pulse_core.reducer.Folder` that also folds raw log lines (module doc).

    Attributes:
        folded: events folded from their lines (checkpoint lines not counted).
    """

    __slots__ = ()

    def fold_line(self, line: bytes, floor: int = 0) -> bool:
        """Fold one log line if it is a common event of exactly the common shape.

        Args:
            line: one line of a log, without its newline.
            floor: only seqs above this are folded (a follower's already-read seqs).

        Returns:
            True if the line was folded (or is a valid checkpoint line, which
            changes nothing); False if nothing was done: decode it and apply
            it the ordinary way (it may be a bad line).
        """
        return self.fold_block((line,), 0, floor) == 1

    def fold_block(self, lines: Sequence[bytes], start: int = 0, floor: int = 0) -> int:
        """Fold ``lines[start:]`` up to the first that is not a common line (:meth:`fold_line`).

        Args:
            lines: lines of a log, without their newlines.
            start: the index of the first line to fold.
            floor: only seqs above this are folded (a follower's already-read seqs).

        Returns:
            The index of the first line not folded (``len(lines)`` if none):
            decode it and apply it the ordinary way, then fold on after it.
        """
        if self._owner is NOBODY and not self._open(self._acc.training_id):
            return start
        # After a line msgspec does not take, the next ones are likely alike (a
        # field it does not know on every line, say): they are read as dicts
        # for a run of lines that doubles while msgspec takes none of them.
        i, end, run = start, len(lines), 1
        while i < end:
            after = self._fold(lines, i, end, floor, _DECODE)
            if after > i:
                i, run = after, 1
                if i >= end:
                    break
            after = self._fold(lines, i, min(i + run, end), floor, self._read_dict)
            if after == i:
                break
            i, run = after, min(2 * run, _DICT_RUN)
        return i

    def _fold(self, lines: Sequence[bytes], start: int, end: int, floor: int, read: Read) -> int:
        """Fold ``lines[start:end]`` from their structs, up to the first not folded.

        Args:
            lines: lines of a log, without their newlines.
            start: the index of the first line to fold.
            end: the index after the last line to fold.
            floor: only seqs above this are folded (a follower's already-read seqs).
            read: gives a line's struct (:data:`~pulse_core._dictfold.Read`:
                msgspec's decoder, or the dict way); raises one of ``STOP``
                for a line not of a common shape, ``Checkpoint`` for a line
                skipped.

        Returns:
            The index of the first line not folded (*end* if none). The caller
            has checked that the run's lines may be folded (:meth:`_open`).
        """
        acc = self._acc
        owner, last, bar, events, latest, epoch, total_epochs, step, total_steps = self._hoist(
            floor
        )
        batch = self._batch
        shaped, want_loss, names, bounds = batch.shaped, batch.loss, batch.names, batch.bounds
        stamp, lose, add_extra = batch.stamps.append, batch.losses.append, batch.extras.append
        add_low, add_high = batch.lows.append, batch.highs.append
        stop, count, i = STOP, 0, start
        progress, metrics = CommonProgress, CommonMetrics
        try:
            # Not ``while i < end``: 3.11 specializes a function's bytecode only
            # after a few unconditional backward jumps, which that loop lacks.
            while True:
                if i >= end:
                    break
                try:
                    obj = read(lines[i])
                except stop:
                    break
                except Checkpoint:
                    i += 1
                    continue
                seq, ts = obj.seq, obj.timestamp
                if ts.__class__ is not float or seq <= bar or obj.training_id != owner:
                    break
                kind = obj.__class__
                batched = False
                if kind is metrics:
                    loss, extra = obj.loss, obj.extra
                    if (
                        shaped
                        and (loss.__class__ is float if want_loss else loss is None)
                        and (
                            extra is UNSET
                            if names is None
                            else extra is not UNSET and extra.keys() == names
                        )
                        and (
                            obj.min is UNSET and obj.max is UNSET
                            if bounds is None
                            else (lows := obj.min) is not UNSET
                            and (highs := obj.max) is not UNSET
                            and lows.keys() == bounds
                            and highs.keys() == bounds
                        )
                        and obj.time_per_epoch is None
                        and obj.samples_per_second is None
                        and obj.tokens_per_second is None
                        and obj.names_dropped is None
                    ):
                        batched = True
                        if names is not None:
                            for item in extra.values():
                                if item.__class__ is not float:
                                    batched = False
                                    break
                        if bounds is not None and batched:
                            batched = floats(lows) and floats(highs)
                    if not batched:
                        line = _as_dict(obj)
                        extra = EMPTY if extra is UNSET else extra
                        if not common_metrics(line, loss, extra):
                            break
                # Folded: _Acc.apply's envelope step, then the event's own step.
                count += 1
                if seq != last + 1:
                    acc._gap(last, seq)  # the reducer's own step
                last = bar = seq
                events += 1
                if latest is None or ts > latest:
                    latest = ts
                i += 1
                if kind is progress:
                    if (value := obj.epoch) is not None:
                        epoch = value
                    if (value := obj.total_epochs) is not None:
                        total_epochs = value
                    if (value := obj.step) is not None:
                        step = value
                    if (value := obj.total_steps) is not None:
                        total_steps = value
                elif batched:
                    stamp(ts)
                    if want_loss:
                        lose(loss)
                    if names is not None:
                        add_extra(extra)
                    if bounds is not None:
                        add_low(lows)
                        add_high(highs)
                    if len(batch.stamps) >= _BATCH:
                        self._flush()
                elif kind is metrics:
                    self._flush()
                    self._metrics(line, seq, ts, loss, extra)
                    shaped, want_loss, names = batch.shaped, batch.loss, batch.names
                    bounds = batch.bounds
        finally:
            self._store(count, last, events, latest, epoch, total_epochs, step, total_steps)
        return i

    def _hoist(self, floor: int) -> tuple[Any, ...]:
        """What every common line changes, as the fold loop's locals, with its seq bar.

        The loop writes them back with :meth:`_store` (the steps it calls never read them).
        """
        acc, last = self._acc, self._acc.last_seq
        fields = (acc.event_count, acc.last_event_at, acc.epoch, acc.total_epochs, acc.step)
        return (self._owner, last, max(last, floor), *fields, acc.total_steps)

    def _store(self, count: int, *fields: Any) -> None:
        """Write back the fold loop's locals (:meth:`_hoist`) once it folded *count* lines."""
        if count:
            acc = self._acc
            self._cached = None
            self.folded += count
            (acc.last_seq, acc.event_count, acc.last_event_at, acc.epoch) = fields[:4]
            acc.total_epochs, acc.step, acc.total_steps = fields[4:]

    def unfolded(self, lines: Sequence[bytes], floor: int = 0) -> Iterator[int]:
        """Fold *lines* (:meth:`fold_block`), yielding the index of each line not folded.

        The caller decodes and applies (or reports) that line before it asks
        for the next one: folding goes on from the state it leaves.
        """
        i, end = 0, len(lines)
        while True:
            i = self.fold_block(lines, i, floor)
            if i >= end:
                return
            yield i
            i += 1


def _as_dict(obj: Any) -> dict[str, Any]:
    """The fields a metrics struct was given, as orjson's dict of its line has them."""
    out: dict[str, Any] = {"type": "metrics"}
    for name in obj.__struct_fields__:
        value = getattr(obj, name)
        if value is not None and value is not UNSET:
            out[name] = value
    return out


def fold_lines(lines: Iterable[bytes], state: RunState = INITIAL_STATE) -> RunState:
    """Fold log lines into *state*: ``Folder.apply(decode(line))`` for every line that decodes.

    Lines that do not decode are skipped (a caller that reports them reads
    the log with a follower).
    """
    folder = LineFolder(state)
    pieces = lines if isinstance(lines, list) else list(lines)
    for i in folder.unfolded(pieces):
        with contextlib.suppress(DecodeError):
            folder.apply(decode(pieces[i]))
    return folder.state
