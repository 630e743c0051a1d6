"""The Python subscriber clients, blocking and asyncio, against a real hub."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from hubkit import HubProcess, RawClient, meta, progress, status, wait_applied, write_log

from pulse_core.events import Event, Progress, StatusChanged
from pulse_transports.subscribe import (
    AsyncSubscriber,
    HubDisconnected,
    Live,
    Message,
    Snapshot,
    Subscriber,
)
from pulse_transports.wire import Address, HubRefused


def read_until(subscriber: Subscriber, stop: Callable[[Message], bool]) -> list[Message]:
    got: list[Message] = []
    while True:
        message = subscriber.recv(15)
        assert message is not None, f"nothing more after {got[-3:]}"
        got.append(message)
        if stop(message):
            return got


def is_status(value: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, StatusChanged) and m.status == value


class TestBlocking:
    """``Subscriber`` decodes snapshots, markers and events and tracks seqs."""

    def test_snapshot_live_events(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")
        producer.send_events(meta("run-1"), status("run-1", 2, "running"))
        wait_applied(hub.unix, "run-1", 2)
        with Subscriber(path=hub.socket_path) as subscriber:
            assert subscriber.welcome["role"] == "subscriber"
            first, second = subscriber.recv(15), subscriber.recv(15)
            assert isinstance(first, Snapshot)
            assert first.training_id == "run-1"
            assert first.view["status"] == "running"
            assert isinstance(second, Live)
            assert second.runs == ("run-1",)
            assert subscriber.last_seq == {"run-1": 2}
            producer.send_events(progress("run-1", 3, epoch=1), status("run-1", 4, "done"))
            got = read_until(subscriber, is_status("done"))
            assert [type(m) for m in got] == [Progress, StatusChanged]
            assert subscriber.last_seq == {"run-1": 4}
            assert subscriber.recv(0.2) is None  # a timeout, not an error

    def test_home_finds_the_socket(self, hub: HubProcess) -> None:
        with Subscriber(home=hub.home) as subscriber:
            assert isinstance(subscriber.recv(15), Live)

    def test_refused(self, start_hub: Callable[..., HubProcess]) -> None:
        hub = start_hub("--tcp", "127.0.0.1:0", "--token", "s3cret")
        assert hub.tcp is not None
        with pytest.raises(HubRefused, match="unauthorized"):
            Subscriber(tcp=f"127.0.0.1:{hub.tcp[1]}", token="nope").connect()

    def test_iteration_ends_when_the_hub_goes(self, hub: HubProcess) -> None:
        subscriber = Subscriber(path=hub.socket_path)
        subscriber.connect()
        assert isinstance(subscriber.recv(15), Live)
        hub.stop()
        rest = list(subscriber)
        assert [m.code for m in rest] == ["hub_closing"]  # type: ignore[union-attr]
        with pytest.raises(HubDisconnected):
            subscriber.recv(1)

    def test_reconnect_resumes_without_gaps_or_duplicates(
        self, hub_home: object, start_hub: Callable[..., HubProcess]
    ) -> None:
        first = start_hub()
        producer = RawClient(first.unix)
        producer.hello("producer", training_id="run-1")
        events: list[Event] = [meta("run-1"), status("run-1", 2, "running")]
        events += [status("run-1", seq, "running", f"note {seq}") for seq in range(3, 11)]
        producer.send_events(*events)
        wait_applied(first.unix, "run-1", 10)
        subscriber = Subscriber(path=first.socket_path, reconnect=True)
        with subscriber:
            got = read_until(subscriber, lambda m: isinstance(m, Live))
            assert subscriber.last_seq == {"run-1": 10}
            producer.send_events(status("run-1", 11, "running", "note 11"))
            got += read_until(subscriber, lambda m: getattr(m, "seq", 0) == 11)
            first.stop()
            producer.close()
            # The run's log holds everything (its file sink wrote it meanwhile).
            more = [status("run-1", seq, "running", f"note {seq}") for seq in range(12, 20)]
            write_log(first.home, [*events, status("run-1", 11, "running", "note 11"), *more])
            second = start_hub()
            got += read_until(subscriber, lambda m: getattr(m, "seq", 0) == 19)
            assert subscriber.connects == 2
            assert second.alive()
        seqs = [m.seq for m in got if isinstance(m, Event)]
        assert seqs == list(range(11, 20))


class TestAsync:
    """``AsyncSubscriber`` does the same with asyncio streams."""

    def test_async_subscriber(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")

        async def main() -> list[Message]:
            got: list[Message] = []
            async with AsyncSubscriber(path=hub.socket_path, training_id="run-1") as subscriber:
                assert subscriber.welcome["training_id"] == "run-1"
                producer.send_events(meta("run-1"), status("run-1", 2, "running"))
                producer.send_events(status("run-1", 3, "done"))
                async for message in subscriber:
                    got.append(message)
                    if isinstance(message, StatusChanged) and message.status == "done":
                        break
                assert await subscriber.recv(0.2) is None
                assert subscriber.last_seq == {"run-1": 3}
            return got

        got = asyncio.run(asyncio.wait_for(main(), 30))
        assert isinstance(got[0], Live)
        assert [m.seq for m in got if isinstance(m, Event)] == [1, 2, 3]

    def test_async_iteration_ends_when_the_hub_goes(self, hub: HubProcess) -> None:
        async def main() -> list[Message]:
            subscriber = AsyncSubscriber(path=hub.socket_path)
            await subscriber.connect()
            got = [await subscriber.recv(15)]
            hub.proc.terminate()
            got += [m async for m in subscriber]
            return got  # type: ignore[return-value]

        got = asyncio.run(asyncio.wait_for(main(), 30))
        assert isinstance(got[0], Live)
        assert [getattr(m, "code", None) for m in got[1:]] == ["hub_closing"]
