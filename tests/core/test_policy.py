"""The shared mechanisms: the bounded coalescing buffer, backoff, throttle, sampled logs."""

from __future__ import annotations

from collections import deque

import pytest

from pulse_core.events import Event, Metrics, Progress, StatusChanged
from pulse_core.policy import (
    CONNECT_BACKOFF,
    Backoff,
    BoundedBuffer,
    Retry,
    Throttle,
    hold_event,
    retry_delay,
    sample_kind,
    sampled,
    trim_events,
)

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


class TestBackoff:
    """One formula: first delay doubled per failure, capped, optionally jittered shorter."""

    def test_doubles_up_to_the_cap(self) -> None:
        """Delays double from *first* and stop at *cap*; no failure means no wait."""
        backoff = Backoff(0.05, 2.0)
        assert [backoff.delay(n) for n in range(0, 8)] == [0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
        assert backoff.delay(10_000) == 2.0

    def test_jitter_only_shortens_within_its_fraction(self) -> None:
        """With jitter 0.2 a delay lies in [0.8, 1] of the base, given u in [0, 1]."""
        assert CONNECT_BACKOFF.delay(3, 0.0) == pytest.approx(0.2)
        assert CONNECT_BACKOFF.delay(3, 1.0) == pytest.approx(0.16)

    def test_the_route_backoff_keeps_its_numbers(self) -> None:
        """``retry_delay`` (the emitter's failing sinks) is 50 ms doubling to 5 s."""
        assert retry_delay(1) == 0.05
        assert retry_delay(100) == 5.0


class TestRetry:
    """A failure streak sets an absolute earliest time for the next attempt."""

    def test_waking_early_does_not_allow_an_early_attempt(self) -> None:
        """After a failure at t=10 with a 0.4 s delay, t=10.1 must still wait 0.3 s."""
        retry = Retry(Backoff(0.4, 2.0))
        assert retry.failed(10.0) == 0.4
        assert retry.wait(10.1) == pytest.approx(0.3)
        assert retry.wait(10.4) == 0.0

    def test_success_ends_the_streak(self) -> None:
        """``succeeded`` returns the streak's failures and allows an attempt at once."""
        retry = Retry(Backoff(0.05, 2.0))
        retry.failed(0.0)
        retry.failed(0.0)
        assert retry.succeeded() == 2
        assert retry.wait(0.0) == 0.0
        assert retry.failed(1.0) == 0.05

    def test_attempts_in_an_outage_stay_few_whatever_wakes_the_waiter(self) -> None:
        """Woken every 20 ms for 10 s, a waiter that honours ``wait`` tries about 10 times."""
        retry = Retry(CONNECT_BACKOFF)
        attempts, now = 0, 0.0
        while now < 10.0:
            if retry.wait(now) == 0.0:
                attempts += 1
                retry.failed(now, 1.0)  # the shortest jitter: the worst case
            now += 0.02
        assert attempts <= 12


class TestThrottle:
    """Leading and trailing edge: the first value goes now, the latest within one interval."""

    def test_leading_then_trailing(self) -> None:
        """A value inside the interval is held and becomes due once the interval has passed."""
        throttle = Throttle(0.1)
        assert throttle.offer(0.0)
        assert not throttle.offer(0.05)
        assert throttle.next_due() == pytest.approx(0.1)
        assert not throttle.due(0.09)
        assert throttle.due(0.1)
        assert throttle.next_due() is None
        assert not throttle.due(0.5)


class TestSampled:
    """ "Log the first and every Nth" is one rule."""

    def test_first_and_every_nth(self) -> None:
        """With first=1 and every=100: occurrences 1, 100, 200 are logged."""
        logged = [n for n in range(1, 301) if sampled(n, 100)]
        assert logged == [1, 100, 200, 300]

    def test_first_several(self) -> None:
        """With first=10 the first ten are logged, then every Nth."""
        logged = [n for n in range(1, 2001) if sampled(n, 1000, first=10)]
        assert logged == [*range(1, 11), 1000, 2000]


class TestBoundedBuffer:
    """Count and byte bounds, a pluggable coalescing key, protected items dropped last."""

    def test_same_rules_as_hold_event(self) -> None:
        """Keyed by event kind, it keeps what ``hold_event`` keeps and drops what it drops."""
        box: BoundedBuffer[Event] = BoundedBuffer(3, key=sample_kind)
        dropped = []
        for event in (status(1), progress(2), metrics(3), progress(4), status(5), status(6)):
            dropped += box.put(event)[1]
        assert [e.seq for e in box] == [1, 5, 6]
        assert [e.seq for e in dropped] == [3, 4]

    def test_byte_bound_and_protected_items(self) -> None:
        """Past the byte budget the oldest unprotected kept item goes; protected ones stay."""
        box: BoundedBuffer[tuple[str | None, int]] = BoundedBuffer(
            100,
            max_bytes=10,
            key=lambda item: item[0],
            size=lambda item: item[1],
            protect=lambda item: item[1] == 4,
        )
        box.put((None, 4))
        box.put((None, 3))
        box.put(("p", 2))
        assert box.put(("p", 2)) == (1, ())  # coalesced: still 9 bytes
        coalesced, dropped = box.put((None, 3))  # 12 bytes: the sample goes first
        assert (coalesced, dropped) == (0, (("p", 2),))
        assert box.nbytes == 10
        assert box.put((None, 3))[1] == ((None, 3),)  # then the oldest unprotected
        assert list(box) == [(None, 4), (None, 3), (None, 3)]

    def test_requeue_puts_a_batch_back_in_front(self) -> None:
        """An unsent batch goes back before what was queued meanwhile, trimmed to the bound."""
        box: BoundedBuffer[Event] = BoundedBuffer(3, key=sample_kind)
        for event in (status(1), status(2)):
            box.put(event)
        batch = box.take(10)
        box.put(status(3))
        box.put(progress(4))
        assert [e.seq for e in box.requeue(batch)] == [4]
        assert [e.seq for e in box] == [1, 2, 3]
