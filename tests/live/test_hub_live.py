"""Live by default, against a real ``pulse serve`` process (issue 15).

No test sets ``PULSE_TRANSPORTS`` unless it says so: runs reach the hub of
their home through the default socket transport, and through the hub
following the home's logs when they do not report over the socket.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from livekit import LiveHub, Proc, Subscriber, event_of, lost, snapshot_of, wait_file, zero_env

from pulse_core import TrainingRun
from pulse_core.codec import encode
from pulse_core.events import Progress, RunMeta, StatusChanged
from pulse_transports.flows import FlowTrainer


def pulse(folder: Path, *args: str) -> Proc:
    return Proc([sys.executable, "-m", "pulse_transports.cli", *args], folder, zero_env(), "cli")


class TestZeroConfiguration:
    """Runs in the home are live at a subscriber with no configuration at all."""

    def test_demo_and_readme_loop_reach_a_subscriber(
        self,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        produce: Callable[..., Proc],
        subscribe: Callable[..., Subscriber],
        procs: list[Proc],
    ) -> None:
        """`pulse demo` and the README loop, no environment: both stream to a subscriber."""
        hub = start_hub()
        sub = subscribe(hub.address)
        demo = pulse(folder, "demo", "--training-id", "demo-1")
        procs.append(demo)
        loop = produce("readme", "loop-1", "0.002")
        sub.until(event_of("demo-1", "progress"))
        sub.until(event_of("loop-1", "progress"), past=True)
        assert demo.wait() == 0, demo.log()
        assert loop.wait() == 0, loop.log()
        sub.until(
            lambda o: o.get("training_id") == "demo-1" and o.get("status") == "done", past=True
        )
        sub.until(
            lambda o: o.get("training_id") == "loop-1" and o.get("status") == "done", past=True
        )
        steps = [
            o["step"] for _, o in sub.seen if event_of("loop-1", "progress")(o) and "step" in o
        ]
        assert len(steps) >= 5  # a stream of values, not one final state

    def test_a_run_without_the_socket_is_followed_from_its_log(
        self,
        start_hub: Callable[..., LiveHub],
        produce: Callable[..., Proc],
        subscribe: Callable[..., Subscriber],
    ) -> None:
        """A producer with the socket transport off is live through the hub following its log."""
        hub = start_hub()
        sub = subscribe(hub.address)
        run = produce("readme", "file-1", "0.005", PULSE_TRANSPORTS="file")
        sub.until(event_of("file-1", "progress"))
        assert run.wait() == 0, run.log()
        sub.until(
            lambda o: o.get("training_id") == "file-1" and o.get("status") == "done", past=True
        )

    def test_a_log_written_by_hand_is_live_within_500_ms(
        self,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        subscribe: Callable[..., Subscriber],
    ) -> None:
        """Another language appending lines to a log: each reaches a subscriber within 500 ms."""
        hub = start_hub()
        sub = subscribe(hub.address)
        path = folder / ".pulse" / "logs" / "training" / "other-1.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab", buffering=0) as out:
            out.write(encode(RunMeta("other-1", 1, time.time(), name="from rust")))
            out.write(encode(StatusChanged("other-1", 2, time.time(), "running", "go")))
            sub.until(event_of("other-1", "status"))
            delays = []
            for seq in range(3, 13):
                sent = time.time()
                out.write(encode(Progress("other-1", seq, sent, step=seq)))
                got = sub.until(lambda o, s=seq: o.get("seq") == s)  # type: ignore[misc]
                delays.append(got - sent)
                time.sleep(0.15)
        assert max(delays) < 0.5, delays


class TestRestart:
    """A hub started after runs ended or died knows them at once."""

    def test_ended_and_killed_runs_are_in_the_first_snapshot(
        self,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        produce: Callable[..., Proc],
        subscribe: Callable[..., Subscriber],
    ) -> None:
        """Runs that ended or were SIGKILLed while no hub ran: snapshots say done and lost."""
        done = produce("readme", "ended-1", "0")
        assert done.wait() == 0, done.log()
        killed = produce("forever", "killed-1", str(folder / "started"))
        wait_file(folder / "started")
        log = folder / ".pulse" / "logs" / "training" / "killed-1.jsonl"
        deadline = time.monotonic() + 10
        while b'"progress"' not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.02)
        killed.kill(signal.SIGKILL)
        hub = start_hub()
        sub = subscribe(hub.address)
        sub.until(lambda o: "live" in o)
        views = {}
        for _, obj in sub.seen:
            for tid in ("ended-1", "killed-1"):
                view = snapshot_of(obj, tid)
                if view is not None:
                    views[tid] = view
        assert views["ended-1"]["status"] == "done"
        assert views["ended-1"]["liveness"] == "ended"
        assert views["killed-1"]["status"] == "running"
        assert views["killed-1"]["liveness"] == "lost"


class TestLostPush:
    """A writer's death is pushed to subscribers as lost within 2 s."""

    def _kill_and_time(
        self,
        folder: Path,
        hub: LiveHub,
        produce: Callable[..., Proc],
        subscribe: Callable[..., Subscriber],
        tid: str,
        **env: str,
    ) -> float:
        run = produce("forever", tid, str(folder / f"{tid}.started"), **env)
        wait_file(folder / f"{tid}.started")
        sub = subscribe(hub.address, training_id=tid)
        sub.until(event_of(tid, "progress"))
        killed_at = time.time()
        run.kill(signal.SIGKILL)
        return sub.until(lost(tid), timeout=10) - killed_at

    def test_sigkill_of_a_socket_producer(
        self,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        produce: Callable[..., Proc],
        subscribe: Callable[..., Subscriber],
    ) -> None:
        """Default transports (socket on): lost at the subscriber within 2 s."""
        hub = start_hub()
        assert self._kill_and_time(folder, hub, produce, subscribe, "sock-1") <= 2.0

    def test_sigkill_of_a_log_only_producer(
        self,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        produce: Callable[..., Proc],
        subscribe: Callable[..., Subscriber],
    ) -> None:
        """Socket off (followed from the log): lost at the subscriber within 2 s."""
        hub = start_hub()
        took = self._kill_and_time(
            folder, hub, produce, subscribe, "log-1", PULSE_TRANSPORTS="file,v1"
        )
        assert took <= 2.0


