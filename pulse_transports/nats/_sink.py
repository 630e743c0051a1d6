"""The ``nats`` sink: a run's events published to JetStream from a sender thread.

This module owns :class:`NatsSink`, the ``nats`` transport. ``write()`` puts
the encoded event in a bounded queue and returns; a background thread running
a private asyncio event loop publishes it with a JetStream acknowledgement,
retrying with backoff and deduplicated by ``Nats-Msg-Id``
(``<training_id>:<seq>``), and keeps the runs bucket up to date. Must not be
imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import attrs
import nats.errors
import nats.js.errors

from pulse_core._log import get_logger
from pulse_core.codec import encode
from pulse_core.errors import ConfigError
from pulse_core.events import ErrorReported, Event
from pulse_core.policy import (
    CONNECT_BACKOFF,
    LIVE_INTERVAL,
    POISON_ATTEMPTS,
    BoundedBuffer,
    sampled,
)
from pulse_core.reducer import Folder
from pulse_transports._sender import wait_sent
from pulse_transports.nats._connection import NatsOptions, connect, explain
from pulse_transports.nats._errors import NatsError
from pulse_transports.nats._reader import fold_run
from pulse_transports.nats._store import (
    BUCKET,
    DUPLICATE_WINDOW,
    MAX_AGE,
    MAX_BYTES,
    MAX_MSGS_PER_SUBJECT,
    STREAM,
    StoreConfig,
    ensure_store,
    history_document,
    history_key,
    state_document,
)
from pulse_transports.nats._subject import KEPT_KINDS, kind_of, msg_id, run_token, subject_of

if TYPE_CHECKING:
    from nats.aio.client import Client as NatsClient
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

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


class NatsSink:
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
    OPTIONS: Final = {
        "url": str,
        "token": str,
        "user": str,
        "password": str,
        "creds": str,
        "tls_ca": str,
        "tls_cert": str,
        "tls_key": str,
        "tls_hostname": str,
        "stream": str,
        "bucket": str,
        "create": bool,
        "kv": bool,
        "interval": float,
        "queue": int,
        "buffer_bytes": int,
        "connect_timeout": float,
        "ack_timeout": float,
        "close_timeout": float,
        "kv_interval": float,
        "max_msgs_per_subject": int,
        "max_age": float,
        "max_bytes": int,
        "duplicate_window": float,
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
        if queue < 16:
            raise ConfigError(
                f"option 'queue' of transport 'nats' must be at least 16, got {queue}"
            )
        if buffer_bytes < 64 * 1024:
            raise ConfigError("option 'buffer_bytes' of transport 'nats' must be >= 65536")
        for key, value in (
            ("connect_timeout", connect_timeout),
            ("ack_timeout", ack_timeout),
            ("close_timeout", close_timeout),
            ("kv_interval", kv_interval),
        ):
            if not value > 0:
                raise ConfigError(f"option {key!r} of transport 'nats' must be positive")
        self.options = NatsOptions.resolve(
            {
                "url": url,
                "token": token,
                "user": user,
                "password": password,
                "creds": creds,
                "tls_ca": tls_ca,
                "tls_cert": tls_cert,
                "tls_key": tls_key,
                "tls_hostname": tls_hostname,
                "connect_timeout": connect_timeout,
                "name": "pulse-sink",
            },
            env,
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
        self.create = create
        self.kv = kv
        self.interval = interval
        self.queue_limit = queue
        self.buffer_bytes = buffer_bytes
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.close_timeout = close_timeout
        self.kv_interval = kv_interval
        self.training_id: str | None = None
        #: the highest seq the stream held for the run when the sink opened.
        self.held_seq: int | None = None
        # counters, for tests, benchmarks and logs
        self.published = 0
        self.published_bytes = 0
        self.duplicates = 0
        self.coalesced = 0
        self.dropped = 0
        self.failures = 0
        self.connects = 0
        self.disconnects = 0
        self.kv_puts = 0
        self.last_error = ""
        self.stream_seq = 0
        self._token = ""
        self._queue: BoundedBuffer[_Out] = BoundedBuffer(
            queue,
            max_bytes=buffer_bytes,
            key=_kind,
            size=_size,
            protect=_is_meta,
        )
        self._inflight: _Out | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._idle = False
        self._opened = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._kv: KeyValue | None = None
        self._kv_retry_at = 0.0
        self._folder = Folder()
        self._kv_due = False
        self._kv_dirty = False
        self._kv_at = 0.0
        self._kv_metrics = -1
        self._streak = 0  # failures since the last success
        self._logged_down = False

    # -- the Sink protocol ---------------------------------------------------------

    def open(self, training_id: str) -> int | None:
        """Start the sender thread and wait (at most ``connect_timeout``) for the server.

        Returns:
            The highest seq the stream already holds for this run (a
            continued run goes on after it), or None if it holds none or the
            server could not be reached in time.
        """
        self.training_id = training_id
        self._token = run_token(training_id)
        self._thread = threading.Thread(
            target=self._thread_main, name=f"pulse-nats-{training_id}", daemon=True
        )
        self._thread.start()
        self._opened.wait(self.connect_timeout + 0.5)
        return self.held_seq or None

    def write(self, event: Event) -> None:
        """Queue *event* for the sender thread; never blocks on the network."""
        item = self._prepare(event)
        if item is None:
            return
        with self._cond:
            if self._closing:
                return  # nothing follows close()
            self._hold(item)
            wake, self._idle = self._idle, False
        if wake:
            self._kick()

    def flush(self, durable: bool) -> None:
        """With *durable*, wait (up to ``close_timeout``) until every queued event is acked.

        Returns at once while the server is unreachable: events then stay queued.
        """
        if durable:
            pending = lambda: bool(self._queue or self._inflight is not None)  # noqa: E731
            wait_sent(self._cond, pending, self, self.close_timeout, poll=0.1)

    def close(self) -> None:
        """Publish what is queued (bounded by ``close_timeout``), then disconnect."""
        with self._cond:
            if self._closing:
                return
            self._closing = True
            self._deadline = time.monotonic() + self.close_timeout
        self._kick()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.close_timeout + 3.0)
        with self._cond:
            lost = len(self._queue) + (1 if self._inflight is not None else 0)
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

    def queued(self) -> int:
        """Events waiting to be published (and acknowledged)."""
        with self._cond:
            return len(self._queue) + (1 if self._inflight is not None else 0)

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
            "kv_puts": self.kv_puts,
            "queued": self.queued(),
            "connected": self.connected,
            "last_error": self.last_error,
        }

    # -- the queue -------------------------------------------------------------------

    def _prepare(self, event: Event) -> _Out | None:
        """Encode *event* with its subject (shedding an error's details if too large)."""
        payload = encode(event)
        limit = self.store.max_msg_size - 1024  # room for headers
        if len(payload) > limit and isinstance(event, ErrorReported):
            event = attrs.evolve(
                event,
                message=event.message[:1000],
                details={"pulse_truncated": f"details were {len(payload)} bytes; too large"},
            )
            payload = encode(event)
        if len(payload) > limit:
            with self._cond:
                self._count_drop(event, "larger than the stream's message limit")
            return None
        kind = kind_of(event)
        return _Out(
            event=event,
            kind=None if kind in KEPT_KINDS else kind,
            subject=subject_of(event, self._token or None),
            payload=payload,
        )

    @property
    def _bytes(self) -> int:
        """Encoded bytes waiting."""
        return self._queue.nbytes

    def _hold(self, item: _Out) -> None:
        """Append, coalescing sampled kinds, within the count and byte bounds.

        A newer value replaces the same kind still waiting since the last
        kept event, so the order of kept events is never changed. Past the
        bounds the oldest sampled values go first, then the oldest kept
        events but meta (see :class:`~pulse_core.policy.BoundedBuffer`).
        """
        coalesced, dropped = self._queue.put(item)
        self.coalesced += coalesced
        self._dropped(dropped)

    def _dropped(self, items: tuple[_Out, ...]) -> None:
        for gone in items:
            self._count_drop(gone.event, "the queue of an unreachable server is full")

    def _count_drop(self, event: Event, why: str) -> None:
        self.dropped += 1
        if sampled(self.dropped, 1000):
            log.warning(
                "pulse nats sink dropped an event",
                training_id=self.training_id,
                kind=kind_of(event),
                seq=event.seq,
                reason=why,
                dropped=self.dropped,
            )

    def _take(self) -> _Out | None:
        with self._cond:
            if not self._queue:
                return None
            item = self._queue.popleft()
            self._inflight = item
            return item

    def _done(self, item: _Out, *, sent: bool) -> None:
        """Finish the in-flight item: acknowledged (or given up), or back to the front."""
        with self._cond:
            self._inflight = None
            if not sent:
                self._dropped(self._queue.requeue([item]))
            self._cond.notify_all()

    # -- the sender thread ------------------------------------------------------------

    def _kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has ended
            loop.call_soon_threadsafe(wake.set)

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # the reporter thread must never take training down
            log.exception("pulse nats sink thread failed", training_id=self.training_id)
        finally:
            self._opened.set()
            with self._cond:
                self._cond.notify_all()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            try:
                await self._connect()
            except NatsError as exc:
                self._failed(exc)
            finally:
                self._opened.set()
            await self._pump()
        finally:
            await self._shutdown()

    async def _connect(self) -> None:
        """Connect, make the store if asked, and learn what the stream holds of the run."""

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

        nc = await connect(
            self.options, reconnect=True, on_disconnect=disconnected, on_reconnect=reconnected
        )
        js = nc.jetstream(timeout=self.ack_timeout)
        try:
            if self.create:
                await ensure_store(js, self.store)
            assert self.training_id is not None
            state, stream_seq, _bad = await fold_run(js, self.store, self.training_id)
        except NatsError:
            await nc.close()
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to NatsError, with the reason
            await nc.close()
            raise explain(exc, self.options) from None
        self._nc, self._js = nc, js
        self.connects += 1
        if state.last_seq:
            # A continued run (a reused training id): go on after what the
            # stream holds, and keep the bucket's state whole.
            self.held_seq = state.last_seq
            self._folder = Folder(state)
            self.stream_seq = stream_seq
            with self._cond:
                while self._queue and self._queue[0].event.seq <= state.last_seq:
                    self._queue.popleft()
        if self._logged_down:
            log.info(
                "pulse nats server reachable again; publishing queued events",
                training_id=self.training_id,
                server=self.options.shown,
                queued=self.queued(),
            )
        self._logged_down = False
        self._streak = 0

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self._streak += 1
        error = exc if isinstance(exc, NatsError) else explain(exc, self.options)
        self.last_error = str(error)[:300]
        if not self._logged_down or sampled(self.failures, 100):
            self._logged_down = True
            log.warning(
                "pulse nats sink cannot publish; keeping events and retrying",
                training_id=self.training_id,
                server=self.options.shown,
                error=self.last_error,
                failures=self.failures,
                queued=self.queued(),
            )

    def _backoff(self) -> float:
        return CONNECT_BACKOFF.delay(max(self._streak, 1), random.random())  # noqa: S311 - jitter

    async def _sleep(self, seconds: float) -> None:
        """Wait *seconds*, or less if ``close()`` asks."""
        wake = self._wake
        assert wake is not None
        if self._closing:
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), seconds)

    def _expired(self) -> bool:
        return self._closing and time.monotonic() >= self._deadline

    async def _pump(self) -> None:
        while True:
            if self._expired():
                return
            nc = self._nc
            if nc is None:
                if self._closing and self._streak > 0 and self._never_reached():
                    return  # never reached: no waiting on a server that is down
                await self._sleep(self._backoff())
                try:
                    await self._connect()
                except NatsError as exc:
                    self._failed(exc)
                continue
            if not nc.is_connected:  # nats-py is reconnecting
                with self._cond:
                    nothing = not self._queue
                if self._closing and nothing:
                    return
                await self._sleep(0.05)
                continue
            item = self._take()
            if item is None:
                await self._update_kv()
                if self._closing:
                    return
                await self._idle_wait(self._kv_wait())
                continue
            sent = await self._publish(item)
            self._done(item, sent=sent)
            if sent:
                await self._update_kv()
            else:
                await self._sleep(self._backoff())

    def _never_reached(self) -> bool:
        return self.connects == 0

    async def _idle_wait(self, timeout: float) -> None:
        wake = self._wake
        assert wake is not None
        wake.clear()
        with self._cond:
            if self._queue or self._closing:
                return
            self._idle = True
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
        finally:
            with self._cond:
                self._idle = False

    async def _publish(self, item: _Out) -> bool:
        """Publish one event and wait for its ack; True once it is done with."""
        js = self._js
        assert js is not None
        event = item.event
        try:
            ack = await js.publish(
                item.subject,
                item.payload,
                timeout=self.ack_timeout,
                headers={"Nats-Msg-Id": msg_id(event)},
            )
        except nats.js.errors.NoStreamResponseError as exc:
            self._failed(NatsError(f"no stream takes {item.subject!r}: {exc or 'no responders'}"))
            if self.create:
                with contextlib.suppress(Exception):
                    await ensure_store(js, self.store)
            return False
        except (nats.js.errors.APIError, nats.errors.MaxPayloadError) as exc:
            # The server refused this very message: it may never take it. A
            # few tries, then it is dropped so the events behind it go on.
            item.attempts += 1
            self._failed(exc)
            if item.attempts >= POISON_ATTEMPTS:
                self._count_drop(event, f"refused by the server: {exc}"[:200])
                return True
            return False
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            item.attempts += 1
            self._failed(exc)
            return False
        if ack.duplicate:
            self.duplicates += 1
            if item.attempts == 0:
                log.warning(
                    "pulse nats: the stream already had this event (a reused training id?)",
                    training_id=self.training_id,
                    seq=event.seq,
                )
        self.published += 1
        self.published_bytes += len(item.payload)
        self._streak = 0
        if self._logged_down:
            self._logged_down = False
            log.info(
                "pulse nats sink publishing again",
                training_id=self.training_id,
                server=self.options.shown,
                queued=self.queued(),
            )
        self.stream_seq = max(self.stream_seq, int(ack.seq))
        self._folder.apply(event)
        self._kv_dirty = True
        if item.kind is None:
            self._kv_due = True
        return True

    def _kv_wait(self) -> float:
        if self._kv_dirty and self.kv:
            return max(0.01, self._kv_at + self.kv_interval - time.monotonic())
        return 0.5

    async def _update_kv(self, force: bool = False) -> None:
        """Store the run's state in the bucket: after a kept event, else at a low rate."""
        if not self.kv or not self._kv_dirty:
            return
        now = time.monotonic()
        if not (force or self._kv_due or now - self._kv_at >= self.kv_interval):
            return
        if now < self._kv_retry_at and not force:
            return
        js = self._js
        if js is None:
            return
        try:
            if self._kv is None:
                self._kv = await js.key_value(self.store.bucket)
            state = self._folder.state
            await self._kv.put(
                self._token, state_document(state, stream_seq=self.stream_seq, now=time.time())
            )
            metrics = sum(series.count for series in state.history.values())
            if metrics != self._kv_metrics or force:
                await self._kv.put(
                    history_key(self._token), history_document(state, stream_seq=self.stream_seq)
                )
                self._kv_metrics = metrics
        except Exception as exc:  # noqa: BLE001 - the bucket is a cache: events go on
            self._kv_retry_at = now + 10.0
            self._kv = None
            log.warning(
                "pulse nats sink cannot update the runs bucket; retrying in 10 s",
                training_id=self.training_id,
                bucket=self.store.bucket,
                error=self.options.redact(f"{type(exc).__name__}: {exc}")[:300],
            )
            return
        self.kv_puts += 1
        self._kv_due = self._kv_dirty = False
        self._kv_at = now

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
