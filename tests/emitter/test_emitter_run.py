"""TrainingRun's public API: lifecycle, ids, flow link, seq and timestamps, closing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pulse_core.codec import decode
from pulse_core.emitter import TrainingRun, new_training_id
from pulse_core.errors import IllegalTransition
from pulse_core.events import (
    ErrorReported,
    Heartbeat,
    Metrics,
    Progress,
    RunMeta,
    StatusChanged,
    validate_training_id,
)
from pulse_core.reducer import replay
from pulse_core.testing import FakeClock, RecordingSink

MakeRun = Callable[..., TrainingRun]


def statuses(sink: RecordingSink) -> list[str]:
    return [e.status for e in sink.of_type(StatusChanged)]


class TestLifecycle:
    """A run reports meta, preparing, running and an honest end, as a context manager or not."""

    def test_with_block_happy_path(self, make_run: MakeRun) -> None:
        """Meta first, preparing, running on the first progress, done when `with` ends."""
        sink = RecordingSink()
        with make_run("happy-1", sinks=[sink], total_epochs=2) as run:
            run.progress(epoch=1, step=1, total_steps=10)
            run.metrics(loss=0.5)
            run.status("cooling_down", "saving")
        assert isinstance(sink.events[0], RunMeta)
        assert sink.events[0].total_epochs == 2
        assert statuses(sink) == ["preparing", "running", "cooling_down", "done"]
        assert run.closed
        assert sink.closed
        state = replay(sink.events)
        assert state.status == "done"
        assert state.anomalies == ()
        assert state.metrics["loss"] == 0.5

    def test_without_with(self, make_run: MakeRun) -> None:
        """A run used without `with` ends when close() is called."""
        sink = RecordingSink()
        run = make_run("plain-1", sinks=[sink])
        run.status("running", "go")
        run.progress(epoch=1)
        assert statuses(sink) == ["preparing", "running"]
        run.close()
        assert statuses(sink) == ["preparing", "running", "done"]

    def test_closed_before_start_is_cancelled(self, make_run: MakeRun) -> None:
        """A run closed while still preparing never claims done."""
        sink = RecordingSink()
        make_run("early-1", sinks=[sink]).close()
        assert statuses(sink) == ["preparing", "cancelled"]

    def test_explicit_done_is_kept(self, make_run: MakeRun) -> None:
        """A run that reported done itself is not ended again by close()."""
        sink = RecordingSink()
        with make_run("done-1", sinks=[sink]) as run:
            run.status("running")
            run.status("done", "all good")
        assert statuses(sink) == ["preparing", "running", "done"]
        assert sink.of_type(StatusChanged)[-1].message == "all good"

    def test_error_ends_run_and_carries_progress(self, make_run: MakeRun) -> None:
        """error() sends an error event with the current epoch/step, then status error."""
        sink = RecordingSink()
        run = make_run("err-1", sinks=[sink])
        run.progress(epoch=3, step=7)
        run.error("CUDA_OOM", "out of memory", is_retryable=True, details={"gpu": 1})
        error = sink.of_type(ErrorReported)[0]
        assert (error.error_code, error.is_retryable, error.epoch, error.step) == (
            "CUDA_OOM",
            True,
            3,
            7,
        )
        assert error.details == {"gpu": 1}
        assert isinstance(sink.events[-1], StatusChanged)
        assert sink.events[-1].status == "error"
        assert sink.events[-2] is error
        run.close()
        assert statuses(sink)[-1] == "error"

    def test_non_fatal_error_keeps_running(self, make_run: MakeRun) -> None:
        """error(fatal=False) records the error and the run goes on."""
        sink = RecordingSink()
        with make_run("err-2", sinks=[sink]) as run:
            run.status("running")
            run.error("SINK_FAILURE", "a sink hiccup", fatal=False)
        assert statuses(sink) == ["preparing", "running", "done"]
        assert len(sink.of_type(ErrorReported)) == 1

    def test_bad_error_code_and_unserialisable_details(self, make_run: MakeRun) -> None:
        """A code that is not UPPER_SNAKE and non-JSON details still make a valid event."""
        sink = RecordingSink()
        run = make_run("err-3", sinks=[sink])
        run.error("oops!", "bad", details={"path": Path("/x"), "n": {1, 2}})
        error = sink.of_type(ErrorReported)[0]
        assert error.error_code == "UNHANDLED_EXCEPTION"
        assert error.details is not None
        assert error.details["given_code"] == "oops!"
        assert error.details["path"] == "/x"
        assert sorted(error.details["n"]) == [1, 2]
        assert decode(sink.lines[-2]) == error

    def test_cancel(self, make_run: MakeRun) -> None:
        """cancel() ends the run cancelled with the message."""
        sink = RecordingSink()
        run = make_run("cancel-1", sinks=[sink])
        run.status("running")
        run.cancel("stop please")
        assert sink.of_type(StatusChanged)[-1].status == "cancelled"
        assert sink.of_type(StatusChanged)[-1].message == "stop please"

    def test_request_cancel_then_leave_with(self, make_run: MakeRun) -> None:
        """A cooperative cancel request ends the run cancelled, never done."""
        sink = RecordingSink()
        with make_run("cancel-2", sinks=[sink]) as run:
            run.status("running")
            threading.Thread(target=run.request_cancel, args=("flow said stop",)).start()
            while not run.cancel_requested:
                pass
        assert statuses(sink) == ["preparing", "running", "cancelled"]
        assert sink.of_type(StatusChanged)[-1].message == "flow said stop"


class TestIdsAndMeta:
    """Ids are generated time-ordered and unique; meta carries the flow link and totals."""

    def test_generated_ids_are_valid_ordered_unique(self) -> None:
        """Ids made in a row (even within one millisecond) sort in creation order."""
        ids = [new_training_id(1_800_000_000.0) for _ in range(500)]
        ids += [new_training_id(1_800_000_000.0005) for _ in range(10)]
        ids += [new_training_id(1_800_000_000.5) for _ in range(10)]
        ids += [new_training_id(1_800_000_000.2) for _ in range(10)]  # clock stepped back
        ids += [new_training_id(1_800_000_001.0) for _ in range(10)]
        assert len(set(ids)) == len(ids)
        assert ids == sorted(ids)
        for tid in ids:
            assert validate_training_id(tid) == tid
        assert ids[0].startswith("20270115-080000-000-")
        assert ids[-1].startswith("20270115-080001-000-")

    def test_run_generates_an_id(self, make_run: MakeRun) -> None:
        """Without an id (argument or environment) the run makes one."""
        run = make_run(sinks=[RecordingSink()])
        assert validate_training_id(run.training_id) == run.training_id
        assert run.training_id[:8].isdigit()

    def test_flow_link_from_arguments(self, make_run: MakeRun) -> None:
        """Flow link, totals, name, labels and world size land in the meta event."""
        sink = RecordingSink()
        make_run(
            "meta-1",
            sinks=[sink],
            name="resnet",
            flow_id="f",
            flow_run_id="fr",
            flow_step_id="train",
            attempt=2,
            total_epochs=10,
            total_steps=100,
            labels={"team": "vision"},
            world_size=4,
        )
        meta = sink.events[0]
        assert isinstance(meta, RunMeta)
        assert (meta.flow_id, meta.flow_run_id, meta.flow_step_id, meta.attempt) == (
            "f",
            "fr",
            "train",
            2,
        )
        assert (meta.total_epochs, meta.total_steps, meta.name) == (10, 100, "resnet")
        assert meta.labels == {"team": "vision"}
        assert meta.world_size == 4
        assert meta.pid is not None
        assert meta.host

    def test_flow_link_from_environment(self, make_run: MakeRun) -> None:
        """PULSE_* variables give the id, flow link, attempt and totals."""
        sink = RecordingSink()
        env = {
            "PULSE_TRAINING_ID": "env-run-7",
            "PULSE_FLOW_ID": "flow",
            "PULSE_FLOW_RUN_ID": "flowrun",
            "PULSE_FLOW_STEP_ID": "step",
            "PULSE_ATTEMPT": "3",
            "PULSE_TOTAL_EPOCHS": "12",
        }
        run = make_run(sinks=[sink], env=env)
        meta = sink.events[0]
        assert isinstance(meta, RunMeta)
        assert run.training_id == "env-run-7"
        assert (meta.flow_id, meta.flow_run_id, meta.flow_step_id) == ("flow", "flowrun", "step")
        assert (meta.attempt, meta.total_epochs) == (3, 12)
        run.progress(epoch=1)
        assert sink.of_type(Progress)[-1].total_epochs == 12


class TestSeqAndTimestamps:
    """The run numbers events 1, 2, 3, ... and stamps them with its wall clock."""

    def test_seq_is_contiguous_for_an_every_call_sink(
        self, make_run: MakeRun, clock: FakeClock
    ) -> None:
        """A sink with interval 0 gets every event and no seq is skipped."""
        sink = RecordingSink(interval=0.0)
        with make_run("seq-1", sinks=[sink]) as run:
            for step in range(5):
                clock.advance(1.0)
                run.progress(epoch=1, step=step)
                run.metrics(loss=1.0 / (step + 1))
        assert sink.seqs == list(range(1, len(sink.events) + 1))
        stamps = [e.timestamp for e in sink.events]
        assert stamps == sorted(stamps)
        assert stamps[-1] == clock.now

    def test_continued_log(self, make_run: MakeRun) -> None:
        """A sink that already holds seq 41 makes the run continue at 42."""

        class Holding(RecordingSink):
            def open(self, training_id: str) -> int | None:
                super().open(training_id)
                return 41

        sink = Holding()
        make_run("cont-1", sinks=[sink])
        assert sink.seqs[:2] == [42, 43]

    def test_numpy_scalars_are_converted(self, make_run: MakeRun) -> None:
        """numpy integers and floats are converted to plain numbers when forwarded."""
        import numpy as np

        sink = RecordingSink()
        run = make_run("np-1", sinks=[sink])
        run.progress(epoch=np.int64(2), step=np.int32(5), total_steps=np.int64(9))
        run.metrics(loss=np.float32(0.25), lr=np.float64(0.001), bad="x")  # type: ignore[arg-type]
        progress = sink.of_type(Progress)[-1]
        metrics = sink.of_type(Metrics)[-1]
        assert (progress.epoch, progress.step, progress.total_steps) == (2, 5, 9)
        assert type(progress.epoch) is int
        assert metrics.loss == 0.25
        assert metrics.extra == {"lr": 0.001}


class TestIllegalTransitions:
    """Illegal lifecycle requests raise in strict mode and are logged and dropped otherwise."""

    def test_lenient_warns_and_sends_nothing(self, make_run: MakeRun, logs: object) -> None:
        """running after done: a structlog warning, no event."""
        sink = RecordingSink()
        run = make_run("ill-1", sinks=[sink])
        run.status("running")
        run.status("done")
        count = len(sink.events)
        run.status("running", "again?")
        run.status("bogus")
        run.error("CUDA_OOM", "late")
        assert len(sink.events) == count
        warnings = [r for r in logs.records if r["level"] == "warning"]  # type: ignore[attr-defined]
        assert [(w["source"], w["target"]) for w in warnings] == [
            ("done", "running"),
            ("done", "bogus"),
            ("done", "error"),
        ]

    def test_strict_raises(self, make_run: MakeRun) -> None:
        """Strict mode raises IllegalTransition naming both states; nothing is sent."""
        sink = RecordingSink()
        run = make_run("ill-2", sinks=[sink], strict=True)
        run.status("running")
        run.status("done")
        count = len(sink.events)
        with pytest.raises(IllegalTransition, match="done -> running"):
            run.status("running")
        assert len(sink.events) == count
        run.close()  # an ended run closes without complaint, even when strict

    def test_strict_from_environment(self, make_run: MakeRun) -> None:
        """PULSE_STRICT=1 turns strict mode on when the argument is not given."""
        run = TrainingRun(
            "ill-3", sinks=[RecordingSink()], env={"PULSE_STRICT": "1"}, background=False
        )
        try:
            with pytest.raises(IllegalTransition):
                run.status("done")  # preparing -> done skips running
        finally:
            run.close()

    def test_closed_run_ignores_everything(self, make_run: MakeRun) -> None:
        """After close() no call sends anything or raises (lenient)."""
        sink = RecordingSink()
        run = make_run("ill-4", sinks=[sink])
        run.close()
        count = len(sink.events)
        run.progress(epoch=1)
        run.metrics(loss=1.0)
        run.status("running")
        run.heartbeat()
        run.tick()
        assert len(sink.events) == count


class TestClose:
    """close() is idempotent and safe from several threads at once."""

    def test_idempotent(self, make_run: MakeRun) -> None:
        """A second and third close() send nothing and close sinks once."""
        sink = RecordingSink()
        run = make_run("close-1", sinks=[sink])
        run.status("running")
        run.close()
        events = list(sink.events)
        run.close()
        run.close()
        assert sink.events == events
        assert statuses(sink).count("done") == 1

    def test_concurrent_close(self, make_run: MakeRun) -> None:
        """Eight threads closing at once end the run exactly once."""
        sink = RecordingSink()
        run = make_run("close-2", sinks=[sink], strict=True)
        run.status("running")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def closer() -> None:
            barrier.wait()
            try:
                run.close()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

        threads = [threading.Thread(target=closer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert statuses(sink) == ["preparing", "running", "done"]

    def test_close_delivers_pending_values(self, make_run: MakeRun, clock: FakeClock) -> None:
        """Values coalesced away by a slow sink's limit reach it before done."""
        slow = RecordingSink(interval=60.0)
        run = make_run("close-3", sinks=[slow])
        run.progress(epoch=1, step=1)
        clock.advance(1.0)
        run.progress(epoch=1, step=99)
        run.metrics(loss=0.125)
        run.close()
        assert slow.of_type(Progress)[-1].step == 99
        assert slow.of_type(Metrics)[-1].loss == 0.125
        assert isinstance(slow.events[-1], StatusChanged)
        assert slow.events[-1].status == "done"


