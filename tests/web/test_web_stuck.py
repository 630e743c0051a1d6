"""A stuck ``/events`` client is dropped -- closed -- as a hub subscriber is (issues 16.5, 21.4).

Real ``pulse serve --http`` processes; the stuck clients are real TCP
connections with a small receive buffer that never read; a raw producer on
the hub's Unix socket sends error events (never coalesced) until every
client that does not read is past the subscriber bound.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from pagekit import SseReader, WebHub

from pulse_core.codec import encode
from pulse_core.events import ErrorReported, RunMeta
from pulse_transports.wire import default_socket_path, hello_line

TID = "stuck-web"


def stuck_client(hub: WebHub) -> socket.socket:
    """An ``/events`` request (with the hub's token) whose sender then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.port))
    auth = f"Authorization: Bearer {hub.token}\r\n".encode()
    sock.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n" + auth + b"\r\n")
    return sock


def produce_errors(hub: WebHub, count: int, size: int, pause: float = 0.0) -> socket.socket:
    """A raw producer sending *count* error events of about *size* bytes, *pause* apart."""
    prod = socket.socket(socket.AF_UNIX)
    prod.connect(str(default_socket_path(hub.home)))
    prod.sendall(hello_line("producer", training_id=TID))
    assert b"welcome" in prod.recv(4096)
    prod.sendall(encode(RunMeta(training_id=TID, seq=1, timestamp=time.time())))
    blob = "e" * size
    for seq in range(2, count + 2):
        prod.sendall(
            encode(
                ErrorReported(
                    training_id=TID,
                    seq=seq,
                    timestamp=time.time(),
                    error_code="UNHANDLED_EXCEPTION",
                    message=f"error {seq}",
                    details={"blob": blob},
                )
            )
        )
        time.sleep(pause)
    return prod


def read_until_seq(reader: SseReader, seq: int, timeout: float) -> list[dict[str, object]]:
    """Every item until the event with *seq* arrived (short failure messages)."""
    items: list[dict[str, object]] = []
    for _, batch in reader.messages(timeout):
        items.extend(batch)
        if any(i.get("seq") == seq for i in batch):
            return items
    kinds = [next(iter(i)) if "type" not in i else i["seq"] for i in items[-5:]]
    raise AssertionError(f"seq {seq} never arrived; last items: {kinds}")


def closed_by_peer(sock: socket.socket, timeout: float) -> bool:
    """Read (and discard) until the hub closes the connection; False on timeout."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except OSError:  # reset: closed too
            return True
    return False


class TestStuckEventsClient:
    """Past the subscriber bound the client is told to resync, logged, and its connection closed."""

    def test_stuck_clients_are_closed_and_readers_keep_going(
        self, start_hub: Callable[..., WebHub]
    ) -> None:
        hub = start_hub(args=("--subscriber-buffer", "20", "--subscriber-limit", "100"))
        stuck = [stuck_client(hub) for _ in range(3)]
        reader = SseReader(hub)
        reader.items_until(lambda i: isinstance(i, dict) and "live" in i)
        time.sleep(0.5)  # the stuck requests are streams by now
        started = time.monotonic()
        done = threading.Event()
        result: list[socket.socket] = []

        def produce() -> None:
            result.append(produce_errors(hub, count=600, size=30_000, pause=0.01))
            done.set()

        threading.Thread(target=produce, daemon=True).start()
        try:
            got = read_until_seq(reader, 601, timeout=60)
            errors = [i for i in got if i.get("type") == "error"]
            assert [e["seq"] for e in errors] == list(range(2, 602))  # the reader lost nothing
            # Not read at all, so not even the resync: cut after the grace (10 s).
            for sock in stuck:
                assert closed_by_peer(sock, timeout=40), "a stuck /events client stayed open"
            assert time.monotonic() - started < 45
            text = hub.log()
            assert "/events client too slow; told to resync and dropped" in text
            assert "did not read its resync; connection closed" in text
            assert hub.get_json("/api/runs")  # the hub still answers
        finally:
            done.wait(60)
            for prod in result:
                prod.close()
            reader.close()
            for sock in stuck:
                sock.close()

    def test_a_slow_client_reads_its_resync_and_the_stream_ends(
        self, start_hub: Callable[..., WebHub]
    ) -> None:
        hub = start_hub(args=("--subscriber-buffer", "20", "--subscriber-limit", "100"))
        slow = SseReader(hub)
        slow.items_until(lambda i: isinstance(i, dict) and "live" in i)
        prod = produce_errors(hub, count=600, size=30_000)
        try:
            time.sleep(3.0)  # the client reads nothing meanwhile: it falls behind, then reads
            items = [i for _, batch in slow.messages(timeout=30) for i in batch]
            assert slow.ended  # the hub ended the stream
            assert any(isinstance(i, dict) and "resync" in i for i in items)
            assert "told to resync and dropped" in hub.log()
        finally:
            prod.close()
            slow.close()
