"""CloudEvents without code: ``pulse replay --cloudevents``, dataschema and a producer's source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from pulse_core.codec import (
    CLOUDEVENT_DATASCHEMA,
    cloudevent_source,
    decode,
    encode,
    from_cloudevent,
    to_cloudevent,
)
from pulse_core.events import Heartbeat, RunMeta, StatusChanged
from pulse_transports.schema import load_schema, validator

ROOT = Path(__file__).resolve().parents[2]


def _log(tmp_path: Path) -> Path:
    events = [
        RunMeta(training_id="ce-run", seq=1, timestamp=1767225600.0, host="gpu node/1", pid=4242),
        StatusChanged(training_id="ce-run", seq=2, timestamp=1767225601.5, status="running"),
        Heartbeat(training_id="ce-run", seq=3, timestamp=1767225606.5),
    ]
    path = tmp_path / "ce-run.jsonl"
    path.write_bytes(b"".join(encode(e) for e in events) + b"not json\n")
    return path


def _replay(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "pulse_transports.cli", "replay", *args],
        capture_output=True,
        check=False,
        cwd=ROOT,
    )


class TestReplayCloudEvents:
    """``pulse replay FILE --cloudevents`` prints one valid envelope per decodable line."""

    def test_every_event_is_wrapped_with_the_producers_source(self, tmp_path: Path) -> None:
        """Each decodable line becomes a schema-valid CloudEvent naming host and pid from meta."""
        done = _replay(str(_log(tmp_path)), "--cloudevents")
        assert done.returncode == 0, done.stderr
        envelopes = [orjson.loads(line) for line in done.stdout.splitlines()]
        assert [e["id"] for e in envelopes] == ["ce-run:1", "ce-run:2", "ce-run:3"]
        check = validator("cloudevent")
        for envelope in envelopes:
            check.validate(envelope)
            assert envelope["source"] == "/pulse/gpu%20node%2F1/4242"
            assert envelope["dataschema"] == CLOUDEVENT_DATASCHEMA
        assert b"1 lines did not decode" in done.stderr

    def test_round_trip_gives_the_lines_back(self, tmp_path: Path) -> None:
        """Unwrapping each printed envelope gives exactly the event its line decodes to."""
        path = _log(tmp_path)
        done = _replay(str(path), "--cloudevents", "--source", "https://example.org/trainer")
        assert done.returncode == 0, done.stderr
        lines = path.read_bytes().splitlines()[:3]
        for raw, printed in zip(lines, done.stdout.splitlines(), strict=True):
            envelope = orjson.loads(printed)
            assert envelope["source"] == "https://example.org/trainer"
            assert from_cloudevent(envelope) == decode(raw)

    def test_a_file_without_events_exits_4(self, tmp_path: Path) -> None:
        """Nothing decodable is unreadable, as for the other replay forms."""
        path = tmp_path / "empty.jsonl"
        path.write_bytes(b"nope\n")
        assert _replay(str(path), "--cloudevents").returncode == 4


class TestCloudEventMapping:
    """The codec's CloudEvents mapping names its schema and its producer."""

    def test_dataschema_is_the_event_schema_id(self) -> None:
        """dataschema is the $id of specs/schema/event.schema.json."""
        envelope = to_cloudevent(Heartbeat(training_id="r", seq=1, timestamp=0.0))
        assert envelope["dataschema"] == load_schema("event")["$id"]

    def test_source_of_a_producer(self) -> None:
        """Host and pid make the source; without either it is the default."""
        assert cloudevent_source("host-a", 7) == "/pulse/host-a/7"
        assert cloudevent_source(None, 7) == "/pulse/training"
        assert cloudevent_source("host-a", None) == "/pulse/training"