class TestHeartbeat:
    """Quiet sinks get heartbeats every heartbeat interval; a real background thread sends them."""

    def test_tick_sends_heartbeats_to_quiet_sinks(
        self, make_run: MakeRun, clock: FakeClock
    ) -> None:
        """After 5 quiet seconds a tick sends a heartbeat; an ended run sends none."""
        sink = RecordingSink()
        run = make_run("hb-1", sinks=[sink], heartbeat_interval=5.0)
        run.status("running")
        clock.advance(4.9)
        run.tick()
        assert sink.of_type(Heartbeat) == []
        clock.advance(0.2)
        run.tick()
        assert len(sink.of_type(Heartbeat)) == 1
        run.tick()
        assert len(sink.of_type(Heartbeat)) == 1
        run.status("done")
        clock.advance(60)
        run.tick()
        assert len(sink.of_type(Heartbeat)) == 1

    def test_background_thread_heartbeats(self) -> None:
        """With the real clock the background thread sends heartbeats while the loop sleeps."""
        sink = RecordingSink()
        done = threading.Event()
        with TrainingRun("hb-2", sinks=[sink], heartbeat_interval=0.05, env={}) as run:
            run.status("running")
            for _ in range(400):
                if len(sink.of_type(Heartbeat)) >= 3:
                    done.set()
                    break
                threading.Event().wait(0.01)
        assert done.is_set()
        assert sink.seqs == sorted(sink.seqs)
