"""The contract every run source passes, public so plugins run it too.

This module owns :class:`RunSourceContract`, the test cases of the
:class:`~pulse_core.ports.RunSource` port (as eventsourcing ships its
persistence test cases). Subclass it in a pytest module and provide two
fixtures: ``source`` (the source under test) and ``make_sink`` (a callable
returning a new :class:`~pulse_core.ports.Sink` that writes where the source
reads). The file source and the NATS source run it in PULSE's own suite.
Imports pytest only when used; never imported by library code.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pulse_core.emitter import TrainingRun
from pulse_core.errors import RunNotFound
from pulse_core.events import Event, StatusChanged
from pulse_core.ports import RunRecord, RunSource, Sink

MakeSink = Callable[[], Sink]

#: Seconds a contract test waits for a source before it fails (never hangs).
PATIENCE = 20.0


def write_run(make_sink: MakeSink, training_id: str, *, steps: int = 3) -> None:
    """Write a whole run that ends ``done``: running, *steps* progress calls, a loss."""
    with TrainingRun(
        training_id,
        sinks=[make_sink()],
        total_steps=steps,
        heartbeat_interval=60,
        handle_signals=False,
    ) as run:
        run.status("running", "training")
        for step in range(1, steps + 1):
            run.progress(step=step)
            run.metrics(loss=1.0 / step)


def _wait_for(check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"the source did not get there in {PATIENCE} s")
        time.sleep(0.05)


class RunSourceContract:
    """What every :class:`~pulse_core.ports.RunSource` does, whatever it reads."""

    def test_is_a_run_source(self, source: RunSource) -> None:
        """The source satisfies the protocol and has a name."""
        assert isinstance(source, RunSource)
        assert isinstance(source.name, str)
        assert source.name

    def test_runs_lists_every_written_run_newest_first(
        self, source: RunSource, make_sink: MakeSink
    ) -> None:
        """Two finished runs come back as ended records, the later one first."""
        write_run(make_sink, "contract-a")
        time.sleep(0.01)
        write_run(make_sink, "contract-b")
        records = source.runs()
        assert [r.training_id for r in records][:2] == ["contract-b", "contract-a"]
        for record in records:
            assert isinstance(record, RunRecord)
            assert record.terminal
            assert record.liveness == "ended"
            assert record.summary["training_id"] == record.training_id
            assert record.summary["status"] == "done"
            assert record.cursor == record.state.last_seq > 0
        assert [r.training_id for r in source.runs(limit=1)] == ["contract-b"]

    def test_load_gives_the_whole_state(self, source: RunSource, make_sink: MakeSink) -> None:
        """One run loads with its final status, step and loss."""
        write_run(make_sink, "contract-load", steps=4)
        record = source.load("contract-load")
        assert record.training_id == "contract-load"
        assert record.state.status == "done"
        assert record.state.step == 4
        assert record.state.metrics["loss"] == pytest.approx(0.25)
        assert record.summary["duration"] is not None

    def test_unknown_run_is_run_not_found(self, source: RunSource, make_sink: MakeSink) -> None:
        """Loading or reading an id the source never saw raises RunNotFound."""
        write_run(make_sink, "contract-known")
        with pytest.raises(RunNotFound):
            source.load("contract-unknown")
        with pytest.raises(RunNotFound):
            source.events("contract-unknown")

    def test_events_after_a_seq(self, source: RunSource, make_sink: MakeSink) -> None:
        """Events come in seq order; ``after`` drops those at or below it (a dotted id too)."""
        write_run(make_sink, "contract.events")
        events = source.events("contract.events")
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs))
        assert seqs[0] == 1
        assert all(e.training_id == "contract.events" for e in events)
        assert isinstance(events[-1], StatusChanged)
        assert events[-1].status == "done"
        middle = seqs[len(seqs) // 2]
        assert [e.seq for e in source.events("contract.events", after=middle)] == [
            s for s in seqs if s > middle
        ]

    def test_follow_an_ended_run_yields_it_and_stops(
        self, source: RunSource, make_sink: MakeSink
    ) -> None:
        """Following a finished run gives its events and ends at the terminal one."""
        write_run(make_sink, "contract-ended")
        held = [e.seq for e in source.events("contract-ended")]
        followed = [e.seq for e in source.follow("contract-ended", idle=PATIENCE)]
        assert followed == held

    def test_follow_a_live_run_until_it_ends(self, source: RunSource, make_sink: MakeSink) -> None:
        """Events written after following began arrive, and the iteration ends with the run."""
        run = TrainingRun(
            "contract-live", sinks=[make_sink()], heartbeat_interval=60, handle_signals=False
        )
        run.status("running", "first")
        _wait_for(lambda: _holds(source, "contract-live"))
        seen: list[Event] = []
        reader = threading.Thread(
            target=lambda: seen.extend(source.follow("contract-live", after=1, idle=PATIENCE))
        )
        reader.start()
        _wait_for(lambda: any(e.seq > 1 for e in seen))
        run.status("running", "second")
        run.close()
        reader.join(PATIENCE)
        assert not reader.is_alive(), "follow did not end after the terminal event"
        assert [e.seq for e in seen] == sorted({e.seq for e in seen})
        assert seen[0].seq == 2
        assert "second" in [e.message for e in seen if isinstance(e, StatusChanged)]
        assert isinstance(seen[-1], StatusChanged)
        assert seen[-1].status == "done"

    def test_follow_stops_when_idle(self, source: RunSource, make_sink: MakeSink) -> None:
        """A quiet live run ends the iteration after ``idle`` seconds."""
        run = TrainingRun(
            "contract-quiet", sinks=[make_sink()], heartbeat_interval=60, handle_signals=False
        )
        try:
            run.status("running", "quiet")
            _wait_for(lambda: _holds(source, "contract-quiet"))
            started = time.monotonic()
            followed = list(source.follow("contract-quiet", idle=0.5))
            assert time.monotonic() - started < PATIENCE
            assert followed
            assert followed[-1].seq >= 2
        finally:
            run.close()


def _holds(source: RunSource, training_id: str) -> bool:
    try:
        return len(source.events(training_id)) >= 2
    except RunNotFound:
        return False
