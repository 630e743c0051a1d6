"""Hostile and oversized input against a real hub: it stays small, fair and quiet (issue 16).

Each case runs a real ``pulse serve`` process (or, for the client's own
behaviour, a scripted hub on a real Unix socket) with bounded loads on
loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hubkit import WAIT, HubProcess, RawClient, meta, progress, status

from pulse_core.codec import encode
from pulse_core.events import ErrorReported, Metrics, StatusChanged
from pulse_transports.subscribe import AsyncSubscriber, Snapshot, Subscriber
from pulse_transports.wire import MAX_FRAME, MAX_RESUME, hello_line, welcome_line

BIG_TEXT = 400 * 1024


def big_error(tid: str, seq: int) -> ErrorReported:
    """A legal error event of about 400 KB (another client than ours can send it)."""
    return ErrorReported(
        tid,
        seq,
        time.time(),
        "CUDA_OOM",
        "x" * 1000,
        details={"trace": "t" * BIG_TEXT},
    )


def raw_line(event: Any) -> bytes:
    """An event's line without the codec's bounding (as a foreign producer writes it)."""
    from pulse_core.codec import to_dict

    return orjson.dumps(to_dict(event), option=orjson.OPT_APPEND_NEWLINE)


def produce(hub: HubProcess, tid: str, lines: list[bytes]) -> RawClient:
    client = RawClient(hub.unix)
    assert "welcome" in client.hello("producer", training_id=tid)
    client.send(b"".join(lines))
    return client


def wait_until(check: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class TestOversizedRun:
    """A run whose events are legal but huge never makes the hub send a line over the limit."""

    @pytest.fixture
    def poisoned(self, hub: HubProcess) -> Iterator[HubProcess]:
        """A hub holding a healthy run and a run with three ~400 KB errors."""
        healthy = produce(hub, "healthy", [encode(meta("healthy")), encode(progress("healthy", 2))])
        lines = [raw_line(meta("big"))] + [raw_line(big_error("big", s)) for s in (2, 3, 4)]
        assert all(len(line) < MAX_FRAME for line in lines)
        big = produce(hub, "big", lines)
        check = RawClient(hub.unix)
        check.hello("subscriber", training_id="big")
        check.until(lambda o: "live" in o)
        yield hub
        for c in (healthy, big, check):
            c.close()

    def test_every_line_fits_the_frame(self, poisoned: HubProcess) -> None:
        """Snapshots and events a subscriber receives are each at most the frame limit."""
        client = RawClient(poisoned.unix)
        client.send(hello_line("subscriber"))
        sizes: dict[str, int] = {}
        deadline = time.monotonic() + WAIT
        while "live" not in sizes and time.monotonic() < deadline:
            raw = client.reader.readline(WAIT)
            assert raw is not None
            obj = orjson.loads(raw)
            key = (
                "snapshot:" + next(iter(obj["snapshot"])) if "snapshot" in obj else next(iter(obj))
            )
            sizes[key] = len(raw)
        client.close()
        assert {"snapshot:big", "snapshot:healthy", "live"} <= sizes.keys()
        assert max(sizes.values()) <= MAX_FRAME
        assert sizes["snapshot:big"] < MAX_FRAME

    def test_reference_subscribers_get_every_snapshot_and_stay_connected(
        self, poisoned: HubProcess
    ) -> None:
        """Subscriber and AsyncSubscriber receive both runs and connect once in 10 s."""
        with Subscriber(path=poisoned.socket_path, reconnect=True) as sub:
            seen = set()
            end = time.monotonic() + 10.0
            while time.monotonic() < end:
                message = sub.recv(timeout=0.5)
                if isinstance(message, Snapshot):
                    seen.add(message.training_id)
            assert seen == {"big", "healthy"}
            assert sub.connects == 1

        async def run_async() -> tuple[set[str], int]:
            asub = AsyncSubscriber(path=poisoned.socket_path, reconnect=True)
            async with asub:
                got = set()
                end = time.monotonic() + 5.0
                while time.monotonic() < end:
                    message = await asub.recv(timeout=0.5)
                    if isinstance(message, Snapshot):
                        got.add(message.training_id)
                return got, asub.connects

        got, connects = asyncio.run(run_async())
        assert got == {"big", "healthy"}
        assert connects == 1

    def test_a_huge_metrics_line_is_bounded(self, hub: HubProcess) -> None:
        """A 1.04 MB metrics line reaches subscribers bounded, and the run's snapshot fits."""
        values = {f"m{i:06d}.{'k' * 40}": float(i) for i in range(17_900)}
        line = raw_line(Metrics("wide", 2, time.time(), extra=values))
        assert 1_000_000 < len(line) < MAX_FRAME
        sub = RawClient(hub.unix)
        sub.hello("subscriber", training_id="wide")
        sub.until(lambda o: "live" in o)
        producer = produce(hub, "wide", [raw_line(meta("wide")), line])
        got = sub.until(lambda o: o.get("type") == "metrics")
        producer.close()
        assert len(orjson.dumps(got[-1])) < MAX_FRAME
        late = RawClient(hub.unix)
        late.send(hello_line("subscriber", training_id="wide"))
        first = late.reader.readline(WAIT)
        assert first is not None
        assert len(first) <= MAX_FRAME
        late.close()
        sub.close()


