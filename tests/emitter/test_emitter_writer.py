"""The run's writer thread: sink I/O off the training thread, bounded waits, bounded memory."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.events import ErrorReported, Event, Progress, StatusChanged
from pulse_core.policy import FLOOD_BURST, OUTBOX_BYTES, OUTBOX_EVENTS
from pulse_core.reducer import replay
from pulse_core.testing import FakeClock, RecordingSink

MakeRun = Callable[..., TrainingRun]


class BlockingSink(RecordingSink):
    """A sink whose writes block until released (a disk that does not return)."""

    def __init__(self, *, interval: float = 0.0, boundaries: bool = False) -> None:
        super().__init__(interval=interval, boundaries=boundaries)
        self.release = threading.Event()
        self.threads: set[str] = set()

    def write(self, event: Event) -> None:
        """Record the writing thread, then block until released."""
        self.threads.add(threading.current_thread().name)
        self.release.wait()
        super().write(event)


@pytest.fixture
def stuck() -> Iterator[BlockingSink]:
    """A blocking sink, released at the end so no writer thread stays stuck."""
    sink = BlockingSink()
    yield sink
    sink.release.set()


class TestWriterThread:
    """With a writer thread, no call on the training thread waits on a sink."""

    def test_calls_return_while_the_sink_is_stuck(self, stuck: BlockingSink) -> None:
        """progress/metrics/status/error/heartbeat return at once while every write blocks."""
        run = TrainingRun("writer-1", sinks=[stuck], env={}, strict=False, close_timeout=0.2)
        start = time.monotonic()
        for i in range(1_000):
            run.progress(epoch=1, step=i)
            run.metrics(loss=float(i))
        run.status("running", "a note")
        run.error("NAN_LOSS", "nan", fatal=False)
        run.heartbeat()
        assert time.monotonic() - start < 2.0  # each write would block forever
        began = time.monotonic()
        run.close()
        assert time.monotonic() - began < 2.0  # gave up after close_timeout
        assert stuck.events == []
        assert threading.current_thread().name not in stuck.threads

    def test_close_warns_once_when_the_writer_is_stuck(
        self, stuck: BlockingSink, logs: object
    ) -> None:
        """close() past close_timeout logs one warning and returns."""
        run = TrainingRun("writer-2", sinks=[stuck], env={}, strict=False, close_timeout=0.1)
        run.status("running")
        run.close()
        warnings = [e for e in logs.events("warning") if "did not finish" in e]  # type: ignore[attr-defined]
        assert len(warnings) == 1

    def test_everything_written_once_released(self) -> None:
        """After a slow spell the sink gets every status in seq order and the end."""
        sink = BlockingSink()
        run = TrainingRun("writer-3", sinks=[sink], env={}, strict=False, close_timeout=10)
        run.status("running")
        for i in range(100):
            run.progress(epoch=1, step=i)
            run.status("running", f"note {i}")
        sink.release.set()
        run.close()
        assert sink.seqs == sorted(sink.seqs)
        assert replay(sink.events).status == "done"
        assert sink.closed
        assert sink.flushes >= 1

    def test_flush_waits_for_the_writer(self) -> None:
        """flush() times out while the sink is stuck, then returns with everything written."""
        sink = BlockingSink()
        run = TrainingRun("writer-5", sinks=[sink], env={}, strict=False, close_timeout=5)
        run.status("running", "go")
        assert run.flush(0.1) is False
        sink.release.set()
        assert run.flush() is True
        assert [e.status for e in sink.of_type(StatusChanged)] == ["preparing", "running"]
        run.close()

    def test_flush_sends_held_values_and_flushes_every_sink(self, tmp_path: object) -> None:
        """flush() sends the coalesced latest value now and each sink writes what it holds.

        A process that calls ``flush()`` and then ``os._exit`` leaves the
        v1 file and the log showing its last progress.
        """
        from pathlib import Path

        import orjson

        from pulse_transports.file import FileSink
        from pulse_transports.v1 import V1SnapshotSink

        home = Path(str(tmp_path))
        v1 = V1SnapshotSink(home=home, interval=3600)  # the file would wait an hour
        recorder = RecordingSink(interval=3600)  # so would this sink's next value
        run = TrainingRun(
            "writer-6", sinks=[FileSink(home=home), v1, recorder], env={}, strict=False
        )
        run.status("running")
        for step in range(1, 51):
            run.progress(epoch=1, total_epochs=1, step=step, total_steps=50)
            run.metrics(loss=1.0 / step)
        assert run.flush(10) is True
        assert recorder.of_type(Progress)[-1].step == 50
        assert recorder.flushes >= 1
        snapshot = orjson.loads((home / "training_status.json").read_bytes())
        assert snapshot["status"] == "running"
        assert snapshot["loss"] == 1.0 / 50
        lines = (home / "logs" / "training" / "writer-6.jsonl").read_bytes().splitlines()
        steps = [orjson.loads(line).get("step") for line in lines]
        assert [step for step in steps if step is not None][-1] == 50
        run.close()

    def test_outbox_bounded_while_stuck(self, stuck: BlockingSink) -> None:
        """A stuck sink holds at most OUTBOX_EVENTS events and OUTBOX_BYTES bytes."""
        run = TrainingRun("writer-4", sinks=[stuck], env={}, strict=False, close_timeout=0.1)
        big = "x" * 1_000_000
        for i in range(OUTBOX_EVENTS + 500):
            run.status("running", f"{i}")  # distinct notes at interval 0: all forwarded
        for _ in range(40):
            run.status("running", big)
        route = run._routes[0]
        assert len(route.outbox) <= OUTBOX_EVENTS + 1
        assert route.outbox_bytes <= OUTBOX_BYTES + 2_000_000
        assert run.sink_stats()[0]["dropped_total"] > 0
        run.close()


class TestBacklog:
    """A writer far behind makes progress/metrics coalesce on the hot path, not queue."""

    def test_values_coalesce_once_the_writer_is_behind(self, stuck: BlockingSink) -> None:
        """1,000 steps on a stuck interval-0 sink queue ~256 events, then the latest arrive."""
        run = TrainingRun("backlog-1", sinks=[stuck], env={}, strict=False, heartbeat_interval=3600)
        for step in range(1_000):
            run.progress(epoch=1, step=step)
            run.metrics(loss=float(step))
            time.sleep(0.0001)
        queued = run.sink_stats()[0]["queued"]
        assert queued <= 300, queued  # without the rule: one event per value (~2,000)
        stuck.release.set()
        run.close()
        assert stuck.of_type(Progress)[-1].step == 999  # the latest value arrives
        seqs = [e.seq for e in stuck.events]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # contiguous: nothing lost
        assert replay(stuck.events).anomalies == ()


class BusySink(RecordingSink):
    """A sink whose every write is 0.1 ms of Python work, noting how far a counter got."""

    def __init__(self, counter: list[int]) -> None:
        super().__init__(interval=0.0)
        self.counter = counter
        self.seen: list[int] = []

    def write(self, event: Event) -> None:
        """Burn 0.1 ms holding the GIL, then record the training thread's counter."""
        end = time.perf_counter() + 1e-4
        while time.perf_counter() < end:
            pass
        self.seen.append(self.counter[0])
        super().write(event)


