"""specs/protocol.md agrees with pulse_core, and the CloudEvents mapping it documents."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest

from pulse_core.codec import CLOUDEVENT_TYPE_PREFIX, TAGS, from_cloudevent, to_cloudevent
from pulse_core.errors import DecodeError
from pulse_core.events import (
    STATUSES,
    WELL_KNOWN_ERROR_CODES,
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
from pulse_core.lifecycle import TABLE, build_machine, next_status

ROOT = Path(__file__).resolve().parents[2]
PROTOCOL = (ROOT / "specs" / "protocol.md").read_text(encoding="utf-8")
BEGIN = "<!-- BEGIN GENERATED: lifecycle -->"
END = "<!-- END GENERATED: lifecycle -->"
ENVELOPE = {"training_id", "seq", "timestamp", "v"}
T = 1767225600.5


def section(heading: str, text: str = PROTOCOL) -> str:
    """The text under a markdown heading, up to the next heading of the same or higher level."""
    level = heading.split(" ", 1)[0]
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1 :]
    pattern = re.compile(rf"^#{{1,{len(level)}}} ", re.MULTILINE)
    match = pattern.search(rest)
    return rest[: match.start()] if match else rest


def generated() -> str:
    assert PROTOCOL.count(BEGIN) == 1
    assert PROTOCOL.count(END) == 1
    return PROTOCOL[PROTOCOL.index(BEGIN) : PROTOCOL.index(END)]


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every markdown table in *text*, cells stripped of backticks."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
    return rows


class TestGeneratedLifecycle:
    """The generated lifecycle table, matrix and diagram say exactly what TABLE says."""

    def test_transition_table_equals_table(self) -> None:
        rows = [r for r in table_rows(generated()) if len(r) == 3 and r[0] in STATUSES]
        assert {(source, trigger): dest for source, trigger, dest in rows} == dict(TABLE)
        assert len(rows) == len(TABLE)

    def test_matrix_equals_next_status(self) -> None:
        rows = [r for r in table_rows(generated()) if len(r) == 1 + len(STATUSES)]
        header, body = rows[0], rows[1:]
        assert header[1:] == list(STATUSES)
        assert [r[0] for r in body] == list(STATUSES)
        for row in body:
            for target, cell in zip(STATUSES, row[1:], strict=True):
                assert (cell == "yes") == (next_status(row[0], target) is not None)

    def test_mermaid_diagram_equals_the_machine(self) -> None:
        block = generated().split("```mermaid\n", 1)[1].split("```", 1)[0]
        lines = [line.strip() for line in block.splitlines()]
        assert lines[0] == "stateDiagram-v2"
        machine = build_machine()
        assert f"[*] --> {machine.initial}" in lines
        edges = set()
        for line in lines:
            match = re.fullmatch(r"(\w+) --> (\w+): (\w+)", line)
            if match:
                edges.add(match.groups())
        want = set()
        for trigger, event in machine.events.items():
            for source, transitions in event.transitions.items():
                for transition in transitions:
                    want.add((source, transition.dest or source, trigger))
        assert edges == want
        ends = {line.split(" ")[0] for line in lines if line.endswith("--> [*]")}
        assert ends == {"done", "error", "cancelled"}

    def test_machine_and_table_agree(self) -> None:
        machine = build_machine()
        flat = {}
        for trigger, event in machine.events.items():
            for source, transitions in event.transitions.items():
                for transition in transitions:
                    flat[(source, trigger)] = transition.dest or source
        assert flat == dict(TABLE)


class TestProtocolText:
    """The hand-written parts of protocol.md list what pulse_core defines."""

    @pytest.mark.parametrize("tag", list(TAGS))
    def test_every_event_field_is_documented(self, tag: str) -> None:
        text = section(f"### `{tag}`" + _TITLES[tag])
        documented = {r[0] for r in table_rows(text) if r[0] != "field"}
        fields = {f.name for f in attrs.fields(TAGS[tag])} - ENVELOPE
        assert documented == fields

    def test_envelope_is_documented(self) -> None:
        rows = table_rows(section("## The envelope"))
        assert {r[0] for r in rows if r[0] != "field"} == {*ENVELOPE, "type"}

    def test_well_known_error_codes_are_listed_with_their_meaning(self) -> None:
        rows = table_rows(section("## Error codes"))
        listed = {r[0]: r[1] for r in rows if r[0] != "code"}
        assert listed == dict(WELL_KNOWN_ERROR_CODES)

    def test_training_id_pattern_is_stated(self) -> None:
        assert "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$" in section("## training_id")

    def test_every_status_is_described(self) -> None:
        text = section("## Lifecycle")
        for status in STATUSES:
            assert f"* `{status}`:" in text

    def test_every_vector_is_named(self) -> None:
        text = section("## Conformance vectors")
        for path in (ROOT / "specs" / "vectors").glob("*.jsonl"):
            assert f"`{path.name.removesuffix('.jsonl')}`" in text

    def test_schema_files_parse_without_duplicate_keys(self) -> None:
        def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            assert len(keys) == len(set(keys)), keys
            return dict(pairs)

        for path in (ROOT / "specs" / "schema").glob("*.json"):
            json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_duplicates)


_TITLES = {
    "meta": ": what the run is",
    "status": ": a lifecycle change",
    "progress": ": where training is",
    "metrics": ": measured values",
    "error": ": an error, as its own event",
    "heartbeat": ": the writer is alive",
    "dropped": ": events were lost",
    "state_checkpoint": ": the fold so far (a log line, not a run event)",
}

SAMPLES: list[Event] = [
    RunMeta(
        training_id="run-1",
        seq=1,
        timestamp=T,
        name="n",
        flow_id="f",
        flow_run_id="fr",
        flow_step_id="s",
        attempt=2,
        total_epochs=3,
        total_steps=4,
        pid=5,
        host="h",
        world_size=1,
        labels={"k": "v"},
    ),
    StatusChanged(training_id="run-1", seq=2, timestamp=T, status="running", message="go"),
    Progress(training_id="run-1", seq=3, timestamp=T, epoch=1, total_epochs=3, step=2),
    Metrics(
        training_id="run-1",
        seq=4,
        timestamp=T,
        loss=0.5,
        time_per_epoch=1.0,
        samples_per_second=2.0,
        tokens_per_second=3.0,
        extra={"acc": 0.9},
    ),
    ErrorReported(
        training_id="run-1",
        seq=5,
        timestamp=T,
        error_code="CUDA_OOM",
        message="oom",
        is_retryable=True,
        details={"trace_id": "t", "nested": {"a": [1, 2]}},
        epoch=1,
        step=2,
    ),
    Heartbeat(training_id="run-1", seq=6, timestamp=T),
    Dropped(training_id="run-1", seq=7, timestamp=T, count=3, reason="full"),
    StateCheckpoint(
        training_id="run-1", seq=7, timestamp=T, format="2:x", state={"step": 2}, lines=7
    ),
    UnknownEvent(training_id="run-1", seq=8, timestamp=T, type="checkpoint", data={"p": "x"}, v=3),
]


class TestCloudEvents:
    """to_cloudevent / from_cloudevent round-trip every event type and reject bad envelopes."""

    def test_samples_cover_every_type(self) -> None:
        assert {type(e) for e in SAMPLES} == {*TAGS.values(), UnknownEvent}

    @pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
    def test_round_trip(self, event: Event) -> None:
        envelope = to_cloudevent(event)
        assert from_cloudevent(envelope) == event
        assert from_cloudevent(orjson.loads(orjson.dumps(envelope))) == event

    @pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
    def test_mapping(self, event: Event) -> None:
        envelope = to_cloudevent(event, source="/hosts/gpu-1")
        assert envelope["specversion"] == "1.0"
        assert envelope["id"] == f"run-1:{event.seq}"
        assert envelope["source"] == "/hosts/gpu-1"
        assert envelope["type"] == CLOUDEVENT_TYPE_PREFIX + envelope["data"]["type"]
        assert envelope["subject"] == "run-1"
        assert envelope["time"] == "2026-01-01T00:00:00.500000Z"
        assert envelope["datacontenttype"] == "application/json"

    def test_whole_seconds_have_no_fraction(self) -> None:
        event = Heartbeat(training_id="run-1", seq=1, timestamp=1767225600.0)
        assert to_cloudevent(event)["time"] == "2026-01-01T00:00:00Z"

    @pytest.mark.parametrize(
        "mutate",
        [
            lambda e: [e],
            lambda e: None,
            lambda e: "not an envelope",
            lambda e: {k: v for k, v in e.items() if k != "specversion"},
            lambda e: {**e, "specversion": "0.3"},
            lambda e: {**e, "specversion": 1.0},
            lambda e: {k: v for k, v in e.items() if k != "type"},
            lambda e: {**e, "type": "com.example.status"},
            lambda e: {**e, "type": 7},
            lambda e: {**e, "type": "dev.pulse.v2.heartbeat"},
            lambda e: {k: v for k, v in e.items() if k != "data"},
            lambda e: {**e, "data": "{}"},
            lambda e: {**e, "data": None},
            lambda e: {**e, "data": {**e["data"], "training_id": "../x"}},
            lambda e: {**e, "data": {**e["data"], "status": 3}},
            lambda e: {**e, "data": {**e["data"], "v": 1}},
        ],
    )
    def test_bad_envelopes_are_decode_errors(self, mutate: Any) -> None:
        envelope = to_cloudevent(SAMPLES[1])
        with pytest.raises(DecodeError):
            from_cloudevent(mutate(envelope))
