"""The codec: round trips, the fast path against cattrs, and DecodeError for bad input."""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    EVENT_TYPES,
    WIRE,
    events,
    events_of,
    json_values,
    names,
    realistic_timestamps,
)

from pulse_core.codec import (
    CLOUDEVENT_TYPE_PREFIX,
    MAX_LINE_BYTES,
    TAG_OF,
    TAGS,
    bound_event,
    converter,
    decode,
    encode,
    from_cloudevent,
    from_dict,
    to_cloudevent,
    to_dict,
)
from pulse_core.errors import DecodeError
from pulse_core.events import (
    KNOWN_EVENT_TYPES,
    Dropped,
    ErrorReported,
    Event,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StateCheckpoint,
    StatusChanged,
    UnknownEvent,
)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def wire_form(event: Event) -> Event:
    """What survives the wire: metric values JSON cannot carry (NaN, inf) are left out."""
    if not isinstance(event, Metrics):
        return event
    return attrs.evolve(
        event,
        loss=_finite(event.loss),
        time_per_epoch=_finite(event.time_per_epoch),
        samples_per_second=_finite(event.samples_per_second),
        tokens_per_second=_finite(event.tokens_per_second),
        extra={k: v for k, v in event.extra.items() if math.isfinite(v)},
    )


def rejects(function: Any, *args: Any) -> bool:
    """Tell whether calling *function* raises (any exception: cattrs raises many)."""
    try:
        function(*args)
    except Exception:  # noqa: BLE001 - the kind is checked by the DecodeError tests
        return True
    return False


def line(**fields: Any) -> bytes:
    """A wire line: a valid progress event, with *fields* replaced (None removes)."""
    obj: dict[str, Any] = {
        "type": "progress",
        "v": 2,
        "training_id": "run-1",
        "seq": 1,
        "timestamp": 1.5,
        "epoch": 1,
    }
    for key, value in fields.items():
        if value is None:
            obj.pop(key, None)
        else:
            obj[key] = value
    return orjson.dumps(obj)


every_type = pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__name__)


class TestRoundTrip:
    """Every event survives encode/decode and to_dict/from_dict."""

    @every_type
    @given(data=st.data())
    def test_encode_decode(self, cls: type[Any], data: st.DataObject) -> None:
        """decode(encode(e)) gives e back (non-finite metric values left out)."""
        event = data.draw(events_of(cls, WIRE))
        encoded = encode(event)
        assert encoded.endswith(b"\n")
        assert encoded.count(b"\n") == 1
        assert decode(encoded) == wire_form(event)
        assert decode(encoded.decode("utf-8")) == wire_form(event)

    @every_type
    @given(data=st.data())
    def test_to_dict_from_dict(self, cls: type[Any], data: st.DataObject) -> None:
        """from_dict(to_dict(e)) gives e back, and the wire object is plain JSON."""
        event = data.draw(events_of(cls, WIRE))
        obj = to_dict(event)
        assert next(iter(obj)) == "type"
        assert from_dict(obj) == wire_form(event)
        assert from_dict(orjson.loads(orjson.dumps(obj))) == wire_form(event)

    @given(events(WIRE))
    def test_tags_are_stable(self, event: Event) -> None:
        """The type tag comes from the one table, never the class name."""
        obj = to_dict(event)
        if isinstance(event, UnknownEvent):
            assert obj["type"] == event.type
        else:
            assert obj["type"] == TAG_OF[type(event)]
            assert TAGS[obj["type"]] is type(event)

    def test_tag_table(self) -> None:
        """The seven run event types and the log's state checkpoint have the documented tags."""
        assert dict(TAGS) == {
            "meta": RunMeta,
            "status": StatusChanged,
            "progress": Progress,
            "metrics": Metrics,
            "error": ErrorReported,
            "heartbeat": Heartbeat,
            "dropped": Dropped,
            "state_checkpoint": StateCheckpoint,
        }
        assert set(TAGS.values()) == {*KNOWN_EVENT_TYPES, StateCheckpoint}

    def test_unsaid_fields_left_out(self) -> None:
        """None and empty optional fields are not written."""
        assert to_dict(Progress("r", 3, 2.5, epoch=1)) == {
            "type": "progress",
            "training_id": "r",
            "seq": 3,
            "timestamp": 2.5,
            "epoch": 1,
            "v": 2,
        }
        assert "labels" not in to_dict(RunMeta("r", 1, 1.0))
        assert "extra" not in to_dict(Metrics("r", 1, 1.0, loss=0.5))

    def test_non_finite_metrics_left_out(self) -> None:
        """NaN and infinities are not written: the line stays decodable JSON."""
        event = Metrics(
            "r",
            1,
            1.0,
            loss=math.nan,
            samples_per_second=math.inf,
            tokens_per_second=12.0,
            extra={"a": -math.inf, "b": 2.0, "c": math.nan},
        )
        encoded = encode(event)
        assert b"null" not in encoded
        assert decode(encoded) == Metrics("r", 1, 1.0, tokens_per_second=12.0, extra={"b": 2.0})
        only_bad = Metrics("r", 1, 1.0, extra={"a": math.nan})
        assert "extra" not in to_dict(only_bad)