class TestSharingTheGil:
    """The writer thread hands the GIL back to a busy training thread between slices."""

    def test_training_thread_runs_between_writer_slices(self) -> None:
        """Between a few 0.1 ms writes the pure-Python loop moves on.

        A thread waiting for the GIL gets it only when the holder blocks or
        after the 5 ms switch interval, so a writer that never blocked would
        make ~50 writes in a row while the loop stood still.
        """
        # Writer threads of earlier tests' runs (a stuck sink released at
        # teardown still writes its backlog) would compete for the GIL too.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(
            t.name.startswith("pulse-run-") for t in threading.enumerate()
        ):
            time.sleep(0.05)
        counter = [0]
        sink = BusySink(counter)
        run = TrainingRun("gil-1", sinks=[sink], env={}, heartbeat_interval=3600)
        for step in range(200):
            run.progress(epoch=1, step=step)
        deadline = time.monotonic() + 60
        while len(sink.seen) < 150 and time.monotonic() < deadline:
            counter[0] += 1  # the training loop: pure Python, never blocking
        run.close()
        seen = sink.seen[:150]
        assert len(seen) == 150
        runs = [1]  # lengths of the stretches of writes the loop did not move in
        for before, after in itertools.pairwise(seen):
            if after == before:
                runs[-1] += 1
            else:
                runs.append(1)
        # On a loaded machine the loop may miss many pauses (the OS did not run
        # it within the writer's 0.1 ms pause); a writer that never hands the
        # GIL over puts 141-150 of the 150 writes in such stretches.
        in_long_runs = sum(n for n in runs if n > 10)
        assert in_long_runs <= 110, f"{in_long_runs} of 150 writes in stretches of > 10: {runs}"


class TestInline:
    """Without a writer thread (background=False) every call writes synchronously."""

    def test_status_is_written_before_it_returns(self, make_run: MakeRun) -> None:
        """status() with background=False has written the line when it returns."""
        sink = RecordingSink()
        run = make_run("inline-1", sinks=[sink])
        run.status("running", "go")
        assert [e.status for e in sink.of_type(StatusChanged)] == ["preparing", "running"]