class TestStaleCursor:
    """A resume cursor ahead of what the hub holds gets a snapshot, then the later events."""

    def test_cursor_ahead_gets_a_snapshot_and_later_status(
        self,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        subscribe: Callable[..., Subscriber],
    ) -> None:
        """Resume at seq 50 of a run the hub holds up to seq 3: snapshot, then seq 4 arrives."""
        path = folder / ".pulse" / "logs" / "training" / "cur-1.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(
            encode(RunMeta("cur-1", 1, time.time(), name="cursor"))
            + encode(StatusChanged("cur-1", 2, time.time(), "running", "go"))
            + encode(Progress("cur-1", 3, time.time(), step=3))
        )
        hub = start_hub()
        sub = subscribe(hub.address, training_id="cur-1", resume={"cur-1": 50})
        sub.until(lambda o: snapshot_of(o, "cur-1") is not None, timeout=5)
        with path.open("ab") as out:
            out.write(encode(StatusChanged("cur-1", 4, time.time(), "done", "finished")))
        sub.until(lambda o: o.get("seq") == 4 and o.get("status") == "done", timeout=5)


class TestFlowTrainer:
    """A FlowTrainer step rides the same live path: the hub and ``updates()`` within 500 ms."""

    def test_a_thread_step_is_live_at_the_hub_and_in_updates(
        self,
        folder: Path,
        start_hub: Callable[..., LiveHub],
        subscribe: Callable[..., Subscriber],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Each value of a step shows in ``updates()`` and at a subscriber within 500 ms."""
        for name in [k for k in os.environ if k.startswith("PULSE_")]:
            monkeypatch.delenv(name)
        hub = start_hub()
        sub = subscribe(hub.address)
        sent: dict[int, float] = {}

        def target(run: TrainingRun) -> None:
            run.status("running", "training")
            for step in range(1, 21):
                sent[step] = time.time()
                run.progress(epoch=1, step=step, total_steps=20)
                time.sleep(0.1)

        done = lambda o: o.get("training_id") == "flow-1" and o.get("status") == "done"  # noqa: E731
        reader = threading.Thread(target=sub.until, args=(done, 30))  # lines timed as they come
        reader.start()
        trainer = FlowTrainer(home=folder / ".pulse")
        step = trainer.start_callable(target, flow_id="f", flow_run_id="fr", training_id="flow-1")
        lags = []
        for view in step.updates(interval=0.05, timeout=30):
            at = time.time()
            shown = (view.get("progress") or {}).get("step")
            if isinstance(shown, int) and shown in sent and shown < 20:
                lags.append(at - sent[shown])
        assert step.wait(10) is not None
        assert len(lags) >= 5
        assert max(lags) < 0.5, lags
        reader.join(30)
        arrivals = [
            (at, obj["step"])
            for at, obj in sub.seen
            if event_of("flow-1", "progress")(obj) and isinstance(obj.get("step"), int)
        ]
        assert len(arrivals) >= 10
        assert max(at - sent[s] for at, s in arrivals) < 0.5, [
            (round(at - sent[s], 3), s) for at, s in arrivals
        ]
