"""The hub's NATS feed: runs in NATS reach the bus once, and a failing feed harms nothing."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from natskit import NatsServer

from pulse_core.emitter import TrainingRun
from pulse_core.events import StatusChanged
from pulse_core.ports import Sink
from pulse_transports.hub import Hub, HubSettings
from pulse_transports.inprocess import Bus, InProcessSink
from pulse_transports.nats import NatsFeed, NatsOptions, NatsSink


def _ended_run(url: str, tid: str) -> None:
    with TrainingRun(tid, sinks=[NatsSink(url=url)], heartbeat_interval=60) as run:
        run.status("running", "work")


async def _fed(bus: Bus, feed: NatsFeed, body: object) -> None:
    task = asyncio.create_task(feed(bus))
    try:
        await asyncio.wait_for(feed.caught_up.wait(), 10)
        if body is not None:
            await asyncio.to_thread(body)  # type: ignore[arg-type]
            await asyncio.sleep(0.5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class TestFeed:
    """The feed loads current runs, follows new ones, and the bus drops repeats."""

    def test_catch_up_keeps_recent_runs_only(self, server: NatsServer) -> None:
        _ended_run(server.url, "feed.old")
        bus = Bus(timer=False)
        asyncio.run(_fed(bus, NatsFeed(NatsOptions(url=server.url), keep_ended=3600), None))
        assert bus.states()["feed.old"].status == "done"
        fresh = Bus(timer=False)
        asyncio.run(_fed(fresh, NatsFeed(NatsOptions(url=server.url), keep_ended=0), None))
        assert "feed.old" not in fresh.states()

    def test_live_events_reach_the_bus_once(self, server: NatsServer) -> None:
        bus = Bus(timer=False)

        def produce() -> None:
            # the same run through the bus directly and through NATS
            sinks: list[Sink] = [NatsSink(url=server.url), InProcessSink(bus=bus)]
            with TrainingRun("feed.live", sinks=sinks, heartbeat_interval=60) as run:
                for n in range(5):
                    run.status("running", f"note {n}")

        feed = NatsFeed(NatsOptions(url=server.url))
        asyncio.run(_fed(bus, feed, produce))
        state = bus.states()["feed.live"]
        assert state.status == "done"
        assert state.duplicates == 0
        assert state.timeline_count == 1 + 5 + 1  # preparing, 5 notes, done
        assert bus.duplicates > 0  # NATS brought what the bus already had: dropped by seq


class TestHubFeeds:
    """A hub runs its feeds for its life; a failing feed is logged, the hub goes on."""

    def test_failing_and_working_feeds(self, server: NatsServer) -> None:
        _ended_run(server.url, "hub.fed")
        home = Path(tempfile.mkdtemp(prefix="ph-")) / "home"

        async def broken(bus: Bus) -> None:
            raise RuntimeError("feed bug")

        async def main() -> dict[str, str]:
            feed = NatsFeed(NatsOptions(url=server.url))
            hub = Hub(HubSettings(home=home, socket_path=home / "pulse.sock"), feeds=[broken, feed])
            await hub.start()
            try:
                await asyncio.wait_for(feed.caught_up.wait(), 10)
                return {tid: s.status for tid, s in hub.bus.states().items()}
            finally:
                await hub.close()

        states = asyncio.run(main())
        assert states == {"hub.fed": "done"}

    def test_feed_events_are_kept_events_in_order(self, server: NatsServer) -> None:
        bus = Bus(timer=False)
        seen: list[str] = []
        bus.subscribe(
            lambda item: seen.append(item.message) if isinstance(item, StatusChanged) else None
        )

        def produce() -> None:
            with TrainingRun(
                "feed.order", sinks=[NatsSink(url=server.url)], heartbeat_interval=60
            ) as run:
                for n in range(10):
                    run.status("running", f"n{n}")

        asyncio.run(_fed(bus, NatsFeed(NatsOptions(url=server.url)), produce))
        assert seen == ["starting"] + [f"n{n}" for n in range(10)] + ["finished"]