class TestFastPathAgreesWithCattrs:
    """The generated structure functions and the cattrs converter agree."""

    @given(st.sampled_from(KNOWN_EVENT_TYPES).flatmap(lambda cls: events_of(cls, WIRE)))
    def test_valid_objects(self, event: Event) -> None:
        """On every valid wire object both build the same event."""
        obj = to_dict(event)
        assert from_dict(obj) == converter.structure(obj, type(event))

    @given(st.sampled_from(KNOWN_EVENT_TYPES).flatmap(lambda cls: events_of(cls, WIRE)))
    def test_ints_for_floats(self, event: Event) -> None:
        """A JSON integer where a number is expected becomes the same float on both paths."""
        obj = to_dict(event)
        obj["timestamp"] = int(obj["timestamp"]) if abs(obj["timestamp"]) < 2**53 else 7
        fast, slow = from_dict(obj), converter.structure(obj, type(event))
        assert fast == slow
        assert type(fast.timestamp) is float

    @given(
        st.sampled_from(KNOWN_EVENT_TYPES).flatmap(lambda cls: events_of(cls, WIRE)),
        st.data(),
    )
    def test_wrong_types_rejected_by_both(self, event: Event, data: st.DataObject) -> None:
        """A field of the wrong JSON type is refused by both paths."""
        cls = type(event)
        field = data.draw(st.sampled_from([f for f in attrs.fields(cls) if f.name != "v"]))
        bad = data.draw(st.sampled_from(_wrong_values(field)))
        obj = to_dict(event)
        obj[field.name] = bad
        with pytest.raises(DecodeError):
            from_dict(obj)
        assert rejects(converter.structure, obj, cls)


def _wrong_values(field: attrs.Attribute[Any]) -> list[Any]:
    """JSON values of the wrong type for *field* (bools for ints, strings for bools...)."""
    base: Any = field.type
    optional = typing.get_origin(base) in (types.UnionType, typing.Union)
    if optional:
        base = next(m for m in typing.get_args(base) if m is not type(None))
    missing: list[Any] = [] if optional else [None]
    if typing.get_origin(base) is Mapping:
        return [[], "x", 1, *missing]
    wrong: dict[Any, list[Any]] = {
        int: [True, False, 1.5, "1", [1]],
        float: [True, "1.0", [1.0], {}],
        bool: [1, 0, "true", "false"],
        str: [1, True, ["a"], {}],
    }
    return [*wrong[base], *missing]


HOSTILE_IDS = [
    ("../x", "characters outside"),
    ("", "must not be empty"),
    ("a" * 10_000, "10000 characters long"),
    ("a\x00b", "characters outside"),
    ("-leading", "does not start with"),
    ("a/b", "characters outside"),
    ("run 1", "characters outside"),
    ("é", "characters outside"),
    (5, "must be a string, got int"),
    (["a"], "must be a string, got list"),
]

