"""What hub subscribers receive: snapshots, resumption, rate limits, slow readers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from hubkit import (
    HubProcess,
    RawClient,
    error,
    events_of,
    meta,
    metrics,
    progress,
    status,
    wait_applied,
    write_log,
)

from pulse_core.codec import encode
from pulse_core.events import ErrorReported, Event
from pulse_transports.wire import Address

RATE_INTERVAL = 0.1  # the hub's default: 10 updates/s per run and stream


def a_run(tid: str, n: int) -> list[Event]:
    """meta, preparing, running, then progress/metrics up to seq *n*."""
    out: list[Event] = [meta(tid), status(tid, 2, "preparing"), status(tid, 3, "running")]
    for seq in range(4, n + 1):
        out.append(
            progress(tid, seq, epoch=1, step=seq) if seq % 2 else metrics(tid, seq, loss=1 / seq)
        )
    return out


class TestSnapshot:
    """A new subscriber first gets the state of every run the hub holds, then events."""

    def test_snapshot_of_every_run_then_live_events(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        a = clients(hub.unix)
        a.hello("producer", training_id="run-a")
        a.send_events(
            meta("run-a", total_epochs=3),
            status("run-a", 2, "running"),
            progress("run-a", 3, epoch=2),
        )
        b = clients(hub.unix)
        b.hello("producer", training_id="run-b")
        b.send_events(
            meta("run-b"),
            status("run-b", 2, "running"),
            error("run-b", 3),
            status("run-b", 4, "error"),
        )
        wait_applied(hub.unix, "run-b", 4)
        wait_applied(hub.unix, "run-a", 3)

        subscriber = clients(hub.unix)
        subscriber.hello("subscriber")
        lines = subscriber.until(lambda o: "live" in o)
        views = {tid: view for o in lines if "snapshot" in o for tid, view in o["snapshot"].items()}
        assert set(views) == {"run-a", "run-b"}
        assert views["run-a"]["status"] == "running"
        assert views["run-a"]["progress"]["epoch"] == 2
        assert views["run-a"]["progress"]["total_epochs"] == 3
        assert views["run-b"]["status"] == "error"
        assert views["run-b"]["last_error"]["error_code"] == "CUDA_OOM"
        assert sorted(lines[-1]["live"]["runs"]) == ["run-a", "run-b"]
        assert not events_of(lines)  # nothing but snapshots before live

        a.send_events(status("run-a", 4, "done", "finished"))
        after = subscriber.until(lambda o: o.get("status") == "done")
        assert events_of(after) == [
            {
                "type": "status",
                "v": 2,
                "training_id": "run-a",
                "seq": 4,
                "timestamp": after[-1]["timestamp"],
                "status": "done",
                "message": "finished",
            }
        ]

    def test_one_run_only(self, hub: HubProcess, clients: Callable[[Address], RawClient]) -> None:
        producers = {}
        for tid in ("run-a", "run-b"):
            producers[tid] = clients(hub.unix)
            producers[tid].hello("producer", training_id=tid)
            producers[tid].send_events(meta(tid), status(tid, 2, "running"))
            wait_applied(hub.unix, tid, 2)
        subscriber = clients(hub.unix)
        assert (
            subscriber.hello("subscriber", training_id="run-b")["welcome"]["training_id"] == "run-b"
        )
        lines = subscriber.until(lambda o: "live" in o)
        assert lines[-1]["live"]["runs"] == ["run-b"]
        for tid in ("run-a", "run-b"):
            producers[tid].send_events(status(tid, 3, "done"))
        lines += subscriber.until(lambda o: o.get("status") == "done")
        producers["run-a"].send_events(status("run-a", 4, "error"))  # after done: ignored anyway
        lines += subscriber.drain(0.5)
        assert {o["training_id"] for o in events_of(lines)} == {"run-b"}
        assert all(set(o["snapshot"]) == {"run-b"} for o in lines if "snapshot" in o)


class TestResume:
    """A resuming subscriber gets exactly the events it missed, then live ones."""

    def test_resume_from_the_log(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        history = a_run("run-old", 50)
        path = write_log(hub.home, history)
        with path.open("ab") as handle:
            handle.write(b"{torn line\n")  # skipped, like any reader does
            handle.write(encode(status("run-old", 51, "done", "finished")))
        subscriber = clients(hub.unix)
        subscriber.hello("subscriber", resume={"run-old": 20})
        lines = subscriber.until(lambda o: "live" in o)
        seqs = [o["seq"] for o in events_of(lines)]
        assert seqs == list(range(21, 52))
        assert not any("snapshot" in o for o in lines)

    def test_resume_from_memory_then_live_without_duplicates(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")
        producer.send_events(*a_run("run-1", 30))
        wait_applied(hub.unix, "run-1", 30)

        subscriber = clients(hub.unix)
        subscriber.hello("subscriber", resume={"run-1": 10})
        lines = subscriber.until(lambda o: "live" in o)
        assert [o["seq"] for o in events_of(lines)] == list(range(11, 31))
        # resent events (a producer reconnecting) are not delivered twice
        producer.send_events(*a_run("run-1", 30)[25:], status("run-1", 31, "cooling_down"))
        producer.send_events(status("run-1", 32, "done"))
        lines += subscriber.until(lambda o: o.get("status") == "done")
        seqs = [o["seq"] for o in events_of(lines)]
        assert seqs == sorted(set(seqs))
        assert seqs[-2:] == [31, 32]

    def test_resume_a_run_the_subscriber_is_up_to_date_with(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")
        producer.send_events(*a_run("run-1", 12))
        wait_applied(hub.unix, "run-1", 12)
        subscriber = clients(hub.unix)
        subscriber.hello("subscriber", resume={"run-1": 12})
        lines = subscriber.until(lambda o: "live" in o)
        assert events_of(lines) == []
        assert not any("snapshot" in o for o in lines)

    def test_a_restarted_hub_resumes_a_run_from_its_log(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        first = start_hub()
        history = a_run("run-1", 40)
        write_log(first.home, history)  # what the run's file sink wrote
        producer = clients(first.unix)
        assert producer.hello("producer", training_id="run-1")["welcome"]["last_seq"] == 40
        first.stop()
        second = start_hub()
        producer = clients(second.unix)
        # the hub has the run's state from the log before any event arrives
        assert producer.hello("producer", training_id="run-1")["welcome"]["last_seq"] == 40
        subscriber = clients(second.unix)
        subscriber.hello("subscriber")
        lines = subscriber.until(lambda o: "live" in o)
        view = next(o["snapshot"]["run-1"] for o in lines if "snapshot" in o)
        assert view["status"] == "running"
        assert view["stats"]["last_seq"] == 40


class TestRateLimit:
    """Each subscriber gets at most one value per stream, run and interval, and the last one."""

    def test_progress_is_coalesced_and_the_last_value_arrives(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")
        producer.send_events(meta("run-1"), status("run-1", 2, "running"))
        subscriber = clients(hub.unix)
        subscriber.hello("subscriber", training_id="run-1")
        subscriber.until(lambda o: "live" in o)
        started = time.monotonic()
        seq = 3
        for step in range(300):
            producer.send_events(
                progress("run-1", seq, epoch=1, step=step),
                metrics("run-1", seq + 1, loss=1 / (step + 1)),
            )
            seq += 2
            time.sleep(0.004)
        lines = subscriber.until(lambda o: o.get("type") == "progress" and o["step"] == 299)
        lines += subscriber.until(lambda o: o.get("type") == "metrics" and o["loss"] == 1 / 300)
        elapsed = time.monotonic() - started
        got_progress = [o for o in events_of(lines) if o["type"] == "progress"]
        got_metrics = [o for o in events_of(lines) if o["type"] == "metrics"]
        bound = elapsed / RATE_INTERVAL + 2  # leading edge + one per interval
        assert 2 <= len(got_progress) <= bound
        assert 2 <= len(got_metrics) <= bound
        assert len(got_progress) < 300 / 3  # really coalesced
        steps = [o["step"] for o in got_progress]
        assert steps == sorted(steps)
        assert steps[-1] == 299

    def test_status_and_errors_are_never_dropped_and_stay_in_order(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")
        subscriber = clients(hub.unix)
        subscriber.hello("subscriber", training_id="run-1")
        subscriber.until(lambda o: "live" in o)
        events: list[Event] = [meta("run-1"), status("run-1", 2, "running")]
        seq = 3
        for note in range(200):
            for step in range(20):
                events.append(progress("run-1", seq, epoch=note, step=step))
                seq += 1
            events.append(status("run-1", seq, "running", f"note {note}"))
            seq += 1
            if note % 50 == 0:
                events.append(error("run-1", seq, "OUT_OF_MEMORY", f"soft error {note}"))
                seq += 1
        events.append(status("run-1", seq, "done", "finished"))
        producer.send_events(*events)
        lines = subscriber.until(lambda o: o.get("status") == "done")
        got = events_of(lines)
        notes = [o["message"] for o in got if o["type"] == "status"]
        assert notes == ["", *[f"note {n}" for n in range(200)], "finished"]
        assert [o["message"] for o in got if o["type"] == "error"] == [
            f"soft error {n}" for n in (0, 50, 100, 150)
        ]
        seqs = [o["seq"] for o in got]
        assert seqs == sorted(seqs)
        # the progress held back when a status came was sent just before it
        last_progress = got[-3]
        assert got[-2]["message"] == "note 199"
        assert last_progress["type"] == "progress"
        assert (last_progress["epoch"], last_progress["step"]) == (199, 19)

    def test_each_subscriber_has_its_own_rate(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")
        producer.send_events(meta("run-1"), status("run-1", 2, "running"))
        fast = clients(hub.unix)
        fast.hello("subscriber")
        slow = clients(hub.unix)
        assert slow.hello("subscriber", rate=2)["welcome"]["rate"] == 2.0
        for client in (fast, slow):
            client.until(lambda o: "live" in o)
        started = time.monotonic()
        for step in range(150):
            producer.send_events(progress("run-1", step + 3, step=step))
            time.sleep(0.01)
        fast_lines = fast.until(lambda o: o.get("step") == 149)
        slow_lines = slow.until(lambda o: o.get("step") == 149)
        elapsed = time.monotonic() - started
        assert len(events_of(slow_lines)) <= elapsed * 2 + 2
        assert len(events_of(slow_lines)) < len(events_of(fast_lines))


class TestSlowSubscriber:
    """A subscriber that stops reading is cut off; producers and others never wait for it."""

    def test_stuck_subscriber_is_told_to_resync_and_dropped(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--subscriber-buffer", "10", "--subscriber-limit", "1000")
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert hub.socket_path is not None
        stuck.connect(str(hub.socket_path))
        stuck.sendall(b'{"hello": "pulse", "role": "subscriber", "protocol": 2}\n')
        healthy = clients(hub.unix)
        healthy.hello("subscriber")
        healthy.until(lambda o: "live" in o)

        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-1")
        events: list[Event] = [meta("run-1"), status("run-1", 2, "running")]
        pad = "x" * 2000
        for seq in range(3, 3003):
            events.append(status("run-1", seq, "running", f"{seq} {pad}"))
        events.append(status("run-1", 3003, "done", "finished"))
        sent = threading.Event()

        def produce() -> None:
            # ~6 MB, far more than the stuck subscriber's socket and buffer hold;
            # in chunks, so the healthy reader (plain Python) keeps up.
            for start in range(0, len(events), 50):
                producer.send_events(*events[start : start + 50])
                time.sleep(0.005)
            sent.set()

        thread = threading.Thread(target=produce)
        thread.start()
        lines = healthy.until(lambda o: o.get("status") == "done", timeout=60)
        thread.join(30)
        assert sent.is_set()
        assert [o["seq"] for o in events_of(lines)] == list(range(1, 3004))

        # Now the stuck one reads: what it got, then resync, then the end.
        stuck.settimeout(15)
        data = b""
        while True:
            chunk = stuck.recv(1 << 20)
            if not chunk:
                break
            data += chunk
        stuck.close()
        received = [line for line in data.split(b"\n") if line]
        assert received[-1].startswith(b'{"resync":')
        assert b"fell behind" in received[-1]
        assert len(received) < 3004
        assert "too slow" in hub.log()
        assert hub.alive()


def _stuck_subscriber(hub: HubProcess) -> socket.socket:
    """A subscriber with a tiny receive buffer that never reads."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    assert hub.socket_path is not None
    sock.connect(str(hub.socket_path))
    sock.sendall(b'{"hello": "pulse", "role": "subscriber", "protocol": 2}\n')
    return sock


