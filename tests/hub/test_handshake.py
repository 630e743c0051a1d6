"""The hub handshake and bad input, against a real ``pulse serve`` process."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Callable

import orjson
from hubkit import WAIT, HubProcess, RawClient, events_of, meta, progress, status

from pulse_transports.wire import Address, hello_line


def assert_refused(client: RawClient, code: str) -> dict[str, object]:
    """The hub answers with a fatal error *code* and closes the connection."""
    reply = client.line()
    assert "error" in reply, reply
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["fatal"] is True
    assert reply["error"]["message"]
    assert client.closed_by_peer()
    return reply["error"]  # type: ignore[no-any-return]


def still_serves(
    hub: HubProcess, clients: Callable[[Address], RawClient], tid: str = "probe"
) -> None:
    """A fresh producer and subscriber still work: the hub is healthy."""
    producer = clients(hub.unix)
    assert "welcome" in producer.hello("producer", training_id=tid)
    producer.send_events(meta(tid), status(tid, 2, "running"))
    subscriber = clients(hub.unix)
    assert "welcome" in subscriber.hello("subscriber", training_id=tid)
    lines = subscriber.until(lambda o: o.get("type") == "status" or "snapshot" in o)
    assert lines[-1].get("training_id") == tid or tid in lines[-1].get("snapshot", {})


class TestWelcome:
    """A valid hello is answered with a welcome naming the protocol and limits."""

    def test_producer_welcome(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        reply = clients(hub.unix).hello("producer", training_id="run-1")
        welcome = reply["welcome"]
        assert welcome["hub"] == "pulse"
        assert welcome["protocol"] == 2
        assert welcome["role"] == "producer"
        assert welcome["training_id"] == "run-1"
        assert welcome["last_seq"] is None
        assert welcome["max_frame"] == 1024 * 1024

    def test_subscriber_welcome_over_tcp(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        client = clients(hub.tcp_address)
        welcome = client.hello("subscriber")["welcome"]
        assert welcome["role"] == "subscriber"
        assert welcome["rate"] == 10.0
        live = client.line()["live"]
        assert live["runs"] == []
        assert isinstance(live["time"], float)

    def test_subscriber_may_ask_for_a_lower_rate_not_a_higher_one(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        assert clients(hub.unix).hello("subscriber", rate=2)["welcome"]["rate"] == 2.0
        assert clients(hub.unix).hello("subscriber", rate=500)["welcome"]["rate"] == 10.0


class TestBlankLinesBeforeTheHello:
    """Blank lines are ignored before the hello as after it (hub-protocol.md section 1)."""

    def test_blank_lines_then_a_hello_get_a_welcome(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        """Empty and whitespace-only lines before the hello do not refuse the connection."""
        client = clients(hub.unix)
        client.send(b"\n \r\n\n")
        assert "welcome" in client.hello("producer", training_id="blank-first")


class TestBadHandshake:
    """Every malformed or unacceptable hello gets a clear error and a close."""

    def test_not_json(self, hub: HubProcess, clients: Callable[[Address], RawClient]) -> None:
        client = clients(hub.unix)
        client.send(b"this is not json\n")
        assert "not valid JSON" in str(assert_refused(client, "bad_json")["message"])

    def test_an_http_request(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        client = clients(hub.tcp_address)
        client.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert_refused(client, "bad_json")

    def test_json_that_is_not_an_object(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        client = clients(hub.unix)
        client.send(b"[1, 2, 3]\n")
        assert_refused(client, "bad_hello")

    def test_unknown_handshake(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        client = clients(hub.unix)
        client.send({"hello": "http", "role": "producer"})
        assert "hello" in str(assert_refused(client, "bad_hello")["message"])

    def test_unknown_role(self, hub: HubProcess, clients: Callable[[Address], RawClient]) -> None:
        client = clients(hub.unix)
        client.send({"hello": "pulse", "role": "admin", "protocol": 2})
        assert "role" in str(assert_refused(client, "bad_hello")["message"])

    def test_unsupported_protocol(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        client = clients(hub.unix)
        client.send({"hello": "pulse", "role": "subscriber", "protocol": 3})
        assert "[2]" in str(assert_refused(client, "unsupported_protocol")["message"])

    def test_producer_without_training_id(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        client = clients(hub.unix)
        client.send({"hello": "pulse", "role": "producer", "protocol": 2})
        assert "training_id" in str(assert_refused(client, "bad_hello")["message"])

    def test_unsafe_training_id(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        client = clients(hub.unix)
        client.send({"hello": "pulse", "role": "producer", "protocol": 2, "training_id": "../etc"})
        assert_refused(client, "bad_hello")

    def test_bad_resume(self, hub: HubProcess, clients: Callable[[Address], RawClient]) -> None:
        client = clients(hub.unix)
        client.send({"hello": "pulse", "role": "subscriber", "resume": {"run-1": "ten"}})
        assert "resume" in str(assert_refused(client, "bad_hello")["message"])

    def test_oversized_hello(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--max-frame", "4096")
        client = clients(hub.unix)
        client.send(b'{"hello": "pulse", "pad": "' + b"x" * 10_000 + b'"}\n')
        assert "4096" in str(assert_refused(client, "frame_too_large")["message"])
        still_serves(hub, clients)
        assert "frame_too_large" in hub.log()

    def test_half_open_connection_times_out(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--handshake-timeout", "0.5")
        silent = clients(hub.unix)
        partial = clients(hub.unix)
        partial.send(b'{"hello": "pulse", "ro')  # never finished
        assert_refused(silent, "handshake_timeout")
        assert_refused(partial, "handshake_timeout")
        still_serves(hub, clients)
        assert "handshake_timeout" in hub.log()

    def test_client_leaving_before_hello_is_harmless(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        for _ in range(20):
            client = RawClient(hub.unix)
            client.send(b'{"hello": "pul')
            client.close()
        still_serves(hub, clients)
        assert hub.alive()


class TestToken:
    """A hub with a token admits TCP clients that send it, and only those."""

    def test_right_token(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--tcp", "127.0.0.1:0", "--token", "s3cret")
        reply = clients(hub.tcp_address).hello("producer", training_id="run-1", token="s3cret")
        assert "welcome" in reply

    def test_wrong_token(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--tcp", "127.0.0.1:0", "--token", "s3cret")
        client = clients(hub.tcp_address)
        client.send(hello_line("subscriber", token="guess"))
        assert "wrong" in str(assert_refused(client, "unauthorized")["message"])
        assert "unauthorized" in hub.log()
        assert "s3cret" not in hub.log()

    def test_missing_token(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--tcp", "127.0.0.1:0", env={"PULSE_HUB_TOKEN": "from-env"})
        client = clients(hub.tcp_address)
        client.send(hello_line("producer", training_id="run-1"))
        assert_refused(client, "unauthorized")
        ok = clients(hub.tcp_address).hello("producer", training_id="run-1", token="from-env")
        assert "welcome" in ok

    def test_unix_socket_is_trusted_by_its_file_mode(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--tcp", "127.0.0.1:0", "--token", "s3cret")
        assert hub.socket_path is not None
        assert hub.socket_path.stat().st_mode & 0o777 == 0o600
        assert "welcome" in clients(hub.unix).hello("producer", training_id="run-1")


class TestProducerInput:
    """Bad producer lines are rejected one by one, without harming the run or others."""

    def test_other_runs_training_id_is_rejected(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        watcher = clients(hub.unix)
        watcher.hello("subscriber")
        watcher.until(lambda o: "live" in o)
        a = clients(hub.unix)
        a.hello("producer", training_id="run-a")
        b = clients(hub.unix)
        b.hello("producer", training_id="run-b")
        a.send_events(meta("run-a"), status("run-a", 2, "running"))
        b.send_events(meta("run-b"), status("run-b", 2, "running"))
        # run-a's producer tries to end run-b: rejected, run-b untouched.
        a.send_events(status("run-b", 3, "error", "forged"), progress("run-a", 3, epoch=1))
        reply = a.line()
        assert reply["error"]["code"] == "wrong_training_id"
        assert reply["error"]["fatal"] is False
        assert reply["error"]["seq"] == 3
        assert "run-b" in reply["error"]["message"]
        b.send_events(status("run-b", 3, "done", "real"))
        lines = watcher.until(
            lambda o: o.get("training_id") == "run-b" and o.get("status") == "done"
        )
        run_b = events_of(lines, "run-b")
        assert [e["status"] for e in run_b if e["type"] == "status"] == ["running", "done"]
        assert not any(e.get("message") == "forged" for e in events_of(lines))
        # the producer's own run goes on over the same connection
        assert any(e["type"] == "progress" for e in events_of(lines, "run-a"))
        assert "wrong_training_id" in hub.log()

    def test_malformed_lines_are_rejected_and_the_connection_goes_on(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")
        producer.send(b"{not json\n")
        producer.send({"type": "status", "v": 2, "training_id": "run-1", "seq": "x"})
        producer.send(b"\n")
        first, second = producer.line(), producer.line()
        assert first["error"]["code"] == "bad_event"
        assert "JSON" in first["error"]["message"]
        assert second["error"]["code"] == "bad_event"
        assert first["error"]["fatal"] is False
        producer.send_events(meta("run-1"), status("run-1", 2, "running"))
        subscriber = clients(hub.unix)
        subscriber.hello("subscriber", training_id="run-1")
        snapshot = subscriber.until(lambda o: "snapshot" in o)[-1]["snapshot"]["run-1"]
        assert snapshot["status"] == "running"
        dropped = [line for line in hub.log().splitlines() if "dropped a producer line" in line]
        # named as every hub line names a connection: peer, listener, role and run
        assert dropped, hub.log()
        for word in ("bad_event", "peer=", "via=unix", "role=producer", "training_id=run-1"):
            assert word in dropped[0], dropped[0]

    def test_oversized_event_line_closes_only_that_producer(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--max-frame", "4096")
        big = clients(hub.unix)
        big.hello("producer", training_id="run-big")
        other = clients(hub.unix)
        other.hello("producer", training_id="run-ok")
        big.send_events(meta("run-big"))
        big.send_events(meta("run-big", 2, labels={"blob": "x" * 8000}))
        assert_refused(big, "frame_too_large")
        other.send_events(meta("run-ok"), status("run-ok", 2, "running"))
        subscriber = clients(hub.unix)
        subscriber.hello("subscriber")
        lines = subscriber.until(lambda o: "live" in o)
        views = {tid: view for o in lines if "snapshot" in o for tid, view in o["snapshot"].items()}
        assert views["run-ok"]["status"] == "running"
        assert views["run-big"]["stats"]["last_seq"] == 1

    def test_producer_closing_mid_line_loses_only_that_line(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = RawClient(hub.unix)
        producer.hello("producer", training_id="run-1")
        producer.send_events(meta("run-1"), status("run-1", 2, "running"))
        producer.send(b'{"type": "status", "v": 2, "training_id": "run-1", "seq": 3, "sta')
        producer.close()
        subscriber = clients(hub.unix)
        subscriber.hello("subscriber")
        lines = subscriber.until(lambda o: "live" in o)
        view = next(o["snapshot"]["run-1"] for o in lines if "snapshot" in o)
        assert view["stats"]["last_seq"] == 2
        assert view["status"] == "running"

    def test_a_second_producer_for_a_run_supersedes_the_first(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        old = clients(hub.unix)
        old.hello("producer", training_id="run-1")
        old.send_events(meta("run-1"))
        new = clients(hub.unix)
        welcome = new.hello("producer", training_id="run-1")["welcome"]
        assert welcome["last_seq"] == 1
        assert_refused(old, "superseded")


class TestManyIdleConnections:
    """A thousand idle connections neither crash the hub nor starve real clients."""

    def test_thousand_idle_connections(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        hub = start_hub("--tcp", "127.0.0.1:0", "--handshake-timeout", "3")
        idle: list[socket.socket] = []
        try:
            for index in range(1000):
                address = hub.unix if index % 2 else hub.tcp_address
                if address.path is not None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.connect(str(address.path))
                else:
                    sock = socket.create_connection((address.host, address.port), timeout=WAIT)
                idle.append(sock)
            still_serves(hub, clients)
            assert hub.pid_stats()["fds"] > 1000  # they really are open at the hub
            # Each idle connection is told why and closed after the handshake timeout.
            deadline = time.monotonic() + 30
            refused = 0
            for sock in idle:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                data = b""
                while not data.endswith(b"\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if orjson.loads(data)["error"]["code"] == "handshake_timeout":
                    refused += 1
            assert refused == 1000
            assert hub.alive()
            still_serves(hub, clients, "after")
        finally:
            for sock in idle:
                sock.close()

    def test_connection_limit(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--max-connections", "3")
        held = [clients(hub.unix) for _ in range(3)]
        extra = clients(hub.unix)
        assert_refused(extra, "too_many_connections")
        held[0].close()
        deadline = time.monotonic() + WAIT
        while True:  # the hub frees the slot once it sees the close
            reply = clients(hub.unix).hello("subscriber")
            if "welcome" in reply or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert "welcome" in reply