class TestFlood:
    """Notes and non-fatal errors: a burst, then one per slowest interval, the rest counted."""

    def test_notes_and_errors_coalesced(self, make_run: MakeRun, clock: FakeClock) -> None:
        """1000 steps in 1 s with a note and an error each: the burst and a few, all counted."""
        sink = RecordingSink(interval=1.0)
        run = make_run("flood-1", sinks=[sink])
        run.status("running")
        for i in range(1_000):
            run.progress(epoch=1, step=i)
            run.status("running", f"note {i}")
            run.error("NAN_LOSS", f"nan {i}", fatal=False)
            clock.advance(0.001)
            if i % 50 == 0:
                run.tick()
        run.close()
        notes = [e for e in sink.of_type(StatusChanged) if e.status == "running"]
        errors = sink.of_type(ErrorReported)
        assert len(notes) + len(errors) <= FLOOD_BURST + 4
        assert sum(int((e.details or {}).get("count", 1)) for e in errors) == 1_000
        assert errors[-1].message == "nan 999"
        state = replay(sink.events)
        assert state.status == "done"
        assert state.anomalies == ()

    def test_transitions_never_held(self, make_run: MakeRun, clock: FakeClock) -> None:
        """A transition right after a note goes out at once, with the held error first."""
        sink = RecordingSink(interval=1.0)
        run = make_run("flood-2", sinks=[sink])
        run.status("running", "a")
        run.error("NAN_LOSS", "first", fatal=False)
        run.error("NAN_LOSS", "second", fatal=False)
        run.status("cooling_down", "saving")
        kinds = [
            (type(e).__name__, getattr(e, "status", getattr(e, "message", "")))
            for e in sink.events[3:]
            if not isinstance(e, Progress)
        ]
        assert kinds == [
            ("ErrorReported", "first"),
            ("ErrorReported", "second"),
            ("StatusChanged", "cooling_down"),
        ]

    def test_trailing_note_delivered_by_tick(self, make_run: MakeRun, clock: FakeClock) -> None:
        """The latest held note goes out once the interval has passed, from tick()."""
        sink = RecordingSink(interval=1.0)
        run = make_run("flood-3", sinks=[sink])
        run.status("running", "one")  # the transition: never held
        for n in range(FLOOD_BURST):
            run.status("running", f"burst {n}")
        run.status("running", "held")
        run.status("running", "latest")
        messages = [e.message for e in sink.of_type(StatusChanged) if e.status == "running"]
        assert messages[-1] == f"burst {FLOOD_BURST - 1}"
        clock.advance(1.5)
        run.tick()
        messages = [e.message for e in sink.of_type(StatusChanged) if e.status == "running"]
        assert len(messages) == 1 + FLOOD_BURST + 1
        assert messages[-1] == "latest"


class TestEpochBoundaries:
    """A faster sink building the values first never costs the log an epoch's end."""

    def test_boundary_kept_when_a_faster_sink_built_it(
        self, make_run: MakeRun, clock: FakeClock
    ) -> None:
        """Fast v1-like sink + slow boundary log: every epoch's last step reaches the log."""
        fast = RecordingSink(interval=0.0)
        log = RecordingSink(interval=1.0, boundaries=True)
        run = make_run("epochs-1", sinks=[fast, log])
        for epoch in range(1, 21):
            for step in range(1, 4):
                run.progress(epoch=epoch, step=step)
                clock.advance(0.0001)
        run.close()
        ends = {e.epoch for e in log.of_type(Progress) if e.step == 3}
        assert ends == set(range(1, 21))


FIRST_CALLS = """
import time
from pulse_core import codec
from pulse_core.emitter import TrainingRun
from pulse_core.testing import RecordingSink

run = TrainingRun("warm-run", sinks=[RecordingSink(interval=0.0)])
built = []
real = codec._the_converter().get_unstructure_hook
codec._the_converter().get_unstructure_hook = lambda cls: built.append(cls) or real(cls)
run.progress(epoch=1, step=1)
run.metrics(loss=0.5, accuracy=0.9)
run.status("running", "a note")
run.error("NAN_LOSS", "nan at step 1", fatal=False)
run.progress(epoch=2, step=1)
time.sleep(0.2)
run.close()
print(sorted(cls.__name__ for cls in built))
"""


def test_no_encoder_is_built_in_the_loop() -> None:
    """Every event type's encoder is built when the run is made, not on first use.

    cattrs compiles an encoder the first time a type is encoded (1-3 ms with
    the GIL held): the first ``error()`` in a training loop took 2.9 ms.
    A fresh interpreter: other tests have built them all in this one.
    """
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", FIRST_CALLS], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.splitlines()[-1] == "[]"
