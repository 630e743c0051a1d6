"""Reading the stream: ordered consumers that catch up, then follow live.

This module owns :class:`StreamReader` (replay from any point of the stream,
then follow live; it outlives a restarted server), the :class:`Delivery` it
yields, and :func:`fold_run`, which folds one run's events with the
reference reducer. The sink, the source and the hub's feed all read through
it. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, Literal

import attrs
import nats.errors
import nats.js.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from pulse_core.codec import decode
from pulse_core.errors import DecodeError
from pulse_core.events import Event
from pulse_core.reducer import Folder
from pulse_core.state import RunState
from pulse_transports.nats._errors import NatsError
from pulse_transports.nats._store import StoreConfig, StoredRun
from pulse_transports.nats._subject import run_filter

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext


# -- names and defaults (specs/nats.md says why each default is what it is) ------

#: Idle heartbeat of the readers' consumers: a consumer lost with a
#: restarted server is noticed and recreated within about twice this.
READER_HEARTBEAT: Final = 1.0


@attrs.frozen
class Delivery:
    """One message of the stream as a reader got it.

    Attributes:
        event: the decoded event; None if the message is not a valid event.
        stream_seq: the message's stream sequence.
        pending: messages of the reader's filter still waiting after this
            one when it was sent (0: the reader has caught up).
        subject: the message's subject.
        error: why the message did not decode, if it did not.
    """

    event: Event | None
    stream_seq: int
    pending: int
    subject: str
    error: str | None = None


Policy = Literal["all", "last_per_subject", "by_start_sequence", "new"]
_POLICIES: Final = {
    "all": DeliverPolicy.ALL,
    "last_per_subject": DeliverPolicy.LAST_PER_SUBJECT,
    "by_start_sequence": DeliverPolicy.BY_START_SEQUENCE,
    "new": DeliverPolicy.NEW,
}


@attrs.define(eq=False, repr=False)
class StreamReader:
    """An ordered consumer on one subject filter: catch up, then follow live.

    nats-py recreates the consumer from the last stream sequence seen when
    it goes missing (a restarted server), so a reader outlives restarts.

    Args:
        js: a JetStream context.
        stream: the stream's name.
        subject: the subject filter (:func:`run_filter`).
        policy: where to start: ``all``, ``last_per_subject`` (the kept
            events and the latest sampled values: a run's current state),
            ``by_start_sequence`` (from *start_seq*) or ``new``.
        start_seq: the first stream sequence, for ``by_start_sequence``.
    """

    js: JetStreamContext
    stream: str
    subject: str
    policy: Policy = attrs.field(default="all", kw_only=True)
    start_seq: int | None = attrs.field(default=None, kw_only=True)
    #: messages waiting when the reader opened (0: nothing to catch up).
    initial_pending: int = attrs.field(default=0, init=False)
    _sub: Any = attrs.field(default=None, init=False)

    async def open(self) -> int:
        """Create the consumer; return how many messages it starts behind.

        Raises:
            NatsError: the stream does not exist.
        """
        config = ConsumerConfig()
        if self.policy == "by_start_sequence":
            config.opt_start_seq = max(1, self.start_seq or 1)
        try:
            self._sub = await self.js.subscribe(
                self.subject,
                stream=self.stream,
                ordered_consumer=True,
                deliver_policy=_POLICIES[self.policy],
                config=config,
                idle_heartbeat=READER_HEARTBEAT,
            )
        except nats.js.errors.NotFoundError:
            raise NatsError(
                f"no stream {self.stream!r} on this NATS server: run a training with the "
                "nats transport, or 'pulse nats setup'"
            ) from None
        info = await self._sub.consumer_info()
        # The server may have pushed messages already: those count too.
        delivered = info.delivered.consumer_seq if info.delivered is not None else 0
        self.initial_pending = int(info.num_pending or 0) + int(delivered or 0)
        return self.initial_pending

    async def next(self, timeout: float | None) -> Delivery | None:
        """The next message, or None if none came within *timeout* seconds."""
        sub = self._sub
        if sub is None:
            raise RuntimeError("StreamReader.open() first")
        try:
            msg: Msg = await sub.next_msg(timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return None
        meta = msg.metadata
        try:
            event: Event | None = decode(msg.data)
            error = None
        except DecodeError as exc:
            event, error = None, str(exc)
        return Delivery(
            event=event,
            stream_seq=int(meta.sequence.stream),
            pending=int(meta.num_pending or 0),
            subject=msg.subject,
            error=error,
        )

    async def catch_up(self, timeout: float = 5.0) -> AsyncIterator[Delivery]:
        """Yield what was waiting when the reader opened, then stop.

        Stops early if nothing comes for *timeout* seconds.
        """
        if self.initial_pending <= 0:
            return
        while True:
            delivery = await self.next(timeout)
            if delivery is None:
                return
            yield delivery
            if delivery.pending <= 0:
                return

    async def close(self) -> None:
        """Delete the consumer (best effort)."""
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()


async def fold_run(
    js: JetStreamContext, store: StoreConfig, training_id: str, start: StoredRun | None = None
) -> tuple[RunState, int, int]:
    """Fold one run from the stream, continuing from *start* (a bucket value) if given.

    Returns:
        ``(state, stream_seq, bad)``: the state, the last stream sequence it
        covers, and how many messages did not decode.
    """
    folder = Folder(start.state) if start is not None else Folder()
    last = start.stream_seq if start is not None else 0
    reader = StreamReader(
        js,
        store.stream,
        run_filter(training_id),
        policy="by_start_sequence" if start is not None else "all",
        start_seq=last + 1,
    )
    bad = 0
    await reader.open()
    try:
        async for delivery in reader.catch_up():
            last = max(last, delivery.stream_seq)
            event = delivery.event
            if event is None or event.training_id != training_id:
                bad += 1
            elif event.seq > folder.last_seq:
                folder.apply(event)
    finally:
        await reader.close()
    return folder.state, last, bad
