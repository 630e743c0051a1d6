"""Hostile connections wait their turn (issue 16): the lane and the accept batch.

The figure (a subscriber's p99 among 3,000 hostile connections) is
``tests/bench/bench_hub_hostile.py``'s; these check the mechanisms: the lane
lets at most its quota through per event-loop iteration, in order, pausing
the waiting transports; a burst of connections larger than the accept batch
is queued by the kernel, not refused.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from hubkit import WAIT, HubProcess, RawClient

from pulse_transports._hubconn import ACCEPT_BATCH, Lane
from pulse_transports.wire import hello_line


class _Iterations:
    """Counts event-loop iterations (a callback that reschedules itself)."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


def test_the_lane_lets_its_quota_through_per_iteration_in_order() -> None:
    async def run() -> tuple[list[int], list[int]]:
        lane = Lane(per_tick=4)
        iterations = _Iterations()
        order: list[int] = []
        granted_at: list[int] = []

        async def worker(i: int) -> None:
            await lane.turn()
            order.append(i)
            granted_at.append(iterations.count)

        await asyncio.gather(*(worker(i) for i in range(40)))
        iterations.stop()
        return order, granted_at

    order, granted_at = asyncio.run(run())
    assert order == list(range(40))  # first come, first served
    per_iteration: dict[int, int] = {}
    for at in granted_at:
        per_iteration[at] = per_iteration.get(at, 0) + 1
    assert max(per_iteration.values()) <= 4
    assert len(per_iteration) >= 10


def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    async def run() -> list[int]:
        lane = Lane(per_tick=1)
        done: list[int] = []

        async def worker(i: int) -> None:
            await lane.turn()
            done.append(i)

        tasks = [asyncio.create_task(worker(i)) for i in range(6)]
        await asyncio.sleep(0)
        tasks[2].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return done

    assert asyncio.run(run()) == [0, 1, 3, 4, 5]


def test_a_waiting_transport_stops_reading_and_resumes() -> None:
    async def run() -> tuple[bool, bool, bool]:
        left, right = socket.socketpair()
        reader, writer = await asyncio.open_connection(sock=left)
        transport = writer.transport
        assert isinstance(transport, asyncio.ReadTransport)
        lane = Lane(per_tick=1)
        first = asyncio.create_task(lane.turn())  # takes the iteration's one turn
        waiting = asyncio.create_task(lane.turn(transport))
        await asyncio.sleep(0)  # both ran their first step, in this order
        paused = not transport.is_reading()
        await asyncio.gather(first, waiting)
        resumed = transport.is_reading()
        right.sendall(b"x\n")
        line = await asyncio.wait_for(reader.readline(), WAIT)
        writer.close()
        right.close()
        return paused, resumed, line == b"x\n"

    assert asyncio.run(run()) == (True, True, True)


def test_a_burst_beyond_the_accept_batch_is_queued_not_refused(
    start_hub: Callable[..., HubProcess],
) -> None:
    hub = start_hub()
    path = str(hub.unix.path)
    burst = 20 * ACCEPT_BATCH
    socks = []
    try:
        # Connected as fast as this process can: the hub accepts ACCEPT_BATCH
        # per iteration, so the kernel's queue must hold the rest (a client
        # with a timeout is refused at once, EAGAIN, when the queue is full).
        for _ in range(burst):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(WAIT)
            sock.connect(path)
            socks.append(sock)
        for i, sock in enumerate(socks):
            sock.sendall(hello_line("subscriber", training_id=f"burst-{i}"))
        for sock in socks:
            assert b'"welcome"' in sock.makefile("rb").readline()
        client = RawClient(hub.unix)
        assert "welcome" in client.hello("subscriber")
        client.close()
    finally:
        for sock in socks:
            sock.close()
