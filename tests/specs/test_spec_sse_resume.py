"""SSE resume delivers every logged event after the cursor, even when the hub's memory has holes."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from pulse_core.codec import encode
from pulse_core.events import Event, Metrics, Progress, StatusChanged
from pulse_transports.file import log_path
from pulse_transports.inprocess import Bus, EncodedEvents
from pulse_transports.web.cursor import Cursor
from pulse_transports.web.monitor import LivenessMonitor
from pulse_transports.web.stream import EventStream

TID = "gap-run"


def _events() -> list[Event]:
    out: list[Event] = [StatusChanged(training_id=TID, seq=1, timestamp=1.0, status="running")]
    for seq in range(2, 11):
        if seq % 2:
            out.append(Progress(training_id=TID, seq=seq, timestamp=float(seq), epoch=seq))
        else:
            out.append(Metrics(training_id=TID, seq=seq, timestamp=float(seq), loss=1.0 / seq))
    return out


async def _catch_up(stream: EventStream) -> list[Any]:
    items: list[Any] = []
    body = stream.body()
    try:
        async with asyncio.timeout(10):
            async for chunk in body:
                for line in chunk.split(b"\n"):
                    if line.startswith(b"data: "):
                        items.extend(orjson.loads(line[6:]))
                if any(isinstance(i, dict) and "live" in i for i in items):
                    break
    finally:
        await body.aclose()
    return items


class TestResumeFillsHolesFromTheLog:
    """A cursor the memory "covers" but with coalesced holes is served from the log too."""

    def test_every_logged_event_after_the_cursor_arrives_once_in_order(
        self, tmp_path: Path
    ) -> None:
        """Memory lacks seqs 4-6 (coalesced); the resumed catch-up still has 4..10, each once."""
        events = _events()
        path = log_path(tmp_path, TID)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"".join(encode(e) for e in events))
        bus = Bus(timer=False)
        for event in events:
            if event.seq not in (4, 5, 6):
                bus.publish(event)
        assert bus.covers(TID, 3)  # memory "reaches back": the old code read no log
        monitor = LivenessMonitor(bus, tmp_path, stale_after=15.0, lost_after=600.0)
        stream = EventStream(
            bus=bus,
            monitor=monitor,
            home=tmp_path,
            encoded=EncodedEvents(),
            scope=None,
            interval=0.001,
            resume=Cursor({TID: 3}),
        )
        items = asyncio.run(_catch_up(stream))
        seqs = [i["seq"] for i in items if isinstance(i, dict) and i.get("training_id") == TID]
        assert seqs == list(range(4, 11))
        bus.close()


class TestCursorAheadOfTheHub:
    """A cursor beyond the hub's last seq for a run gets a snapshot, not silence."""

    def test_a_snapshot_instead_of_suppressed_events(self, tmp_path: Path) -> None:
        """Resume {run: 100} while the hub holds seq 10: the run is snapshotted."""
        bus = Bus(timer=False)
        for event in _events():
            bus.publish(event)
        monitor = LivenessMonitor(bus, tmp_path, stale_after=15.0, lost_after=600.0)
        stream = EventStream(
            bus=bus,
            monitor=monitor,
            home=tmp_path,
            encoded=EncodedEvents(),
            scope=None,
            interval=0.001,
            resume=Cursor({TID: 100}),
        )
        items = asyncio.run(_catch_up(stream))
        snapshots = [i["snapshot"] for i in items if isinstance(i, dict) and "snapshot" in i]
        assert snapshots
        assert snapshots[0][TID]["stats"]["last_seq"] == 10
        hello = items[0]["hello"]
        assert hello["resumed"] == []
        bus.close()
