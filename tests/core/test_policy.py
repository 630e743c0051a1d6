"""The bounded, coalescing buffer shared by failing sinks and the socket queue."""

from __future__ import annotations

from collections import deque

from pulse_core.events import Event, Metrics, Progress, StatusChanged
from pulse_core.policy import hold_event, trim_events

TID = "policy-run"


def progress(seq: int) -> Progress:
    return Progress(TID, seq, float(seq), epoch=1, step=seq)


def metrics(seq: int) -> Metrics:
    return Metrics(TID, seq, float(seq), loss=1.0 / seq)


def status(seq: int, message: str = "") -> StatusChanged:
    return StatusChanged(TID, seq, float(seq), status="running", message=message)


class TestHoldEvent:
    """Samples coalesce behind the last status; the bound drops samples before statuses."""

    def test_latest_sample_wins_and_order_is_kept(self) -> None:
        buffer: deque[Event] = deque()
        for event in (status(1), progress(2), metrics(3), progress(4), metrics(5)):
            hold_event(buffer, event, 100)
        assert [e.seq for e in buffer] == [1, 4, 5]

    def test_no_coalescing_across_a_status(self) -> None:
        buffer: deque[Event] = deque()
        for event in (progress(1), status(2), progress(3)):
            held = hold_event(buffer, event, 100)
        assert not held.coalesced
        assert [e.seq for e in buffer] == [1, 2, 3]

    def test_full_buffer_drops_the_oldest_sample(self) -> None:
        buffer: deque[Event] = deque([status(1), progress(2), status(3)])
        held = hold_event(buffer, status(4), 3)
        assert [e.seq for e in held.dropped] == [2]
        assert [e.seq for e in buffer] == [1, 3, 4]

    def test_full_of_statuses_refuses_a_sample(self) -> None:
        buffer: deque[Event] = deque([status(1), status(2)])
        held = hold_event(buffer, progress(3), 2)
        assert [e.seq for e in held.dropped] == [3]
        assert [e.seq for e in buffer] == [1, 2]

    def test_full_of_statuses_takes_a_status_over_the_oldest(self) -> None:
        buffer: deque[Event] = deque([status(1), status(2)])
        held = hold_event(buffer, status(3), 2)
        assert held.head_changed
        assert [e.seq for e in buffer] == [2, 3]

    def test_always_fits(self) -> None:
        buffer: deque[Event] = deque([status(1), status(2)])
        held = hold_event(buffer, status(3), 2, always_fits=True)
        assert held.dropped == ()
        assert len(buffer) == 3

    def test_trim_prefers_samples(self) -> None:
        buffer: deque[Event] = deque([status(1), progress(2), metrics(3), status(4)])
        dropped = trim_events(buffer, 3)
        assert [e.seq for e in dropped] == [2, 3, 1]
        assert [e.seq for e in buffer] == [4]
