"""The JSON Schemas in specs/schema/ against the vectors and pulse_core's output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from pulse_core.codec import TAGS, decode, encode, to_cloudevent
from pulse_core.errors import DecodeError
from pulse_core.events import STATUSES
from pulse_core.liveness import LOST
from pulse_core.projections import to_v1
from pulse_core.reducer import replay

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "specs" / "schema"
VECTORS = ROOT / "specs" / "vectors"
NAMES = sorted(p.name.removesuffix(".jsonl") for p in VECTORS.glob("*.jsonl"))
ENVELOPE = {"type", "v", "training_id", "seq", "timestamp"}


def load(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / name).read_text(encoding="utf-8"))


EVENT_SCHEMA = load("event.schema.json")
V1_SCHEMA = load("v1_snapshot.schema.json")
CLOUDEVENT_SCHEMA = load("cloudevent.schema.json")
REGISTRY: Registry[Any] = Registry().with_resources(
    (schema["$id"], Resource.from_contents(schema))
    for schema in (EVENT_SCHEMA, V1_SCHEMA, CLOUDEVENT_SCHEMA)
)
EVENTS = Draft202012Validator(EVENT_SCHEMA, registry=REGISTRY)
V1 = Draft202012Validator(V1_SCHEMA, registry=REGISTRY)
CLOUDEVENTS = Draft202012Validator(CLOUDEVENT_SCHEMA, registry=REGISTRY)


def lines_of(name: str) -> list[bytes]:
    pieces = (VECTORS / f"{name}.jsonl").read_bytes().split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
    return pieces


def expected(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / f"{name}.expected.json").read_text(encoding="utf-8"))


def base(tag: str, **fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "type": tag,
        "v": 2,
        "training_id": "run-1",
        "seq": 1,
        "timestamp": 1767225600.0,
    }
    obj.update(fields)
    return obj


class TestSchemasThemselves:
    """The three schemas are valid draft 2020-12 schemas."""

    @pytest.mark.parametrize("schema", [EVENT_SCHEMA, V1_SCHEMA, CLOUDEVENT_SCHEMA])
    def test_schema_is_valid(self, schema: dict[str, Any]) -> None:
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"

    def test_event_schema_has_a_branch_per_known_type_and_one_for_unknown(self) -> None:
        defs = EVENT_SCHEMA["$defs"]
        branches = [b["$ref"].removeprefix("#/$defs/") for b in EVENT_SCHEMA["oneOf"]]
        assert branches == [*TAGS, "unknown"]
        for tag in TAGS:
            assert defs[tag]["properties"]["type"] == {"const": tag}
        assert defs["unknown"]["properties"]["type"]["not"] == {"enum": list(TAGS)}

    @pytest.mark.parametrize("tag", list(TAGS))
    def test_event_schema_fields_match_the_event_classes(self, tag: str) -> None:
        fields = {f.name for f in attrs.fields(TAGS[tag])} - ENVELOPE
        branch = EVENT_SCHEMA["$defs"][tag]
        documented = set(branch["properties"]) - {"type"} - ENVELOPE
        assert documented == fields
        assert {"type", *ENVELOPE} <= set(branch["required"])  # so generated types narrow
        required = {
            f.name for f in attrs.fields(TAGS[tag]) if f.default is attrs.NOTHING
        } - ENVELOPE
        assert set(branch["required"]) - {"type"} - ENVELOPE == required

    def test_statuses_match(self) -> None:
        assert EVENT_SCHEMA["$defs"]["lifecycle_state"]["enum"] == list(STATUSES)
        assert V1_SCHEMA["properties"]["status"]["enum"] == list(STATUSES)


class TestVectorLinesAgainstTheEventSchema:
    """Every vector line gets the schema verdict its expected file implies."""

    @pytest.mark.parametrize("name", NAMES)
    def test_conforming_lines_validate_raw_and_re_encoded(self, name: str) -> None:
        want = expected(name)
        skip = set(want["rejected_lines"]) | set(want["nonconforming_lines"])
        for number, line in enumerate(lines_of(name), start=1):
            if number in skip:
                continue
            EVENTS.validate(orjson.loads(line))
            EVENTS.validate(orjson.loads(encode(decode(line))))

    @pytest.mark.parametrize("name", NAMES)
    def test_rejected_json_lines_fail_the_schema(self, name: str) -> None:
        lines = lines_of(name)
        for number in expected(name)["rejected_lines"]:
            try:
                obj = orjson.loads(lines[number - 1])
            except orjson.JSONDecodeError:
                continue  # not JSON at all: nothing for a schema to judge
            assert not EVENTS.is_valid(obj), f"{name}.jsonl line {number}"

    @pytest.mark.parametrize("name", NAMES)
    def test_nonconforming_lines_decode_but_fail_the_schema(self, name: str) -> None:
        lines = lines_of(name)
        for number in expected(name)["nonconforming_lines"]:
            decode(lines[number - 1])
            assert not EVENTS.is_valid(orjson.loads(lines[number - 1]))

    def test_the_vectors_hold_rejected_json_objects(self) -> None:
        judged = 0
        for name in NAMES:
            lines = lines_of(name)
            for number in expected(name)["rejected_lines"]:
                try:
                    orjson.loads(lines[number - 1])
                except orjson.JSONDecodeError:
                    continue
                judged += 1
        assert judged >= 10


class TestEventSchemaRules:
    """The event schema enforces the documented field rules."""

    @pytest.mark.parametrize(
        "obj",
        [
            base("heartbeat"),
            base("status", status="running"),
            base("status", status="done", message="ok"),
            base("progress", epoch=None, step=3),
            base("metrics", loss=1, extra={"acc": 0.5}),
            base("error", error_code="CUDA_OOM", message="m", details=None),
            base("dropped", count=0),
            base("meta", labels={"a": "b"}, attempt=None),
            base("checkpoint", path="x", anything={"nested": [1]}),
            base("heartbeat", v=7, future_field=True),
        ],
    )
    def test_valid(self, obj: dict[str, Any]) -> None:
        EVENTS.validate(obj)
        decode(orjson.dumps(obj))

    @pytest.mark.parametrize(
        "obj",
        [
            base("status"),
            base("status", status="running", message=None),
            base("progress", epoch="1"),
            base("progress", epoch=True),
            base("metrics", loss="1"),
            base("metrics", extra={"acc": None}),
            base("error", message="m"),
            base("error", error_code="X", message="m", is_retryable=None),
            base("error", error_code="X", message="m", details=[]),
            base("dropped"),
            base("meta", labels={"a": 1}),
            base("heartbeat", training_id="../x"),
            base("heartbeat", training_id="a" * 129),
            base("heartbeat", v=1),
            base("heartbeat", seq="1"),
            base("heartbeat", timestamp=None),
            base(""),
            {"type": "heartbeat", "v": 2, "seq": 1, "timestamp": 1.0},
        ],
    )
    def test_invalid_for_schema_and_decoder(self, obj: dict[str, Any]) -> None:
        assert not EVENTS.is_valid(obj)
        with pytest.raises(DecodeError):
            decode(orjson.dumps(obj))

    @pytest.mark.parametrize(
        "obj",
        [
            base("heartbeat", seq=0),
            base("status", status="paused"),
            base("error", error_code="cuda_oom", message="m"),
            base("dropped", count=-1),
        ],
    )
    def test_stricter_than_the_decoder_as_documented(self, obj: dict[str, Any]) -> None:
        assert not EVENTS.is_valid(obj)
        decode(orjson.dumps(obj))

    def test_integer_valued_floats_are_a_known_schema_blind_spot(self) -> None:
        obj = base("progress", epoch=2.0)
        assert EVENTS.is_valid(obj)
        with pytest.raises(DecodeError):
            decode(orjson.dumps(obj))

    def test_error_code_pattern_is_upper_snake(self) -> None:
        for code in ("CUDA_OOM", "E1", "X_2_Y"):
            assert EVENTS.is_valid(base("error", error_code=code, message="m"))
        for code in ("Cuda_OOM", "_X", "X__Y", "X_", "1X", ""):
            assert not EVENTS.is_valid(base("error", error_code=code, message="m"))


class TestV1Schema:
    """Every v1 projection fits the v1 snapshot schema, and only six keys do."""

    @pytest.mark.parametrize("name", NAMES)
    def test_stored_v1_snapshots_validate(self, name: str) -> None:
        want = expected(name)
        V1.validate(want["v1"])
        V1.validate(want["live"]["v1"])

    @pytest.mark.parametrize("name", NAMES)
    def test_fresh_v1_projections_validate(self, name: str) -> None:
        events = []
        for line in lines_of(name):
            try:
                events.append(decode(line))
            except DecodeError:
                continue
        state = replay(events)
        V1.validate(to_v1(state))
        V1.validate(to_v1(state, LOST))

    def test_extra_or_missing_keys_fail(self) -> None:
        snapshot = expected("happy_run")["v1"]
        assert not V1.is_valid({**snapshot, "progress": 0.5})
        assert not V1.is_valid({k: v for k, v in snapshot.items() if k != "loss"})
        assert not V1.is_valid({**snapshot, "epoch": 1.5})
        assert not V1.is_valid({**snapshot, "timestamp": "2026-01-01 00:00:00"})


class TestCloudEventSchema:
    """Every to_cloudevent output fits the CloudEvents schema."""

    @pytest.mark.parametrize("name", NAMES)
    def test_every_decodable_vector_event_wraps_validly(self, name: str) -> None:
        nonconforming = set(expected(name)["nonconforming_lines"])
        for number, line in enumerate(lines_of(name), start=1):
            try:
                event = decode(line)
            except DecodeError:
                continue
            envelope = orjson.loads(orjson.dumps(to_cloudevent(event)))
            if number in nonconforming:
                assert not CLOUDEVENTS.is_valid(envelope)
            else:
                CLOUDEVENTS.validate(envelope)

    def test_type_must_agree_with_the_data(self) -> None:
        envelope = to_cloudevent(decode(orjson.dumps(base("heartbeat"))))
        CLOUDEVENTS.validate(envelope)
        assert not CLOUDEVENTS.is_valid({**envelope, "type": "dev.pulse.v2.status"})
        assert not CLOUDEVENTS.is_valid({**envelope, "specversion": "0.3"})
        assert not CLOUDEVENTS.is_valid({**envelope, "id": "run-1"})
        assert not CLOUDEVENTS.is_valid({k: v for k, v in envelope.items() if k != "source"})
        assert not CLOUDEVENTS.is_valid({**envelope, "data": {"type": "heartbeat"}})
