"""The shared sender machinery: what a subclass's send() leaves in the batch goes back in order."""

from __future__ import annotations

import threading
import time

from pulse_core._log import get_logger
from pulse_core.events import Event, StatusChanged
from pulse_core.policy import BoundedBuffer, sample_kind
from pulse_transports._sender import BackgroundSender

TID = "sender.test"


def _status(seq: int) -> StatusChanged:
    return StatusChanged(training_id=TID, seq=seq, timestamp=float(seq), status="running")


class _OneByOne(BackgroundSender[Event]):
    """Sends item by item; the *fail_after*-th send of a streak fails once, midway."""

    def __init__(self, fail_at: set[int], keep_connection: bool) -> None:
        super().__init__(
            log=get_logger("pulse.test"),
            buffer=BoundedBuffer(1000, key=sample_kind),
            close_timeout=5.0,
            label="test sender",
        )
        self.fail_at = fail_at  # seqs whose send fails (once each)
        self.keep_connection = keep_connection
        self.received: list[int] = []
        self.dials = 0
        self._up = False
        self.lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return self._up

    def prepare(self, event: Event) -> Event:
        return event

    def connect(self) -> None:
        self.dials += 1
        self._up = True

    def disconnect(self) -> None:
        self._up = False

    def lost(self, exc: BaseException) -> None:
        if not self.keep_connection:
            self.disconnect()

    def send(self, batch: list[Event]) -> None:
        done = 0
        try:
            for event in batch:
                if event.seq in self.fail_at:
                    self.fail_at.discard(event.seq)
                    raise OSError(f"lost while sending {event.seq}")
                with self.lock:
                    self.received.append(event.seq)
                done += 1
        finally:
            del batch[:done]


def _wait_for(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class TestPartialSends:
    """A send that fails midway re-sends only what did not go out, in seq order."""

    def test_the_rest_of_a_batch_goes_back_in_order(self) -> None:
        sender = _OneByOne(fail_at={4, 9}, keep_connection=False)
        for seq in range(1, 13):
            sender.write(_status(seq))
        sender.start(TID)
        _wait_for(lambda: len(sender.received) == 12)
        assert sender.stop() == 0
        assert sender.received == list(range(1, 13))  # each once, in order
        assert sender.failures == 2
        assert "lost while sending 9" in sender.last_error
        assert sender.dials == 3  # the default lost() reconnects after each failure

    def test_a_client_that_keeps_its_connection_is_not_redialled(self) -> None:
        sender = _OneByOne(fail_at={3}, keep_connection=True)
        for seq in range(1, 8):
            sender.write(_status(seq))
        sender.start(TID)
        _wait_for(lambda: len(sender.received) == 7)
        sender.stop()
        assert sender.received == list(range(1, 8))
        assert sender.dials == 1
        assert sender.retry.failures == 0  # a later successful send ends the streak

    def test_nothing_is_queued_after_close(self) -> None:
        sender = _OneByOne(fail_at=set(), keep_connection=True)
        sender.start(TID)
        sender.write(_status(1))
        _wait_for(lambda: sender.received == [1])
        sender.stop()
        sender.write(_status(2))
        assert sender.queued() == 0
