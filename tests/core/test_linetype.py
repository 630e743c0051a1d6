"""The fast fold's msgspec shapes: every line they take folds as the ordinary path does.

The lines here are written by hand: the spellings JSON allows for one value
(escapes, number forms, duplicate keys) and the values where msgspec and
orjson could part (integers past 64 bits, integers where floats go, ``null``,
nesting deeper than the interpreter's stack).
"""

from __future__ import annotations

from unittest import mock

import orjson
import pytest
from foldcheck import slow_fold
from hypothesis import given
from hypothesis import strategies as st

from pulse_core import _fastfold
from pulse_core._dictfold import DictFolder
from pulse_core._fastfold import LineFolder, fold_lines
from pulse_core._linetype import DECODER, NOT_COMMON, CommonMetrics
from pulse_core.codec import decode, encode
from pulse_core.events import Event, Heartbeat, Metrics, Progress, RunMeta, StatusChanged
from pulse_core.reducer import replay

TID = "fast-run"
START: list[Event] = [RunMeta(TID, 1, 1.0), StatusChanged(TID, 2, 1.0, "running")]
HEAD = b'"training_id":"fast-run","v":2,'


def started() -> LineFolder:
    """A folder after the run's meta and running lines (decoded: they check the id)."""
    folder = LineFolder()
    for event in START:
        folder.apply(decode(encode(event)))
    return folder


def line(tag: str, seq: int | bytes, rest: bytes = b"", ts: bytes = b"2.0") -> bytes:
    """A line of *tag* of the run, with *rest* (JSON members) after its envelope."""
    number = seq if isinstance(seq, bytes) else str(seq).encode()
    body = b'{"type":"%s",%s"seq":%s,"timestamp":%s' % (tag.encode(), HEAD, number, ts)
    return body + (b"," + rest if rest else b"") + b"}"


def left_alone(raw: bytes) -> None:
    """*raw* after a started run: not folded, and the state is the ordinary path's."""
    folder = started()
    before = folder.state
    assert not folder.fold_line(raw), raw
    assert folder.state == before
    lines = [encode(event).rstrip(b"\n") for event in START] + [raw]
    assert fold_lines(lines) == slow_fold(lines)