class ScriptedHub:
    """A stand-in hub on a Unix socket: welcomes, sends *script*, then holds or closes."""

    def __init__(self, path: Path, script: bytes, *, hold: bool = True) -> None:
        self.path = path
        self.script = script
        self.hold = hold
        self.accepted = 0
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(64)
        self._server.settimeout(0.2)
        self._open: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            try:
                conn.settimeout(5)
                conn.recv(65536)  # the hello
                conn.sendall(welcome_line(role="subscriber", max_frame=MAX_FRAME) + self.script)
            except OSError:
                pass
            if self.hold:
                self._open.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self._server.close()
        for conn in self._open:
            conn.close()


SNAPSHOT = b'{"snapshot": {"ok": {"stats": {"last_seq": 3}}}}\n'


class TestClientSkipsAndBacksOff:
    """A reference client skips an over-long line and never reconnects in a tight loop."""

    @pytest.fixture
    def sock_path(self, tmp_path: Path) -> Path:
        return tmp_path / "s.sock"

    def test_sync_subscriber_skips_an_oversized_line(self, sock_path: Path) -> None:
        """The line after a 2 MiB line arrives on the same connection."""
        fake = ScriptedHub(sock_path, b"{" + b" " * (2 * MAX_FRAME) + b"}\n" + SNAPSHOT)
        try:
            with Subscriber(path=sock_path, reconnect=True) as sub:
                message = sub.recv(timeout=WAIT)
                assert isinstance(message, Snapshot)
                assert message.training_id == "ok"
                assert (sub.connects, sub.skipped, fake.accepted) == (1, 1, 1)
        finally:
            fake.close()

    def test_async_subscriber_skips_an_oversized_line(self, sock_path: Path) -> None:
        """The same for AsyncSubscriber, at exactly one byte over the limit too."""
        over = b"{" + b" " * (MAX_FRAME - 2) + b"}\n"  # MAX_FRAME + 1 bytes
        assert len(over) == MAX_FRAME + 1
        fake = ScriptedHub(sock_path, over + SNAPSHOT)

        async def run() -> tuple[Any, int, int]:
            async with AsyncSubscriber(path=sock_path, reconnect=True) as sub:
                message = await sub.recv(timeout=WAIT)
                return message, sub.connects, sub.skipped

        try:
            message, connects, skipped = asyncio.run(run())
        finally:
            fake.close()
        assert isinstance(message, Snapshot)
        assert (connects, skipped) == (1, 1)

    @pytest.mark.parametrize("kind", ["sync", "async"])
    def test_a_hub_that_drops_at_once_is_not_hammered(self, sock_path: Path, kind: str) -> None:
        """Welcomed then dropped at once, a client connects a few times in 3 s, not thousands."""
        fake = ScriptedHub(sock_path, b"", hold=False)
        try:
            if kind == "sync":
                sub = Subscriber(path=sock_path, reconnect=True)
                end = time.monotonic() + 3.0
                while time.monotonic() < end:
                    sub.recv(timeout=0.2)
                sub.close()
            else:

                async def run() -> None:
                    asub = AsyncSubscriber(path=sock_path, reconnect=True)
                    await asub.recv(timeout=3.0)
                    await asub.aclose()

                asyncio.run(run())
        finally:
            fake.close()
        # 50-100 ms, then doubling to 2 s: at most about 7 connections in 3 s.
        assert 2 <= fake.accepted <= 10


