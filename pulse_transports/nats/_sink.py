"""The ``nats`` sink: a run's events published to JetStream from a sender thread.

This module owns :class:`NatsSink`, the ``nats`` transport: a
:class:`~pulse_transports._sender.BackgroundSender` whose ``send()``
publishes each event with a JetStream acknowledgement, deduplicated by
``Nats-Msg-Id`` (``<training_id>:<seq>``), and keeps the runs bucket up to
date. The nats client lives on a private asyncio event loop on its own
thread. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import nats.errors
import nats.js.errors

from pulse_core._log import get_logger
from pulse_core.codec import encode
from pulse_core.events import ErrorReported, Event
from pulse_core.policy import LIVE_INTERVAL, POISON_ATTEMPTS, BoundedBuffer
from pulse_transports._sender import BackgroundSender, LoopThread, shed_details
from pulse_transports.config import check_limits
from pulse_transports.nats._connection import CONNECTION_OPTIONS, NatsOptions, connect, explain
from pulse_transports.nats._errors import NatsError
from pulse_transports.nats._reader import fold_run
from pulse_transports.nats._store import (
    BUCKET,
    DUPLICATE_WINDOW,
    MAX_AGE,
    MAX_BYTES,
    MAX_MSGS_PER_SUBJECT,
    STORE_OPTIONS,
    STREAM,
    RunEntry,
    StoreConfig,
    ensure_store,
)
from pulse_transports.nats._subject import KEPT_KINDS, kind_of, msg_id, run_token, subject_of

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext

log = get_logger("pulse.nats")


# -- names and defaults (specs/nats.md says why each default is what it is) ------

#: Least seconds between two bucket updates of a run without a kept event.
KV_INTERVAL: Final = 5.0
#: Events the sink may hold while the server is unreachable.
QUEUE: Final = 10_000
#: Bytes (encoded) the sink may hold while the server is unreachable.
BUFFER_BYTES: Final = 16 << 20
#: Seconds one publish may wait for its acknowledgement.
ACK_TIMEOUT: Final = 2.0


def _kind(item: _Out) -> str | None:
    return item.kind


def _size(item: _Out) -> int:
    return len(item.payload)


def _is_meta(item: _Out) -> bool:
    return kind_of(item.event) == "meta"


@attrs.define(slots=True)
class _Out:
    """One event waiting to be published."""

    event: Event
    kind: str | None  # the coalesced stream, None for a kept event
    subject: str
    payload: bytes
    attempts: int = 0

    @property
    def seq(self) -> int:
        return self.event.seq


class NatsSink(BackgroundSender[_Out]):
    """Publishes a run's events to NATS JetStream (the ``nats`` transport).

    ``write()`` never blocks on the network and never raises because of it.
    While the server is unreachable, meta, status, error and dropped events
    wait in a queue bounded by *queue* events and *buffer_bytes* bytes
    (past it the oldest progress/metrics go first, then the oldest kept
    events but the run's meta, counted and logged), and progress, metrics
    and heartbeats are coalesced to the latest value. Each publish waits
    for its JetStream acknowledgement and is retried with backoff; the
    server drops a retried copy by its ``Nats-Msg-Id``. Events are sent one
    at a time, in seq order, so the stream holds a run's events in order.
    The queue, the sender thread, the backoff and the close deadline are
    :class:`~pulse_transports._sender.BackgroundSender`'s; this class says
    how to connect and publish, on a private asyncio loop (a ``LoopThread``).

    Args:
        home: unused (every transport factory takes it).
        url: the server URL, or several comma-separated (default
            ``$PULSE_NATS_URL``, then ``nats://127.0.0.1:4222``).
        token: an authentication token (default ``$PULSE_NATS_TOKEN``).
        user, password: user/password authentication (default
            ``$PULSE_NATS_USER``, ``$PULSE_NATS_PASSWORD``).
        creds: a ``.creds`` file, JWT and NKey seed (default ``$PULSE_NATS_CREDS``).
        tls_ca, tls_cert, tls_key, tls_hostname: TLS: a CA bundle, a client
            certificate and its key, the name to verify the server against.
        stream: the JetStream stream (subjects ``pulse.v2.>``).
        bucket: the key-value bucket of the runs' latest states.
        create: create the stream and bucket when missing.
        kv: keep the run's latest state in the bucket.
        interval: the least seconds between forwarded progress/metrics
            (the emitter's rate limit; default 0.1: 10 updates/s).
        queue: the most events held while the server is unreachable.
        buffer_bytes: the most encoded bytes held meanwhile.
        connect_timeout: seconds one connection attempt may take (``open``
            waits about this long for the server).
        ack_timeout: seconds a publish waits for its acknowledgement.
        close_timeout: seconds ``flush`` and ``close`` each wait for queued events.
        kv_interval: least seconds between two bucket updates without a
            kept event.
        max_msgs_per_subject: values kept per run of each of progress,
            metrics and heartbeat (specs/nats.md).
        max_age: seconds a message and a bucket key are kept.
        max_bytes: the stream's size limit (the oldest messages go first).
        duplicate_window: seconds the server remembers a ``Nats-Msg-Id``.
        env: the environment to read ``PULSE_NATS_*`` from (default ``os.environ``).

    Raises:
        ConfigError: for an impossible limit.
    """

    name = "nats"
    boundaries = False
    failures_are = (NatsError,)
    DOWN_LOG_EVERY = 100
    OPTIONS: Final = {
        **CONNECTION_OPTIONS,
        **STORE_OPTIONS,
        "create": bool,
        "kv": bool,
        "interval": float,
        "queue": int,
        "buffer_bytes": int,
        "connect_timeout": float,
        "ack_timeout": float,
        "close_timeout": float,
        "kv_interval": float,
    }

    def __init__(
        self,
        *,
        home: Path | str | None = None,
        url: str | None = None,
        token: str | None = None,
        user: str | None = None,
        password: str | None = None,
        creds: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_hostname: str | None = None,
        stream: str = STREAM,
        bucket: str = BUCKET,
        create: bool = True,
        kv: bool = True,
        interval: float = LIVE_INTERVAL,
        queue: int = QUEUE,
        buffer_bytes: int = BUFFER_BYTES,
        connect_timeout: float = 1.0,
        ack_timeout: float = ACK_TIMEOUT,
        close_timeout: float = 2.0,
        kv_interval: float = KV_INTERVAL,
        max_msgs_per_subject: int = MAX_MSGS_PER_SUBJECT,
        max_age: float = MAX_AGE,
        max_bytes: int = MAX_BYTES,
        duplicate_window: float = DUPLICATE_WINDOW,
        env: Mapping[str, str] | None = None,
    ) -> None:
        check_limits(
            "transport 'nats'",
            {
                "queue": (queue, 16),
                "buffer_bytes": (buffer_bytes, 64 * 1024),
                "connect_timeout": (connect_timeout, None),
                "ack_timeout": (ack_timeout, None),
                "close_timeout": (close_timeout, None),
                "kv_interval": (kv_interval, None),
            },
        )
        given = (url, token, user, password, creds, tls_ca, tls_cert, tls_key, tls_hostname)
        connection = dict(zip(CONNECTION_OPTIONS, given, strict=True))
        self.options = NatsOptions.resolve(
            {**connection, "connect_timeout": connect_timeout, "name": "pulse-sink"}, env
        )
        self.store = StoreConfig(
            stream=stream,
            bucket=bucket,
            max_msgs_per_subject=max_msgs_per_subject,
            max_age=max_age,
            max_bytes=max_bytes,
            duplicate_window=duplicate_window,
        )
        self.store.check()
        super().__init__(
            log=log,
            buffer=BoundedBuffer(
                queue, max_bytes=buffer_bytes, key=_kind, size=_size, protect=_is_meta
            ),
            close_timeout=close_timeout,
            label="nats sink",
        )
        self.create = create
        self.kv = kv
        self.interval = interval
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        #: the highest seq the stream held for the run when the sink opened.
        self.held_seq: int | None = None
        # counters, for tests, benchmarks and logs (the rest are the sender's)
        self.published = 0
        self.published_bytes = 0
        self.duplicates = 0
        self.disconnects = 0
        self._entry = RunEntry(bucket, "", interval=kv_interval)
        self._aio: LoopThread | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None

    # -- the Sink protocol ---------------------------------------------------------

    def open(self, training_id: str) -> int | None:
        """Try the server once (about ``connect_timeout``) and start the sender thread.

        Returns:
            The highest seq the stream already holds for this run (a
            continued run goes on after it), or None if it holds none or the
            server could not be reached now.
        """
        self._entry.token = run_token(training_id)
        self._aio = LoopThread(f"pulse-nats-loop-{training_id}")
        self.start(training_id)
        return self.held_seq or None

    def close(self) -> None:
        """Publish what is queued (bounded by ``close_timeout``), then disconnect."""
        if self._closing:
            return  # closed already
        lost = self.stop()
        if self._aio is not None:
            self._aio.stop()
        if lost or self.dropped:
            log.warning(
                "pulse nats sink closed with events the server never acknowledged",
                training_id=self.training_id,
                server=self.options.shown,
                unsent=lost,
                dropped=self.dropped,
                last_error=self.last_error,
            )

    @property
    def connected(self) -> bool:
        """True while the sink holds a live connection to a server."""
        nc = self._nc
        return nc is not None and nc.is_connected

    def stats(self) -> dict[str, Any]:
        """Counters: published, duplicates, coalesced, dropped, failures, ..."""
        return {
            "published": self.published,
            "published_bytes": self.published_bytes,
            "duplicates": self.duplicates,
            "coalesced": self.coalesced,
            "dropped": self.dropped,
            "failures": self.failures,
            "connects": self.connects,
            "disconnects": self.disconnects,
            "kv_puts": self._entry.puts,
            "queued": self.queued(),
            "connected": self.connected,
            "last_error": self.last_error,
        }

    # -- the sender hooks --------------------------------------------------------------

    def prepare(self, event: Event) -> _Out | None:
        """Encode *event* with its subject (shedding an error's details if too large)."""
        payload = encode(event)
        limit = self.store.max_msg_size - 1024  # room for headers
        if len(payload) > limit and isinstance(event, ErrorReported):
            event = shed_details(event, len(payload))
            payload = encode(event)
        if len(payload) > limit:
            with self._cond:
                self.count_drop("larger than the stream's message limit", event.seq)
            return None
        kind = kind_of(event)
        return _Out(
            event=event,
            kind=None if kind in KEPT_KINDS else kind,
            subject=subject_of(event, self._entry.token or None),
            payload=payload,
        )

    @property
    def _bytes(self) -> int:
        """Encoded bytes waiting."""
        return self._queue.nbytes

    def _on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        aio = self._aio
        if aio is None or not aio.running:
            coro.close()
            raise NatsError("the sink is not open")
        try:
            aio.run(coro)
        except concurrent.futures.CancelledError:
            raise NatsError("the sink closed while talking to NATS") from None

    def connect(self) -> None:
        """Connect (or wait for the client's own reconnection), as the sender thread asks."""
        self._on_loop(self._connect())

    def send(self, batch: list[_Out]) -> None:
        """Publish *batch* in order, each with its acknowledgement."""
        self._on_loop(self._send(batch))

    def poll(self) -> None:
        """Update the runs bucket when it is due (a low rate while only samples flow)."""
        if self.kv and self._entry.wanted(time.monotonic()):
            self._on_loop(self._update_kv())

    def lost(self, exc: BaseException) -> None:
        """A publish failed: keep the client (nats-py reconnects by itself); retry later."""

    def disconnect(self) -> None:
        """Store the final state in the bucket and close the connection."""
        with contextlib.suppress(NatsError):
            self._on_loop(self._shutdown())

    def explain(self, exc: BaseException) -> str:
        return str(exc if isinstance(exc, NatsError) else explain(exc, self.options))

    def describe_down(self, exc: BaseException) -> None:
        log.warning(
            "pulse nats sink cannot publish; keeping events and retrying",
            training_id=self.training_id,
            server=self.options.shown,
            error=self.last_error,
            failures=self.failures,
            queued=self.queued(),
        )

    # -- on the loop -------------------------------------------------------------------

    async def _connect(self) -> None:
        """Connect, make the store if asked, and learn what the stream holds of the run."""
        if self._nc is not None:  # nats-py is reconnecting: give it connect_timeout
            deadline = time.monotonic() + self.connect_timeout
            while not self._nc.is_connected and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if not self._nc.is_connected:
                raise NatsError(f"reconnecting to NATS at {self.options.shown}")
            return

        async def disconnected() -> None:
            if self._closing:
                return  # our own close
            self.disconnects += 1
            log.info(
                "pulse nats sink disconnected; queueing",
                training_id=self.training_id,
                server=self.options.shown,
            )

        async def reconnected() -> None:
            log.info(
                "pulse nats sink reconnected",
                training_id=self.training_id,
                server=self.options.shown,
                queued=self.queued(),
            )

        try:
            nc = await connect(
                self.options, reconnect=True, on_disconnect=disconnected, on_reconnect=reconnected
            )
        except Exception as exc:  # noqa: BLE001 - mapped to NatsError, with the reason
            raise explain(exc, self.options) from None
        js = nc.jetstream(timeout=self.ack_timeout)
        try:
            if self.create:
                await ensure_store(js, self.store)
            assert self.training_id is not None
            state, stream_seq, _bad = await fold_run(js, self.store, self.training_id)
        except Exception as exc:  # noqa: BLE001 - mapped to NatsError, with the reason
            await nc.close()
            raise explain(exc, self.options) from None
        self._nc, self._js = nc, js
        if state.last_seq:
            # A continued run (a reused training id): go on after what the
            # stream holds, and keep the bucket's state whole.
            self.held_seq = state.last_seq
            self._entry.resume(state, stream_seq)
            self.drop_through(state.last_seq)

    async def _send(self, batch: list[_Out]) -> None:
        js, nc = self._js, self._nc
        if js is None or nc is None or not nc.is_connected:
            raise NatsError(f"not connected to NATS at {self.options.shown}")
        done = 0
        try:
            for item in batch:
                await self._publish(js, item)
                done += 1
                await self._update_kv()
        finally:
            del batch[:done]  # what is done with does not go back to the queue

    async def _publish(self, js: JetStreamContext, item: _Out) -> None:
        """Publish one event and wait for its ack (or give up on a poisonous one)."""
        event = item.event
        try:
            ack = await js.publish(
                item.subject,
                item.payload,
                timeout=self.ack_timeout,
                headers={"Nats-Msg-Id": msg_id(event)},
            )
        except nats.js.errors.NoStreamResponseError as exc:
            if self.create:
                with contextlib.suppress(Exception):
                    await ensure_store(js, self.store)
            raise NatsError(f"no stream takes {item.subject!r}: {exc or 'no responders'}") from None
        except (nats.js.errors.APIError, nats.errors.MaxPayloadError) as exc:
            # The server refused this very message: it may never take it. A
            # few tries, then it is dropped so the events behind it go on.
            item.attempts += 1
            if item.attempts >= POISON_ATTEMPTS:
                with self._cond:
                    self.count_drop(f"refused by the server: {exc}"[:200], event.seq)
                return
            raise explain(exc, self.options) from None
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            item.attempts += 1
            raise explain(exc, self.options) from None
        if ack.duplicate:
            self.duplicates += 1
            if item.attempts == 0:
                log.warning(
                    "pulse nats: the stream already had this event (a reused training id?)",
                    training_id=self.training_id,
                    seq=event.seq,
                )
        self.published += 1
        self.sent += 1
        self.published_bytes += len(item.payload)
        self._entry.published(event, int(ack.seq), kept=item.kind is None)

    async def _update_kv(self, force: bool = False) -> None:
        """Store the run's state in the bucket when due (see :class:`RunEntry`)."""
        now = time.monotonic()
        js = self._js
        if js is None or not self.kv or not self._entry.wanted(now, force):
            return
        try:
            await self._entry.update(js, now, force)
        except Exception as exc:  # noqa: BLE001 - the bucket is a cache: events go on
            log.warning(
                "pulse nats sink cannot update the runs bucket; retrying in 10 s",
                training_id=self.training_id,
                bucket=self.store.bucket,
                error=self.options.redact(f"{type(exc).__name__}: {exc}")[:300],
            )

    async def _shutdown(self) -> None:
        nc = self._nc
        if nc is None:
            return
        if nc.is_connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._update_kv(force=True), self.ack_timeout)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), 2.0)
        self._nc = self._js = None