class TestMsgspecTakesTheCommonLines:
    """The common lines are folded from msgspec's structs, not orjson's dicts."""

    def test_no_dict_for_common_lines(self) -> None:
        """Progress, metrics (batched or not) and heartbeat lines: folded with no dict read."""
        common: list[Event] = [
            Progress(TID, 3, 2.0, epoch=1, step=5, total_steps=9),
            Metrics(TID, 4, 2.0, loss=0.5, extra={"acc": 0.9}),
            Metrics(TID, 5, 2.5, loss=0.25, extra={"acc": 0.8}),  # batched
            Metrics(TID, 6, 3.0, loss=0.2, min={"loss": 0.1}, samples_per_second=4.0),
            Heartbeat(TID, 7, 3.0),
            Metrics(TID, 9, 4.0, names_dropped=2, time_per_epoch=1.5, max={"acc": 0.95}),
        ]
        folder = started()
        with mock.patch.object(DictFolder, "_read_dict", side_effect=AssertionError):
            for event in common:
                assert folder.fold_line(encode(event).rstrip(b"\n"))
        assert folder.folded == len(common)
        assert folder.state == replay([*START, *common])

    def test_the_dict_way_folds_the_rest(self) -> None:
        """A field msgspec does not know, a seq past int64: folded from orjson's dict."""
        lines = [
            line("progress", 3, b'"epoch":1,"note":"x"'),
            line("heartbeat", 4, b'"unknown_field":[1]'),
            line("progress", 2**63 + 5),  # orjson reads it as an int, up to 2**64 - 1
        ]
        for raw in lines:
            with pytest.raises(NOT_COMMON):
                DECODER.decode(raw)
        folder = started()
        for raw in lines:
            assert folder.fold_line(raw), raw
        assert folder.folded == 3
        every = [encode(event).rstrip(b"\n") for event in START] + lines
        assert fold_lines(every) == slow_fold(every)

    def test_the_dict_way_reads_every_field(self) -> None:
        """Every field of a progress and a metrics line read as dicts lands as from msgspec."""
        metrics = (
            b'"loss":0.5,"time_per_epoch":1.5,"samples_per_second":2.5,"tokens_per_second":3.5,'
            b'"extra":{"acc":0.75},"min":{"loss":0.25},"max":{"acc":0.875},"names_dropped":4,'
        )
        lines = [
            line("progress", 3, b'"epoch":1,"total_epochs":5,"step":7,"total_steps":90,"x":0'),
            line("metrics", 4, metrics + b'"x":0'),
        ]
        folder = started()
        for raw in lines:
            assert folder.fold_line(raw), raw
        assert folder.folded == 2
        every = [encode(event).rstrip(b"\n") for event in START] + lines
        assert folder.state == fold_lines(every) == slow_fold(every)

    def test_checkpoint_lines_of_the_run_are_passed_over(self) -> None:
        """A checkpoint line of the run that decodes is folded (nothing changes); no other is."""
        good = line("state_checkpoint", 2, b'"format":"1","state":{},"lines":2')
        folder = started()
        before = folder.state
        assert folder.fold_line(good)
        assert (folder.state, folder.folded) == (before, 0)
        lines = [line("progress", 3, b'"step":1'), good, line("progress", 4, b'"step":2')]
        assert folder.fold_block(lines) == len(lines)
        assert (folder.state.step, folder.folded) == (2, 2)
        left_alone(line("state_checkpoint", 2, b'"format":1,"state":{},"lines":2'))

    def test_msgspec_rarely_tried_where_it_takes_nothing(self) -> None:
        """Lines all with a field msgspec does not know: read as dicts, msgspec tried rarely."""
        lines = [line("progress", seq, b'"step":%d,"rank":0' % seq) for seq in range(3, 1003)]
        tried = mock.Mock(side_effect=DECODER.decode)
        folder = started()
        with mock.patch.object(_fastfold, "_DECODE", tried):
            assert folder.fold_block(lines) == len(lines)
        assert tried.call_count <= 20  # runs of 1, 2, 4, ... 256 lines between tries
        assert folder.state.step == 1002
        assert folder.folded == len(lines)

    def test_msgspec_tried_again_after_a_lone_odd_line(self) -> None:
        """A lone line msgspec does not take (a checkpoint's, say): the next is its again."""
        lines = []
        for seq in range(3, 63):
            odd = b',"rank":0' if seq % 3 == 0 else b""
            lines.append(line("progress", seq, b'"step":%d%s' % (seq, odd)))
        tried = mock.Mock(side_effect=DECODER.decode)
        folder = started()
        with mock.patch.object(_fastfold, "_DECODE", tried):
            assert folder.fold_block(lines) == len(lines)
        assert tried.call_count == len(lines)
        assert (folder.state.step, folder.folded) == (62, len(lines))


