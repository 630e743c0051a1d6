"""/events: batches match the schema, Last-Event-ID resumes exactly, the rate limit holds."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs
from pagekit import Producer, SseReader, WebHub, events_in

from pulse_core.events import StatusChanged
from pulse_transports.file import log_path
from pulse_transports.follow import read_events
from pulse_transports.web import Cursor, format_cursor, openapi, parse_cursor
from pulse_transports.web.stream import QUIET_AFTER


def finished(produce: Callable[..., Producer], tid: str) -> None:
    run = produce("lifecycle", tid)
    for gate in (1, 2, 3):
        run.open_gate(gate)
    assert run.wait() == 0


def is_live(item: Any) -> bool:
    return isinstance(item, dict) and "live" in item


class TestCursor:
    """The SSE id is a quiet mark and ``training_id:seq`` pairs; malformed entries are left out."""

    def test_round_trip(self) -> None:
        seqs = {"run-b": 7, "20261129-013724-123-9f2c41d07b": 41}
        text = format_cursor(seqs)
        assert text == "20261129-013724-123-9f2c41d07b:41,run-b:7"
        assert parse_cursor(text) == Cursor(seqs)
        marked = format_cursor(seqs, 1765062000)
        assert marked == "@1765062000,20261129-013724-123-9f2c41d07b:41,run-b:7"
        assert parse_cursor(marked) == Cursor(seqs, 1765062000)
        assert parse_cursor(format_cursor({}, 5)) == Cursor({}, 5)

    def test_malformed(self) -> None:
        assert parse_cursor(None) == Cursor()
        assert parse_cursor("") == Cursor()
        assert parse_cursor("run-a:3,<x>:4,run-b:-1,run-c:x,:5,run-d,run-e:9").seqs == {
            "run-a": 3,
            "run-e": 9,
        }
        assert parse_cursor("run-a:3,run-a:8,run-a:5").seqs == {"run-a": 8}
        assert parse_cursor("x" * 70_000) == Cursor()
        # Only the first well-formed mark counts; a bad one is left out.
        assert parse_cursor("@x,@12,@13,run-a:1") == Cursor({"run-a": 1}, 12)
        assert parse_cursor("@" + "9" * 30).quiet is None


class TestStream:
    """A new client gets a hello, snapshots and live events, all valid against the schema."""

    def test_batches_match_the_schema(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        hub = start_hub()
        finished(produce, "sse-1")
        produce("forever", "sse-2")
        reader = SseReader(hub)
        assert reader.status == 200
        assert reader.headers["content-type"].startswith("text/event-stream")
        validator = Draft202012Validator({"$ref": "#/components/schemas/SseBatch", **openapi()})
        messages = reader.items_until(
            lambda item: isinstance(item, dict) and item.get("type") == "progress"
        )
        reader.close()
        for _, items in messages:
            validator.validate(items)
        first = messages[0][1][0]
        assert first["hello"]["protocol"] == "pulse-sse/1"
        assert first["hello"]["transitions"]["done"] == []
        snapshots = {
            tid: view
            for _, items in messages
            for i in items
            for tid, view in i.get("snapshot", {}).items()
        }
        assert snapshots["sse-1"]["status"] == "done"
        ids = [event_id for event_id, _ in messages if event_id is not None]
        assert parse_cursor(ids[-1]).seqs["sse-1"] == snapshots["sse-1"]["stats"]["last_seq"]


class TestResume:
    """Reconnecting with Last-Event-ID sends exactly the events after it, also after a restart."""

    def test_resume_from_memory(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        hub = start_hub()
        finished(produce, "res-1")
        logged = [
            e.seq
            for e in read_events(log_path(hub.home, "res-1"), "res-1") or []
            if isinstance(e, StatusChanged)
        ]
        view = hub.view("res-1")
        last = view["stats"]["last_seq"]
        reader = SseReader(hub, headers={"Last-Event-ID": "res-1:3"})
        messages = reader.items_until(is_live)
        reader.close()
        seqs = [e["seq"] for e in events_in(messages, "res-1")]
        assert seqs == sorted(set(seqs))  # in order, each once
        assert seqs[0] > 3
        assert seqs[-1] == last
        # Every status after seq 3 (never coalesced, so in the log too) is there.
        assert {s for s in logged if s > 3} <= set(seqs)
        assert not any("snapshot" in i for _, items in messages for i in items)
        assert parse_cursor(reader.last_id).seqs == {"res-1": last}

    def test_query_parameter_and_header_precedence(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        hub = start_hub()
        finished(produce, "res-2")
        last = hub.view("res-2")["stats"]["last_seq"]
        reader = SseReader(
            hub,
            f"/events?last_event_id=res-2:{last - 1}",
            headers={"Last-Event-ID": f"res-2:{last - 2}"},
        )
        seqs = [e["seq"] for e in events_in(reader.items_until(is_live), "res-2")]
        reader.close()
        assert seqs == [last - 1, last]  # the header wins
        reader = SseReader(hub, f"/events?last_event_id=res-2:{last}")
        messages = reader.items_until(is_live)
        reader.close()
        assert events_in(messages, "res-2") == []  # up to date: nothing repeated

    def test_resume_after_a_hub_restart(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        first = start_hub()
        run = produce("until", "res-3")
        reader = SseReader(first)
        got = reader.items_until(
            lambda i: isinstance(i, dict) and i.get("type") == "progress" and i["seq"] > 20
        )
        cursor = reader.last_id
        reader.close()
        first.stop()
        second = start_hub(http=first.http)
        reader = SseReader(second, headers={"Last-Event-ID": cursor or ""})
        run.open_gate(1)
        more = reader.items_until(
            lambda i: isinstance(i, dict) and i.get("status") == "done", timeout=20
        )
        reader.close()
        before = [e["seq"] for e in events_in(got, "res-3")]
        after = [e["seq"] for e in events_in(more, "res-3")]
        assert after[0] > parse_cursor(cursor).seqs["res-3"] >= before[-1]
        assert after == sorted(set(after))
        # Nothing lost: every status the run reported reached this client once.
        statuses = [
            e["seq"]
            for e in events_in(got, "res-3") + events_in(more, "res-3")
            if e["type"] == "status"
        ]
        timeline = [t["seq"] for t in second.view("res-3")["timeline"]]
        snapshot_statuses = [
            t["seq"]
            for _, items in got
            for i in items
            for view in i.get("snapshot", {}).values()
            for t in view["timeline"]
        ]
        assert sorted(snapshot_statuses + statuses) == timeline


class TestRateLimit:
    """A client's ``rate`` lowers its updates per run and stream; it cannot raise the hub's."""

    def test_rate(self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]) -> None:
        hub = start_hub()
        produce("forever", "rate-1")  # 20 progress updates per second
        slow = SseReader(hub, "/events?rate=2")
        fast = SseReader(hub, "/events?rate=1000")
        hello_slow = next(slow.messages())[1][0]["hello"]
        hello_fast = next(fast.messages())[1][0]["hello"]
        assert hello_slow["rate"] == 2.0
        assert hello_fast["rate"] == 10.0  # the hub's --rate is the most
        start = time.monotonic()
        slow_events = events_in(list(slow.messages(timeout=3.0)), "rate-1")
        fast_events = events_in(list(fast.messages(timeout=0.1)), "rate-1")
        elapsed = time.monotonic() - start
        slow.close()
        fast.close()
        slow_progress = [e for e in slow_events if e["type"] == "progress"]
        fast_progress = [e for e in fast_events if e["type"] == "progress"]
        # At most one per 0.5 s (+1 for the window's edges), but values keep coming.
        assert 3 <= len(slow_progress) <= 2 * elapsed + 2
        assert len(fast_progress) > 2 * len(slow_progress)
        assert len(fast_progress) <= 10 * elapsed + 2


def snapshotted(messages: list[tuple[str | None, list[Any]]]) -> set[str]:
    return {tid for _, items in messages for i in items for tid in i.get("snapshot", {})}


class TestQuietMark:
    """Runs ended and silent for QUIET_AFTER leave the id for its quiet mark; nothing is lost."""

    def test_cursor_names_only_live_runs_and_resumes(
        self, start_hub: Callable[..., WebHub], produce: Callable[..., Producer]
    ) -> None:
        first = start_hub()
        ended = [f"quiet-{n}" for n in range(4)]
        for tid in ended:
            finished(produce, tid)
        live = produce("until", "quiet-live")
        reader = SseReader(first)
        reader.items_until(is_live)
        for _ in reader.messages(timeout=QUIET_AFTER + 10):  # the live run keeps it moving
            last = reader.last_id or ""
            if last.startswith("@") and not any(tid in last for tid in ended):
                break
        reader.close()
        cursor = parse_cursor(reader.last_id)
        assert cursor.quiet is not None, reader.last_id
        assert set(cursor.seqs) == {"quiet-live"}  # the ended runs are under the mark
        assert len(reader.last_id or "") < 40
        # A run that ends while the client is away is newer than the mark: a snapshot.
        finished(produce, "quiet-new")
        reader = SseReader(first, headers={"Last-Event-ID": reader.last_id or ""})
        messages = reader.items_until(is_live)
        messages += reader.items_until(
            lambda i: isinstance(i, dict) and i.get("training_id") == "quiet-live"
        )
        reader.close()
        assert snapshotted(messages) == {"quiet-new"}
        for tid in ended:
            assert events_in(messages, tid) == []
        seqs = [e["seq"] for e in events_in(messages, "quiet-live")]
        assert seqs
        assert seqs[0] > cursor.seqs["quiet-live"]
        assert seqs == sorted(set(seqs))
        # After a hub restart the mark still covers the runs the new hub reads from the logs.
        resume = reader.last_id
        first.stop()
        second = start_hub(http=first.http)
        reader = SseReader(second, headers={"Last-Event-ID": resume or ""})
        live.open_gate(1)
        more = reader.items_until(
            lambda i: isinstance(i, dict) and i.get("status") == "done", timeout=20
        )
        reader.close()
        assert snapshotted(more) == set()
        for tid in [*ended, "quiet-new"]:
            assert events_in(more, tid) == []
        after = [e["seq"] for e in events_in(more, "quiet-live")]
        assert after[0] > parse_cursor(resume).seqs["quiet-live"] >= seqs[-1]
        assert after == sorted(set(after))
        statuses = {
            e["seq"] for e in events_in(messages + more, "quiet-live") if e["type"] == "status"
        }
        logged = {
            e.seq
            for e in read_events(log_path(second.home, "quiet-live"), "quiet-live") or []
            if isinstance(e, StatusChanged) and e.seq > cursor.seqs["quiet-live"]
        }
        assert logged <= statuses