def _closed(sock: socket.socket, timeout: float) -> bool:
    """True once the hub closed *sock* (reading and discarding what it holds)."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


class TestDroppedMeansClosed:
    """Subscribers past their bound are closed, not left connected (issues 16.5, 21.4)."""

    def test_stuck_subscribers_are_closed(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--subscriber-buffer", "10", "--subscriber-limit", "200")
        stuck = [_stuck_subscriber(hub) for _ in range(10)]
        healthy = clients(hub.unix)
        healthy.hello("subscriber")
        healthy.until(lambda o: "live" in o)
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-s")
        pad = "x" * 20_000
        events: list[Event] = [meta("run-s")]
        events += [status("run-s", seq, "running", f"{seq} {pad}") for seq in range(2, 802)]

        def produce() -> None:
            for start in range(0, len(events), 20):
                producer.send_events(*events[start : start + 20])
                time.sleep(0.01)

        thread = threading.Thread(target=produce)
        thread.start()
        lines = healthy.until(lambda o: o.get("seq") == 801, timeout=60)
        thread.join(30)
        assert [o["seq"] for o in events_of(lines)] == list(range(1, 802))
        started = time.monotonic()
        # They never read: the hub cuts them once the grace for reading the resync is over.
        assert all(_closed(sock, timeout=30) for sock in stuck), "a dropped subscriber stayed open"
        assert time.monotonic() - started < 30
        for sock in stuck:
            sock.close()
        assert "too slow; closing" in hub.log()
        healthy.send(b"\n")  # the healthy one is still served
        assert hub.alive()

    def test_the_byte_bound_drops_a_subscriber_of_large_events(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        """Default item bounds, ~60 KB events: the byte bound (16 MiB) drops it; RSS stays low."""
        hub = start_hub()
        stuck = _stuck_subscriber(hub)
        producer = clients(hub.unix)
        producer.hello("producer", training_id="run-b")
        pad = "y" * 60_000
        producer.send_events(meta("run-b"))
        for seq in range(2, 902):  # ~54 MB in all, far below the 10,000-item bound
            producer.send_events(
                ErrorReported(
                    "run-b", seq, time.time(), "UNHANDLED_EXCEPTION", "big", details={"pad": pad}
                )
            )
        assert _closed(stuck, timeout=40), "the stuck subscriber stayed open"
        stuck.close()
        assert hub.pid_stats()["rss"] < 200 * 1024 * 1024
        assert "too slow; closing" in hub.log()