class TestLinesLeftToTheDecoder:
    """Where msgspec would take a value the ordinary decoder does not keep as it is."""

    def test_integer_past_64_bits(self) -> None:
        """orjson reads it as a float (the decoder refuses it): msgspec would keep an int."""
        for raw in (
            line("progress", 3, b'"epoch":%d' % 10**30),
            line("progress", 3, b'"step":%d' % -(10**30)),
            line("progress", 10**30),
            line("metrics", 3, b'"loss":0.5,"names_dropped":%d' % 10**30),
        ):
            left_alone(raw)

    def test_integer_where_a_float_goes(self) -> None:
        """msgspec makes a float of an int for a float field: the decoder's, not the fold's."""
        for raw in (
            line("progress", 3, ts=b"2"),
            line("metrics", 3, b'"loss":1'),
            line("metrics", 3, b'"samples_per_second":5'),
            line("metrics", 3, b'"extra":{"acc":1}'),
            line("metrics", 3, b'"loss":0.5,"min":{"loss":0}'),
        ):
            left_alone(raw)

    def test_version_exactly_two(self) -> None:
        """``v`` 2.0, true, "2" or 3: the ordinary path."""
        for version in (b"2.0", b"true", b'"2"', b"3"):
            left_alone(line("progress", 3).replace(b'"v":2', b'"v":' + version))

    def test_null_where_absence_is_not_meant(self) -> None:
        """``extra``, ``min``, ``max`` null: the decoder's to refuse, not an empty object."""
        for name in (b"extra", b"min", b"max"):
            left_alone(line("metrics", 3, b'"loss":0.5,"%s":null' % name))

    def test_values_nested_too_deep(self) -> None:
        """msgspec raises RecursionError past the interpreter's depth: never out of the fold."""
        deep = b"[" * 100_000 + b"]" * 100_000
        left_alone(line("metrics", 3, b'"extra":{"acc":' + deep + b"}"))
        left_alone(line("progress", 3, b'"epoch":' + deep))


class TestSpellingsOfOneValue:
    """What JSON spells several ways is read as orjson (and so the decoder) reads it."""

    def test_duplicate_keys_keep_the_last(self) -> None:
        """``"epoch":1,"epoch":2`` is epoch 2, as orjson reads it; a duplicate type is left."""
        lines = [encode(event).rstrip(b"\n") for event in START]
        lines += [
            line("progress", 3, b'"epoch":1,"epoch":2'),
            line("metrics", 4, b'"loss":1,"loss":0.5,"extra":{"a":0.1,"a":0.2}'),
            line("progress", 5, b'"step":"x","step":7'),
            line("progress", 6).replace(b'"type":"progress"', b'"type":"progress","type":"done"'),
            line("metrics", 7, b'"extra":{"z":0.1,"y":0.2,"z":0.3}'),  # z first, 0.3
        ]
        state = fold_lines(lines)
        assert repr(state) == repr(slow_fold(lines))
        assert (state.epoch, state.step) == (2, 7)
        assert list(state.metrics.items()) == [("loss", 0.5), ("a", 0.2), ("z", 0.3), ("y", 0.2)]

    def test_escapes(self) -> None:
        """Escaped keys, tags, ids and names are read unescaped."""
        lines = [encode(event).rstrip(b"\n") for event in START]
        lines += [
            b'{"typ\\u0065":"pro\\u0067ress","training_id":"fast\\u002drun","v":2,'
            b'"s\\u0065q":3,"timestamp":2.0,"epoch":4}',
            line("metrics", 4, b'"extra":{"\\u00e9\\n":0.5}'),
        ]
        folder = LineFolder(slow_fold(lines[:2]))
        assert folder.fold_block(lines[2:]) == 2
        assert folder.state == slow_fold(lines)
        assert folder.state.epoch == 4

    @given(
        st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,3})?\Z"),
        st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})\.[0-9]{1,30}([eE][+-]?[0-9]{1,3})?\Z"),
    )
    def test_number_spellings(self, value: str, stamp: str) -> None:
        """Any JSON number, as a value and a timestamp: the same floats both ways, exactly."""
        lines = [encode(event).rstrip(b"\n") for event in START]
        lines += [
            line("metrics", 3, b'"loss":0.5,"extra":{"acc":%s}' % value.encode(), stamp.encode()),
            line("metrics", 4, b'"loss":%s,"extra":{"acc":0.5}' % value.encode(), stamp.encode()),
        ]
        assert repr(fold_lines(lines)) == repr(slow_fold(lines))
        try:
            read = orjson.loads(value)
        except orjson.JSONDecodeError:
            return
        try:
            struct = DECODER.decode(line("metrics", 3, b'"loss":' + value.encode()))
        except NOT_COMMON:
            return
        assert isinstance(struct, CommonMetrics)
        if struct.loss.__class__ is float:  # an int (past 64 bits for orjson) is not folded
            assert repr(struct.loss) == repr(read)