MALFORMED = [
    pytest.param(b"not json", "not valid JSON", id="not-json"),
    pytest.param(b"", "not valid JSON", id="empty"),
    pytest.param(b"\xff\xfe", "not valid JSON", id="not-utf8"),
    pytest.param(b'{"type": "progress"', "not valid JSON", id="truncated"),
    pytest.param(b"[1, 2]", "must be a JSON object, got list", id="array"),
    pytest.param(b'"progress"', "must be a JSON object, got str", id="string"),
    pytest.param(b"null", "must be a JSON object, got NoneType", id="null"),
    pytest.param(b"12", "must be a JSON object, got int", id="number"),
    pytest.param(line(seq=None), "$.seq", id="missing-seq"),
    pytest.param(line(timestamp=None), "$.timestamp", id="missing-timestamp"),
    pytest.param(line(training_id=None), "training_id", id="missing-training_id"),
    pytest.param(line(type="status"), "$.status", id="missing-status"),
    pytest.param(line(type="error", message="m"), "$.error_code", id="missing-error_code"),
    pytest.param(line(type="dropped"), "$.count", id="missing-count"),
    pytest.param(line(seq=True), "$.seq", id="bool-for-int"),
    pytest.param(line(seq="1"), "$.seq", id="string-for-int"),
    pytest.param(line(seq=1.0), "$.seq", id="float-for-int"),
    pytest.param(
        line().replace(b'"seq":1', b'"seq":18446744073709551616'), "$.seq", id="int-beyond-64-bits"
    ),
    pytest.param(line(epoch=1.5), "$.epoch", id="float-epoch"),
    pytest.param(line(timestamp="now"), "$.timestamp", id="string-timestamp"),
    pytest.param(line(timestamp=True), "$.timestamp", id="bool-timestamp"),
    pytest.param(
        line(type="error", error_code="X", message="m", is_retryable="true"),
        "$.is_retryable",
        id="string-for-bool",
    ),
    pytest.param(
        line(type="error", error_code="X", message="m", is_retryable=1),
        "$.is_retryable",
        id="int-for-bool",
    ),
    pytest.param(
        line(type="error", error_code="X", message="m", details=[1]),
        "$.details",
        id="list-details",
    ),
    pytest.param(line(type="metrics", loss="0.5"), "$.loss", id="string-loss"),
    pytest.param(line(type="metrics", extra={"acc": "x"}), "$.extra", id="string-extra"),
    pytest.param(line(type="metrics", extra={"acc": None}), "$.extra", id="null-extra"),
    pytest.param(line(type="metrics", extra=[1]), "$.extra", id="list-extra"),
    pytest.param(line(type="meta", labels={"a": 1}), "$.labels", id="int-label"),
    pytest.param(line(type="status", status=7), "$.status", id="int-status"),
    pytest.param(line(type="status", status="running", message=None), None, id="ok"),
    pytest.param(line(v=None), "field 'v'", id="v-missing"),
    pytest.param(line(v=1), "field 'v' must be an integer >= 2, got 1", id="v-1"),
    pytest.param(line(v="2"), "field 'v'", id="v-string"),
    pytest.param(line(v=2.0), "field 'v'", id="v-float"),
    pytest.param(line(v=True), "field 'v'", id="v-bool"),
    pytest.param(line(type=None), "field 'type'", id="type-missing"),
    pytest.param(line(type=""), "field 'type'", id="type-empty"),
    pytest.param(line(type=["progress"]), "field 'type'", id="type-list"),
    pytest.param(line(type={"a": 1}), "field 'type'", id="type-object"),
    pytest.param(line(type=3), "field 'type'", id="type-int"),
    pytest.param(line(type="gpu", seq="1"), "'seq' (integer)", id="unknown-bad-seq"),
    pytest.param(line(type="gpu", timestamp=None), "'timestamp' (number)", id="unknown-no-ts"),
]


