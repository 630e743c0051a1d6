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
  attributes) and folded from it (:meth:`LineFolder._fold_structs`);
* a line msgspec does not take (a field it does not know, an integer past
  64 bits, a checkpoint line, anything else) is read with ``orjson.loads``
  and folded from the dict if it is a common line all the same
  (:meth:`~pulse_core._dictfold.DictFolder._fold_dicts`); the lines after it
  too, for a run that doubles while msgspec takes none (a log whose every
  line has a field msgspec does not know is read as fast as before).

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

from pulse_core._dictfold import BATCH, EMPTY, NOBODY, DictFolder, common_metrics, floats
from pulse_core._linetype import DECODER, NOT_COMMON, UNSET, CommonMetrics, CommonProgress
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
            after = self._fold_structs(lines, i, floor)
            if after > i:
                i, run = after, 1
                if i >= end:
                    break
            after = self._fold_dicts(lines, i, min(i + run, end), floor)
            if after == i:
                break
            i, run = after, min(2 * run, _DICT_RUN)
        return i

    def _fold_structs(self, lines: Sequence[bytes], start: int, floor: int) -> int:
        """Fold ``lines[start:]`` from msgspec's structs, up to the first not folded.

        A line not folded here may still be a common line (the module doc):
        :meth:`fold_block` tries it with orjson.
        """
        acc = self._acc
        owner, last, bar, events, latest, epoch, total_epochs, step, total_steps = self._hoist(
            floor
        )
        batch = self._batch
        shaped, want_loss, names, bounds = batch.shaped, batch.loss, batch.names, batch.bounds
        stamp, lose, add_extra = batch.stamps.append, batch.losses.append, batch.extras.append
        add_low, add_high = batch.lows.append, batch.highs.append
        decode_line, count, i, end = _DECODE, 0, start, len(lines)
        progress, metrics = CommonProgress, CommonMetrics
        try:
            while True:
                if i >= end:
                    break
                try:
                    obj = decode_line(lines[i])
                except NOT_COMMON:
                    break
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