class TestPartialLines:
    """Unfinished lines after a valid hello are bounded in bytes and in time."""

    def test_300_partial_lines_are_closed_and_bounded(
        self, start_hub: Callable[..., HubProcess]
    ) -> None:
        """300 connections each holding ~1 MB of an unfinished line: RSS stays low, all closed."""
        hub = start_hub("--line-timeout", "3")
        rss0 = hub.pid_stats()["rss"]
        chunk = b'{"type": "status", "message": "' + b"p" * (1000 * 1024)
        conns = []
        peak = 0
        for i in range(300):
            client = RawClient(hub.unix, timeout=5)
            client.hello("producer", training_id=f"p{i}")
            client.sock.setblocking(False)
            with contextlib.suppress(OSError):  # refused already (the hub's budget): fine
                client.sock.send(chunk)
            conns.append(client)
            if i % 25 == 0:
                peak = max(peak, hub.pid_stats()["rss"])
        assert wait_until(lambda: all(_closed(c.sock) for c in conns), timeout=WAIT + 5)
        peak = max(peak, hub.pid_stats()["rss"])
        for c in conns:
            c.close()
        assert peak - rss0 < 150 * 2**20, (rss0, peak)
        assert hub.alive()
        errors = hub.log()
        assert "line_timeout" in errors or "overloaded" in errors

    def test_frame_limit_counts_the_newline(self, start_hub: Callable[..., HubProcess]) -> None:
        """A line of exactly max_frame bytes is taken; one byte more is refused."""
        hub = start_hub("--max-frame", "2048")
        at = 1_800_000_000.5  # a fixed timestamp: every line's envelope has one length
        base = encode(StatusChanged("f", 2, at, "running", ""))

        def sized(n: int, seq: int) -> bytes:
            line = encode(StatusChanged("f", seq, at, "running", "m" * (n - len(base))))
            assert len(line) == n
            return line

        producer = RawClient(hub.unix)
        producer.hello("producer", training_id="f")
        producer.send(encode(meta("f")) + sized(2048, 2))
        producer.send(sized(2049, 3))
        got = producer.line()
        assert got["error"]["code"] == "frame_too_large"
        assert producer.closed_by_peer()
        producer.close()
        sub = RawClient(hub.unix)
        sub.hello("subscriber", training_id="f")
        snapshot = sub.until(lambda o: "snapshot" in o)[-1]
        assert snapshot["snapshot"]["f"]["stats"]["last_seq"] == 2
        sub.close()


def _closed(sock: socket.socket) -> bool:
    """True once the peer closed *sock* (reading what is left)."""
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