class TestMalformed:
    """Anything that is not a valid event raises DecodeError naming the problem."""

    @pytest.mark.parametrize(("raw", "expected"), MALFORMED)
    def test_named_problem(self, raw: bytes, expected: str | None) -> None:
        """The message says what is wrong; the offending line rides along."""
        if expected is None:
            assert isinstance(decode(raw), StatusChanged)
            return
        with pytest.raises(DecodeError) as info:
            decode(raw)
        assert expected in str(info.value)
        assert info.value.line == raw[:200]

    @pytest.mark.parametrize(("training_id", "expected"), HOSTILE_IDS)
    def test_hostile_training_id(self, training_id: object, expected: str) -> None:
        """An unsafe training_id is refused before anything is built from it."""
        raw = line(training_id=training_id)
        with pytest.raises(DecodeError) as info:
            decode(raw)
        assert "bad training_id" in str(info.value)
        assert expected in str(info.value)
        assert len(str(info.value)) < 300

    def test_error_line_truncated(self) -> None:
        """DecodeError keeps at most 200 characters of the line."""
        raw = line(training_id="a" * 10_000)
        with pytest.raises(DecodeError) as info:
            decode(raw)
        assert info.value.line == raw[:200]

    def test_lone_surrogate_text(self) -> None:
        """A str line that is not valid UTF-8 is a DecodeError."""
        with pytest.raises(DecodeError, match="not valid JSON"):
            decode('{"type": "\ud800"}')

    def test_from_dict_non_object(self) -> None:
        """from_dict refuses anything but a dict."""
        values: list[Any] = [[], "x", 1, None, 1.5, True]
        for value in values:
            with pytest.raises(DecodeError, match="must be a JSON object"):
                from_dict(value)

    @given(st.binary(max_size=200))
    def test_arbitrary_bytes(self, raw: bytes) -> None:
        """Arbitrary bytes decode to an event or raise DecodeError, nothing else."""
        try:
            event = decode(raw)
        except DecodeError:
            return
        assert isinstance(event, (*KNOWN_EVENT_TYPES, UnknownEvent))

    @given(st.text(max_size=200))
    def test_arbitrary_text(self, raw: str) -> None:
        """Arbitrary text decodes to an event or raises DecodeError, nothing else."""
        try:
            event = decode(raw)
        except DecodeError:
            return
        assert isinstance(event, (*KNOWN_EVENT_TYPES, UnknownEvent))

    @given(
        st.dictionaries(
            st.sampled_from(
                [
                    "type",
                    "v",
                    "training_id",
                    "seq",
                    "timestamp",
                    "status",
                    "epoch",
                    "loss",
                    "extra",
                    "labels",
                    "count",
                    "error_code",
                    "message",
                    "details",
                    "is_retryable",
                ]
            )
            | names,
            st.sampled_from(["progress", "status", "gpu", "run-1", 2, 1, 0.5, True]) | json_values,
            max_size=8,
        )
    )
    def test_arbitrary_objects(self, obj: dict[str, Any]) -> None:
        """Arbitrary JSON objects decode to an event or raise DecodeError."""
        raw = orjson.dumps(obj)
        for index in range(2):
            try:
                event = from_dict(obj) if index == 0 else decode(raw)
            except DecodeError:
                continue
            assert event.training_id == obj["training_id"]

    @given(events(WIRE), st.data())
    def test_mutated_valid_objects(self, event: Event, data: st.DataObject) -> None:
        """A valid object with one field replaced or removed decodes or raises DecodeError."""
        obj = to_dict(event)
        key = data.draw(st.sampled_from(sorted(obj)))
        if data.draw(st.booleans()):
            del obj[key]
        else:
            obj[key] = data.draw(json_values)
        try:
            decoded = decode(orjson.dumps(obj))
        except DecodeError:
            return
        assert decoded.training_id == obj["training_id"]


