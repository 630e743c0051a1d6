"""The ``socket`` sink: from a TrainingRun to a real hub, through outages."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog
from hubkit import WAIT, HubProcess, RawClient, events_of, meta, progress, status, wait_applied

from pulse_core.codec import encode
from pulse_core.emitter import TrainingRun
from pulse_core.events import ErrorReported, Event, Heartbeat, Metrics, Progress, StatusChanged
from pulse_transports.file import FileSink, log_path
from pulse_transports.socket import SocketSink
from pulse_transports.subscribe import Subscriber
from pulse_transports.wire import Address


def collect_until(
    subscriber: Subscriber, done: Callable[[list[object]], bool], timeout: float = WAIT
) -> list[object]:
    got: list[object] = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; got {got[-5:]}"
        message = subscriber.recv(min(left, 0.5))
        if message is not None:
            got.append(message)
    return got


def statuses(messages: list[object], tid: str | None = None) -> list[str]:
    return [
        m.status
        for m in messages
        if isinstance(m, StatusChanged) and (tid is None or m.training_id == tid)
    ]


class TestDelivery:
    """A run reported through the socket sink reaches subscribers live."""

    def test_run_to_subscriber(self, hub: HubProcess) -> None:
        with Subscriber(path=hub.socket_path, training_id="run-1") as subscriber:
            sink = SocketSink(home=hub.home)
            with TrainingRun("run-1", sinks=[sink], total_epochs=2) as run:
                for epoch in (1, 2):
                    for step in range(200):
                        run.progress(epoch=epoch, step=step, total_steps=200)
                        run.metrics(loss=1.0 / (step + 1))
                run.status("cooling_down", "saving")
            got = collect_until(subscriber, lambda g: "done" in statuses(g))
        assert statuses(got) == ["preparing", "running", "cooling_down", "done"]
        last_progress = [m for m in got if isinstance(m, Progress)][-1]
        assert (last_progress.epoch, last_progress.step) == (2, 199)
        assert [m for m in got if isinstance(m, Metrics)][-1].loss == 1.0 / 200
        seqs = [m.seq for m in got if isinstance(m, Event)]
        assert seqs == sorted(set(seqs))
        assert sink.connects == 1
        assert sink.dropped == 0

    def test_over_tcp_with_a_token(self, start_hub: Callable[..., HubProcess]) -> None:
        hub = start_hub("--tcp", "127.0.0.1:0", "--token", "s3cret")
        tcp = f"{hub.tcp[0]}:{hub.tcp[1]}" if hub.tcp else ""
        with Subscriber(tcp=tcp, token="s3cret") as subscriber:
            with TrainingRun("run-tcp", sinks=[SocketSink(home=hub.home, tcp=tcp, token="s3cret")]):
                pass
            got = collect_until(subscriber, lambda g: "cancelled" in statuses(g))
        assert statuses(got) == ["preparing", "cancelled"]

    def test_open_continues_after_the_seq_the_hub_holds(self, hub: HubProcess) -> None:
        path = log_path(hub.home, "run-1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            encode(meta("run-1"))
            + encode(status("run-1", 2, "running"))
            + encode(progress("run-1", 40))
        )
        sink = SocketSink(home=hub.home)
        with TrainingRun("run-1", sinks=[sink]) as run:
            assert sink.hub_last_seq == 40
            run.status("running", "resumed")
        # meta 41, preparing 42 (illegal after running: recorded, not applied), 43, done 44
        view = wait_applied(hub.unix, "run-1", 44)
        assert view["status"] == "done"
        assert [t["seq"] for t in view["timeline"]] == [2, 43, 44]
        assert view["run"]["pid"] is not None

    def test_an_error_too_large_for_a_frame_still_arrives(
        self, start_hub: Callable[..., HubProcess]
    ) -> None:
        hub = start_hub("--max-frame", "4096")
        with Subscriber(path=hub.socket_path, training_id="run-1") as subscriber:
            with TrainingRun("run-1", sinks=[SocketSink(home=hub.home)]) as run:
                run.status("running")
                run.error("CUDA_OOM", "out of memory", details={"dump": "x" * 20_000})
            got = collect_until(subscriber, lambda g: "error" in statuses(g))
        error = next(m for m in got if isinstance(m, ErrorReported))
        assert error.error_code == "CUDA_OOM"
        assert error.details is not None
        assert "pulse_truncated" in error.details


class TestHubDown:
    """Without a hub the sink never blocks or raises; it keeps what matters and catches up."""

    def test_writes_never_raise_and_the_queue_is_bounded(self, tmp_path: Path) -> None:
        sink = SocketSink(home=tmp_path, queue=16, connect_timeout=0.2)
        assert sink.open("run-1") is None
        try:
            assert not sink.connected
            for seq in range(1, 11):
                sink.write(StatusChanged("run-1", seq, 1.0, "running", f"note {seq}"))
            for seq in range(11, 10_011):
                sink.write(Progress("run-1", seq, 1.0, step=seq))
                sink.write(Heartbeat("run-1", seq, 1.0))
            held = list(sink._queue)
            assert len(held) == 12  # 10 statuses and the latest progress and heartbeat
            assert sink.coalesced == 2 * 10_000 - 2
            assert [e.step for e in held if isinstance(e, Progress)] == [10_010]
            assert sink.dropped == 0
            for seq in range(20_001, 20_011):
                sink.write(StatusChanged("run-1", seq, 1.0, "running", f"note {seq}"))
            held = list(sink._queue)
            # full: the coalesced values go first, then the oldest statuses
            assert len(held) == 16
            assert sink.dropped == 6
            assert all(isinstance(e, StatusChanged) for e in held)
            assert [e.seq for e in held] == [*range(5, 11), *range(20_001, 20_011)]
            sink.write(Progress("run-1", 30_000, 1.0, step=1))
            assert sink.dropped == 7  # a progress never pushes out a status
            assert all(isinstance(e, StatusChanged) for e in sink._queue)
        finally:
            sink.close()

    def test_a_run_without_a_hub_finishes_normally(self, tmp_path: Path) -> None:
        """No hub socket in the home: the sink is inert (no warning) and the run ends."""
        with structlog.testing.capture_logs() as logs:
            sink = SocketSink(home=tmp_path, connect_timeout=0.2, close_timeout=0.5)
            with TrainingRun("run-1", sinks=[sink, FileSink(home=tmp_path)]) as run:
                for step in range(1000):
                    run.progress(step=step)
        assert run.current_status == "done"
        assert b'"status":"done"' in log_path(tmp_path, "run-1").read_bytes()
        events = [entry["event"] for entry in logs]
        assert "pulse hub unreachable; the socket sink keeps events and retries" not in events
        assert "pulse socket sink closed with events the hub never got" not in events
        assert sink.connects == 0
        assert sink.retry.failures == 0

    def test_a_socket_path_nobody_answers_is_warned(self, tmp_path: Path) -> None:
        """A socket path nobody answers on is tried and warned about; the run ends."""
        (tmp_path / "pulse.sock").write_bytes(b"")  # not a listening socket
        with structlog.testing.capture_logs() as logs:
            sink = SocketSink(home=tmp_path, connect_timeout=0.2, close_timeout=0.5)
            with TrainingRun("run-1", sinks=[sink, FileSink(home=tmp_path)]) as run:
                for step in range(1000):
                    run.progress(step=step)
        assert run.current_status == "done"
        events = [entry["event"] for entry in logs]
        assert "pulse hub unreachable; the socket sink keeps events and retries" in events
        assert "pulse socket sink closed with events the hub never got" in events

    def test_hub_started_late_gets_the_queued_statuses(
        self, hub_home: Path, start_hub: Callable[..., HubProcess]
    ) -> None:
        sink = SocketSink(home=hub_home, connect_timeout=0.2)
        run = TrainingRun("run-1", sinks=[sink])
        try:
            run.status("running", "started before the hub")
            run.progress(epoch=1, step=5)
            hub = start_hub()
            run.status("cooling_down", "hub is up now")
            view = wait_applied(hub.unix, "run-1", 5)
            assert [t["status"] for t in view["timeline"]] == [
                "preparing",
                "running",
                "cooling_down",
            ]
            assert view["progress"]["step"] == 5
        finally:
            run.close()

    def test_hub_restart_mid_run(
        self, hub_home: Path, start_hub: Callable[..., HubProcess]
    ) -> None:
        first = start_hub()
        sink = SocketSink(home=hub_home)
        subscriber = Subscriber(path=first.socket_path, training_id="run-1", reconnect=True)
        with subscriber:
            with TrainingRun("run-1", sinks=[sink, FileSink(home=hub_home)]) as run:
                run.status("running")
                run.progress(epoch=1)
                collect_until(subscriber, lambda g: "running" in statuses(g))
                first.stop()
                run.progress(epoch=2)
                run.status("running", "while the hub was down")
                run.error("OUT_OF_MEMORY", "soft", fatal=False)
                start_hub()
                got = collect_until(
                    subscriber,
                    lambda g: any(isinstance(m, ErrorReported) for m in g),
                    timeout=30,
                )
                run.status("cooling_down")
            got += collect_until(subscriber, lambda g: "done" in statuses(g))
        assert sink.connects >= 2
        messages = [m.message for m in got if isinstance(m, StatusChanged)]
        assert "while the hub was down" in messages
        assert statuses(got)[-2:] == ["cooling_down", "done"]
        seqs = [m.seq for m in got if isinstance(m, Event)]
        assert len(seqs) == len(set(seqs))
        assert subscriber.connects >= 2


class TestHubRefuses:
    """A hub that refuses the sink is logged, never raised into training."""

    def test_wrong_token(self, start_hub: Callable[..., HubProcess]) -> None:
        hub = start_hub("--tcp", "127.0.0.1:0", "--token", "s3cret")
        assert hub.tcp is not None
        with structlog.testing.capture_logs() as logs:
            sink = SocketSink(
                home=hub.home, tcp=f"127.0.0.1:{hub.tcp[1]}", token="wrong", close_timeout=0.5
            )
            with TrainingRun("run-1", sinks=[sink]) as run:
                run.progress(step=1)
        assert not sink.connected
        warning = next(e for e in logs if e["event"].startswith("pulse hub unreachable"))
        assert "unauthorized" in warning["error"]

    @pytest.mark.parametrize("tcp", ["nonsense", "host:99999", ":80"])
    def test_bad_tcp_option(self, tmp_path: Path, tcp: str) -> None:
        from pulse_core.errors import ConfigError

        with pytest.raises(ConfigError, match="'tcp'"):
            SocketSink(home=tmp_path, tcp=tcp)


class TestRawProducerParity:
    """The sink speaks exactly the documented protocol: a raw client sees the same lines."""

    def test_sink_lines_equal_log_lines(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        watcher = clients(hub.unix)
        watcher.hello("subscriber")
        watcher.until(lambda o: "live" in o)
        with TrainingRun(
            "run-1", sinks=[SocketSink(home=hub.home), FileSink(home=hub.home)]
        ) as run:
            run.status("running", "go")
        lines = watcher.until(lambda o: o.get("status") == "done")
        logged = [
            line
            for line in log_path(hub.home, "run-1").read_bytes().splitlines()
            if b'"status"' in line
        ]
        import orjson

        assert [o for o in events_of(lines) if o["type"] == "status"] == [
            orjson.loads(x) for x in logged
        ]


class TestBackoffHolds:
    """A producer never reconnects faster than its backoff, however often it reports."""

    def test_attempts_during_an_outage_follow_the_backoff(
        self, hub_home: Path, start_hub: Callable[..., HubProcess]
    ) -> None:
        """Hub SIGKILLed for 2 s under 50 Hz reports: at most 7 attempts (was ~70)."""
        first = start_hub()
        sink = SocketSink(home=hub_home, connect_timeout=0.5)
        with TrainingRun("run-1", sinks=[sink]) as run:
            run.status("running")
            assert sink.connected
            before = sink.attempts
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
            down_until = time.monotonic() + 2.0
            step = 0
            while time.monotonic() < down_until:
                step += 1
                run.progress(epoch=1, step=step)
                run.metrics(loss=1.0 / step)
                time.sleep(0.02)
            during = sink.attempts - before
            second = start_hub()
            deadline = time.monotonic() + WAIT
            while sink.connects < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            run.status("running", "after the outage")
            view = wait_applied(second.unix, "run-1", 3)
        assert view["progress"]["step"] >= 1
        # 50 ms doubling, at most 20 % shorter: 0.04+0.08+0.16+0.32+0.64 s < 2 s < +1.28 s
        assert 1 <= during <= 6
        assert sink.connects == 2


class TestNotAnEventPerCall:
    """Issue 14: a loop calling progress() thousands of times a second makes few events."""

    def test_default_interval_coalesces_on_the_hot_path(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """0.3 s of calls: events for the hub at most one per INTERVAL, and the last value."""
        written: list[Event] = []
        real_write = SocketSink.write

        def counting(self: SocketSink, event: Event) -> None:
            written.append(event)
            real_write(self, event)

        monkeypatch.setattr(SocketSink, "write", counting)
        sink = SocketSink(home=tmp_path)  # no hub listens: the sink is inert
        run = TrainingRun("many-calls", sinks=[sink])
        calls, start = 0, time.monotonic()
        while time.monotonic() - start < 0.3:
            calls += 1
            run.progress(epoch=1, step=calls)
        run.close()
        sent = [e for e in written if isinstance(e, Progress)]
        assert calls > 10_000
        assert len(sent) <= 35  # 0.3 s at one a 10 ms, and a few more (was one per call)
        assert sent[-1].step == calls