class TestHelloLimits:
    """A hello's resume is capped and its rate has a floor."""

    def test_a_resume_of_40000_runs_is_cheap(self, hub: HubProcess) -> None:
        """40,000 resume entries: welcome and catch-up come quickly; the hub stays responsive."""
        resume = {f"r{i}": 5 for i in range(40_000)}
        line = hello_line("subscriber", resume=resume)
        assert len(line) < MAX_FRAME
        assert len(resume) > MAX_RESUME
        client = RawClient(hub.unix)
        start = time.monotonic()
        client.send(line)
        client.until(lambda o: "live" in o)
        took = time.monotonic() - start
        client.close()
        other = RawClient(hub.unix)
        assert "welcome" in other.hello("subscriber")
        other.close()
        assert took < 2.0

    def test_a_tiny_rate_is_raised_and_never_delays_a_status(self, hub: HubProcess) -> None:
        """rate 1e-6 becomes 0.1/s, and a status after held progress arrives at once."""
        sub = RawClient(hub.unix)
        welcome = sub.hello("subscriber", training_id="slow", rate=1e-6)
        assert welcome["welcome"]["rate"] == pytest.approx(0.1)
        sub.until(lambda o: "live" in o)
        producer = produce(
            hub,
            "slow",
            [encode(meta("slow")), encode(progress("slow", 2, step=1))],
        )
        sub.until(lambda o: o.get("type") == "progress")
        producer.send(encode(progress("slow", 3, step=2)) + encode(progress("slow", 4, step=3)))
        time.sleep(0.3)
        start = time.monotonic()
        producer.send(encode(status("slow", 5, "running", "still here")))
        got = sub.until(lambda o: o.get("type") == "status", timeout=5.0)
        assert time.monotonic() - start < 3.0
        seqs = [o["seq"] for o in got if "seq" in o]
        assert seqs == sorted(seqs)
        assert seqs[-1] == 5
        producer.close()
        sub.close()


class TestWebHostile:
    """Half-open HTTP requests are timed out and capped apart from the hub socket."""

    def test_half_open_requests_do_not_starve_producers(
        self, start_hub: Callable[..., HubProcess]
    ) -> None:
        """600 never-finished request heads under a 512-descriptor limit."""
        hub = start_hub("--http", "127.0.0.1:0", "--no-token", nofile=512)
        url = _url(hub)
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        half = []
        for _ in range(600):
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            half.append(s)
        try:
            start = time.monotonic()
            producer = RawClient(hub.unix, timeout=10)
            assert "welcome" in producer.hello("producer", training_id="w")
            producer.send(encode(meta("w")))
            welcome_s = time.monotonic() - start
            with urllib.request.urlopen(url + "api/runs", timeout=10) as response:
                assert response.status == 200
                assert orjson.loads(response.read())["runs"] is not None
            producer.close()
            for s in half:
                s.setblocking(False)
            # Every half-open head is closed: at once past the cap, after the head timeout below it.
            assert wait_until(lambda: all(_closed(s) for s in half), timeout=25.0)
        finally:
            for s in half:
                s.close()
        assert welcome_s < 5.0
        assert hub.alive()
        err = hub.log()
        assert len(err) < 20_000, err[-2000:]
        assert "Traceback" not in err

    def test_stopping_with_clients_connected_is_quiet(
        self, start_hub: Callable[..., HubProcess]
    ) -> None:
        """SIGTERM with subscribers, producers, an SSE stream and a half-open head: no traceback."""
        hub = start_hub("--http", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--no-token")
        url = _url(hub)
        host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
        producer = produce(hub, "q", [encode(meta("q")), encode(progress("q", 2, step=1))])
        subs = [RawClient(hub.unix), RawClient(hub.tcp_address)]
        for sub in subs:
            sub.hello("subscriber")
        stream = socket.create_connection((host, int(port)), timeout=5)
        stream.sendall(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert stream.recv(4096).startswith(b"HTTP/1.1 200")
        half = socket.create_connection((host, int(port)), timeout=5)
        half.sendall(b"GET / HTTP/1.1\r\n")
        partial = RawClient(hub.unix)
        partial.hello("producer", training_id="r")
        partial.send(b'{"type": "sta')
        time.sleep(0.3)
        assert hub.stop() == 0
        for c in (producer, partial, *subs):
            c.close()
        stream.close()
        half.close()
        err = hub.log()
        assert "Traceback" not in err, err[-3000:]
        assert len(err) < 20_000


def _url(hub: HubProcess) -> str:
    text = hub.out_path.read_text()
    url = next(w for w in text.split() if w.startswith("http://"))
    return url.split("?", 1)[0]  # without the ?token= a hub with a token prints