class TestForwardCompatibility:
    """Unknown types and fields are tolerated, never fatal."""

    def test_unknown_type_keeps_fields(self) -> None:
        """An unknown type becomes UnknownEvent with every non-envelope field in data."""
        raw = line(type="gpu_stats", epoch=None, util=0.93, devices=[0, 1], v=3)
        event = decode(raw)
        assert event == UnknownEvent(
            "run-1", 1, 1.5, "gpu_stats", {"util": 0.93, "devices": [0, 1]}, v=3
        )
        assert isinstance(event.timestamp, float)
        assert decode(encode(event)) == event

    def test_unknown_fields_ignored(self) -> None:
        """Fields this version does not know are ignored on known types."""
        plain = decode(line(type="status", status="running", epoch=None))
        noisy = decode(
            line(type="status", status="running", epoch=None, colour="red", nested={"a": [1]})
        )
        assert noisy == plain == StatusChanged("run-1", 1, 1.5, "running")

    def test_newer_major_version_decodes(self) -> None:
        """A known type at v=3 decodes by the same rules and keeps its v."""
        event = decode(line(v=3))
        assert event == Progress("run-1", 1, 1.5, epoch=1, v=3)


class TestCloudEvents:
    """The CloudEvents 1.0 envelope wraps the wire object whole."""

    @given(events(WIRE, timestamp=realistic_timestamps))
    def test_round_trip(self, event: Event) -> None:
        """from_cloudevent(to_cloudevent(e)) gives e back; the envelope is JSON."""
        envelope = to_cloudevent(event)
        assert envelope["specversion"] == "1.0"
        assert envelope["type"].startswith(CLOUDEVENT_TYPE_PREFIX)
        assert envelope["id"] == f"{event.training_id}:{event.seq}"
        assert envelope["time"].endswith("Z")
        assert from_cloudevent(orjson.loads(orjson.dumps(envelope))) == wire_form(event)

    @given(events(WIRE))
    def test_any_decodable_timestamp(self, event: Event) -> None:
        """Any finite timestamp wraps; one outside years 1-9999 has no ``time``."""
        envelope = to_cloudevent(event)
        assert from_cloudevent(envelope) == wire_form(event)

    @pytest.mark.parametrize(
        ("envelope", "expected"),
        [
            ([], "must be a JSON object"),
            ({"specversion": "0.3"}, "specversion"),
            ({"specversion": "1.0", "type": "com.other.x"}, "not a PULSE v2 event type"),
            ({"specversion": "1.0", "type": "dev.pulse.v2.progress", "data": "x"}, "data"),
            (
                {"specversion": "1.0", "type": "dev.pulse.v2.status", "data": orjson.loads(line())},
                "disagree",
            ),
        ],
    )
    def test_bad_envelopes(self, envelope: Any, expected: str) -> None:
        """Envelopes that are not PULSE CloudEvents raise DecodeError."""
        with pytest.raises(DecodeError, match=expected):
            from_cloudevent(envelope)


_SURROGATE = re.compile("[\ud800-\udfff]")
_any_text = st.text(
    st.characters(codec=None) | st.characters(categories=["Cs"]), max_size=40
) | st.sampled_from(["é" * 300_000, "\udc80" * 70_000, "x" * 2_000_000])


class TestBoundedLines:
    """encode never fails on text or huge ints, and every line fits 64 KiB (13.11, 13.12)."""

    @given(
        message=_any_text,
        code=_any_text,
        details=st.dictionaries(_any_text, _any_text | st.integers(), max_size=4),
    )
    def test_error_always_encodes(self, message: str, code: str, details: dict[str, Any]) -> None:
        """Any text in an error event: the line fits, decodes, and keeps code and message."""
        event = ErrorReported("run-1", 5, 1.0, error_code=code, message=message, details=details)
        line = encode(event)
        assert len(line) <= MAX_LINE_BYTES
        back = decode(line)
        assert isinstance(back, ErrorReported)
        assert back.seq == 5
        if len(message.encode("utf-8", "surrogatepass")) < 10_000:  # short: kept whole
            assert back.message == _SURROGATE.sub("\ufffd", message)

    @given(name=_any_text, labels=st.dictionaries(_any_text, _any_text, max_size=5))
    def test_meta_always_encodes(self, name: str, labels: dict[str, str]) -> None:
        """Any text in a meta event: the line fits and decodes."""
        line = encode(RunMeta("run-1", 1, 1.0, name=name, labels=labels))
        assert len(line) <= MAX_LINE_BYTES
        assert isinstance(decode(line), RunMeta)

    def test_truncation_marker(self) -> None:
        """A 2 MB status message is cut with a marker naming the bytes removed."""
        back = decode(
            encode(StatusChanged("run-1", 2, 1.0, status="error", message="x" * 2_000_000))
        )
        assert isinstance(back, StatusChanged)
        assert back.status == "error"
        head, _, tail = back.message.partition("…[truncated ")
        assert set(head) == {"x"}
        assert int(tail.removesuffix(" bytes]")) == 2_000_000 - len(head)

    def test_largest_details_cut_first(self) -> None:
        """Small details values survive whole; the huge one is truncated."""
        details = {"trace_id": "abc", "exit_code": 3, "traceback": "t" * 500_000}
        back = decode(encode(ErrorReported("run-1", 2, 1.0, "BOOM", "msg", details=details)))
        assert isinstance(back, ErrorReported)
        assert back.details is not None
        assert back.details["trace_id"] == "abc"
        assert back.details["exit_code"] == 3
        assert back.details["traceback"].startswith("ttt")
        assert "…[truncated" in back.details["traceback"]

    def test_surrogates_replaced(self) -> None:
        """A lone surrogate becomes U+FFFD; before, the event could not be written at all."""
        line = encode(StatusChanged("run-1", 2, 1.0, status="done", message="f\udce9.csv"))
        back = decode(line)
        assert isinstance(back, StatusChanged)
        assert back.message == "f\ufffd.csv"

    def test_huge_ints_left_out(self) -> None:
        """An integer beyond 64 bits is not said, the rest of the event is written."""
        back = decode(encode(Progress("run-1", 2, 1.0, epoch=10**30, step=4)))
        assert isinstance(back, Progress)
        assert (back.epoch, back.step) == (None, 4)

    def test_huge_int_in_the_envelope_left_out(self) -> None:
        """A hostile ``v`` or ``seq`` beyond 64 bits is left out too: encode never raises."""
        for event in (
            Progress("run-1", 2, 1.0, epoch=1, v=10**30),
            Progress("run-1", 10**30, 1.0, epoch=1),
            StatusChanged("run-1", -(10**30), 1.0, status="running", message="m"),
        ):
            line = encode(event)
            assert line.endswith(b"\n")
            fields = orjson.loads(line)
            assert all(abs(value) < 2**64 for value in fields.values() if type(value) is int)
            assert fields["training_id"] == "run-1"

    def test_many_metric_names(self) -> None:
        """Thousands of long metric names: numbers-only maps lose entries, never their type."""
        extra = {f"metric-{i}-" + "n" * 300: float(i) for i in range(2000)}
        line = encode(Metrics("run-1", 2, 1.0, loss=0.5, extra=extra, min={"loss": 0.25}))
        assert len(line) <= MAX_LINE_BYTES
        back = decode(line)
        assert isinstance(back, Metrics)
        assert back.loss == 0.5
        assert back.min == {"loss": 0.25}
        assert all(len(name.encode()) <= 256 for name in back.extra)

    def test_bound_event(self) -> None:
        """bound_event returns the event itself when it fits, else its bounded form."""
        small = StatusChanged("run-1", 2, 1.0, status="running", message="ok")
        assert bound_event(small) is small
        big = bound_event(StatusChanged("run-1", 2, 1.0, status="running", message="y" * 100_000))
        assert isinstance(big, StatusChanged)
        assert len(big.message) < 66_000
        assert encode(big) == encode(decode(encode(big)))
