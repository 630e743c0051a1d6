"""The NATS source: runs read back from the bucket and the stream.

This module owns :class:`NatsSource` -- :meth:`~NatsSource.recover` (every
run's last known state), :meth:`~NatsSource.load_run` and
:meth:`~NatsSource.replay`, each also as a coroutine -- and the
:class:`NatsRunRecord` it returns, what ``pulse nats ls`` and ``show`` print.
Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import nats.errors
import nats.js.errors

from pulse_core.errors import ConfigError
from pulse_core.events import Event
from pulse_core.liveness import LOST_AFTER, STALE_AFTER, Liveness, liveness_of
from pulse_core.ports import RunRecord
from pulse_core.projections import to_summary
from pulse_core.reducer import Folder
from pulse_core.state import RunState
from pulse_transports.nats._connection import NatsOptions, connect, explain
from pulse_transports.nats._errors import NatsError, NatsRunNotFound
from pulse_transports.nats._reader import StreamReader, fold_run
from pulse_transports.nats._store import (
    StoreConfig,
    StoredRun,
    _bucket,
    _get,
    history_key,
    read_document,
    read_documents,
)
from pulse_transports.nats._subject import _tid_of_subject, run_filter, run_token

if TYPE_CHECKING:
    from nats.js import JetStreamContext

    from pulse_transports.config import Config


T = TypeVar("T")


@attrs.frozen(kw_only=True)
class NatsRunRecord(RunRecord):
    """What the NATS source knows about one run: the port's record, plus where it came from.

    ``liveness`` comes from silence alone (NATS cannot check a remote
    writer's lock); ``where`` is the run's subject filter; the ``summary``
    has ``source: "nats"``.

    Attributes:
        stream_seq: the last stream sequence the state covers.
        origin: ``kv`` (the bucket), ``kv+stream`` (the bucket, then newer
            stream messages) or ``stream`` (folded from the stream).
    """

    stream_seq: int
    origin: str

    @property
    def bad_messages(self) -> int:
        """Messages of the run that did not decode (``bad_lines``)."""
        return self.bad_lines


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run *coro* to the end on a new event loop (in a worker if one runs here)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class NatsSource:
    """Reads runs from NATS: the bucket for every run's last state, the stream for events.

    Args:
        url: the server URL(s) (default: ``$PULSE_NATS_URL``, then
            ``nats://127.0.0.1:4222``).
        options: full connection options (instead of *url* and *connection*).
        store: the stream and bucket names (limits are not used here).
        stale_after, lost_after: the liveness thresholds (seconds).
        connection: ``token``, ``user``, ``password``, ``creds``, ``tls_*``
            as for :class:`NatsOptions`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        options: NatsOptions | None = None,
        store: StoreConfig | None = None,
        stale_after: float = STALE_AFTER,
        lost_after: float = LOST_AFTER,
        **connection: Any,
    ) -> None:
        self.options = options or NatsOptions.resolve({"url": url, **connection})
        self.store = store or StoreConfig()
        self.stale_after = stale_after
        self.lost_after = lost_after
        self._stops: set[threading.Event] = set()

    @classmethod
    def from_config(cls, config: Config, **given: Any) -> NatsSource:
        """A source from the ``[tool.pulse.nats]`` table, *given* values winning.

        Raises:
            ConfigError: if the table is not a table.
        """
        table = config.transport_options.get("nats", {})
        if not isinstance(table, Mapping):
            raise ConfigError("[tool.pulse.nats] must be a table")
        merged = {**table, **{k: v for k, v in given.items() if v not in (None, "")}}
        return cls(
            options=NatsOptions.resolve(merged),
            store=StoreConfig.from_table(merged),
            **config.thresholds,
        )

    # -- sync API ----------------------------------------------------------------------

    def recover(self, *, now: float | None = None, limit: int | None = None) -> list[NatsRunRecord]:
        """Every run's last known state, newest first (see :meth:`arecover`)."""
        return _run_sync(self.arecover(now=now, limit=limit))

    def load_run(self, training_id: str, *, now: float | None = None) -> NatsRunRecord:
        """One run, exact up to the stream's last message (see :meth:`aload_run`)."""
        return _run_sync(self.aload_run(training_id, now=now))

    def replay(self, training_id: str, after: int = 0) -> list[Event]:
        """The run's events the stream holds with seq > *after*, in order."""
        return _run_sync(self.areplay(training_id, after))

    # -- the RunSource port --------------------------------------------------------------

    name = "nats"

    def runs(self, *, now: float | None = None, limit: int | None = None) -> list[RunRecord]:
        """Every run's last known state, newest first (:meth:`recover`)."""
        return list(self.recover(now=now, limit=limit))

    def load(self, training_id: str, *, now: float | None = None) -> RunRecord:
        """One run (:meth:`load_run`).

        Raises:
            NatsRunNotFound: neither the bucket nor the stream holds the run.
        """
        return self.load_run(training_id, now=now)

    def events(self, training_id: str, after: int = 0) -> list[Event]:
        """The run's events the stream holds with seq > *after* (:meth:`replay`).

        Raises:
            NatsRunNotFound: the stream holds nothing of the run.
        """
        run_token(training_id)  # a malformed id fails here, named
        held = self.replay(training_id, 0)
        if not held:
            raise NatsRunNotFound(f"no run {training_id!r} in NATS at {self.options.shown}")
        return [e for e in held if e.seq > after]

    def follow(
        self, training_id: str, after: int = 0, *, idle: float | None = None
    ) -> Iterator[Event]:
        """Yield the run's events with seq > *after*: the stream's, then live ones.

        A worker thread holds the subscription; the iteration ends after the
        terminal event, after *idle* quiet seconds, or on :meth:`close`.
        """
        run_token(training_id)
        stop = threading.Event()
        self._stops.add(stop)
        out: queue.Queue[Event | BaseException | None] = queue.Queue()
        worker = threading.Thread(
            target=asyncio.run,
            args=(self._pump(training_id, out, stop),),
            name=f"pulse-nats-follow-{training_id}",
            daemon=True,
        )
        worker.start()
        folder = Folder()
        try:
            while True:
                try:
                    item = out.get(timeout=idle)
                except queue.Empty:
                    return
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                folder.apply(item)
                if item.seq > after:
                    yield item
                if folder.state.is_terminal:
                    return
        finally:
            stop.set()
            self._stops.discard(stop)
            worker.join(timeout=5.0)

    async def _pump(
        self,
        training_id: str,
        out: queue.Queue[Event | BaseException | None],
        stop: threading.Event,
    ) -> None:
        try:
            async with self.session(reconnect=True) as js:
                reader = StreamReader(js, self.store.stream, run_filter(training_id))
                await reader.open()
                try:
                    while not stop.is_set():
                        delivery = await reader.next(0.2)
                        if delivery is not None and delivery.event is not None:
                            out.put(delivery.event)
                finally:
                    await reader.close()
        except Exception as exc:  # noqa: BLE001 -- handed to the iterating thread, raised there
            out.put(exc)
        out.put(None)

    def close(self) -> None:
        """End every :meth:`follow` of this source."""
        for stop in list(self._stops):
            stop.set()

    # -- async API ---------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def session(self, *, reconnect: bool = False) -> AsyncIterator[JetStreamContext]:
        """A connection's JetStream context, closed at the end.

        Raises:
            NatsAuthError, NatsUnavailable: as :func:`connect`.
        """
        nc = await connect(self.options, reconnect=reconnect)
        try:
            yield nc.jetstream(timeout=max(2.0, self.options.connect_timeout))
        except (nats.errors.Error, TimeoutError) as exc:
            # JetStream refusals and timeouts surface as NatsError, named and redacted.
            raise explain(exc, self.options) from None
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def arecover(
        self, *, now: float | None = None, limit: int | None = None
    ) -> list[NatsRunRecord]:
        """Every run's last known state, newest first: the bucket, then newer stream messages.

        One read of the bucket gives each run's state as its sink last
        stored it; one consumer then reads the stream from the oldest
        sequence a live run's stored state does not cover, so those runs are
        exact. A run whose stored state is older than ``lost_after`` is taken
        as stored. Without a bucket (or an empty one) every run is folded
        from the stream's latest message per subject: every kept event and
        the latest sampled values (metric history then holds only those).

        Raises:
            NatsAuthError, NatsUnavailable: NATS refused or did not answer.
            NatsError: the stream does not exist.
        """
        at = time.time() if now is None else now
        async with self.session() as js:
            docs = await read_documents(js, self.store.bucket)
            try:
                info = await js.stream_info(self.store.stream)
            except nats.js.errors.NotFoundError:
                raise NatsError(
                    f"no stream {self.store.stream!r} at {self.options.shown}: run a training "
                    "with the nats transport, or 'pulse nats setup'"
                ) from None
            last = int(info.state.last_seq or 0)
            folders = {tid: Folder(doc.state) for tid, doc in docs.items()}
            covered = {tid: doc.stream_seq for tid, doc in docs.items()}
            origin = dict.fromkeys(docs, "kv")
            bad: dict[str, int] = {}
            if docs:
                live = [
                    doc.stream_seq
                    for doc in docs.values()
                    if not doc.state.is_terminal
                    and at - (doc.state.last_event_at or doc.updated_at) <= self.lost_after
                ]
                start = min([*live, max(covered.values())]) + 1
                reader = StreamReader(
                    js, self.store.stream, run_filter(), policy="by_start_sequence", start_seq=start
                )
            else:
                start = 1
                reader = StreamReader(
                    js, self.store.stream, run_filter(), policy="last_per_subject"
                )
            if start <= last:
                await reader.open()
                try:
                    async for delivery in reader.catch_up():
                        event = delivery.event
                        if event is None:
                            tid = _tid_of_subject(delivery.subject)
                            if tid is not None:
                                bad[tid] = bad.get(tid, 0) + 1
                            continue
                        tid = event.training_id
                        folder = folders.get(tid)
                        if folder is None:
                            folder = folders[tid] = Folder()
                            origin[tid] = "stream"
                        if event.seq > folder.last_seq:
                            folder.apply(event)
                            if origin[tid] == "kv":
                                origin[tid] = "kv+stream"
                        covered[tid] = max(covered.get(tid, 0), delivery.stream_seq)
                finally:
                    await reader.close()
        records = [
            self._record(tid, folder.state, covered.get(tid, 0), origin[tid], bad.get(tid, 0), at)
            for tid, folder in folders.items()
        ]
        records.sort(key=lambda r: (r.state.created_at or 0.0, r.training_id), reverse=True)
        return records[:limit] if limit is not None else records

    async def aload_run(self, training_id: str, *, now: float | None = None) -> NatsRunRecord:
        """One run: its stored state (with metric history), then every newer stream message.

        Raises:
            InvalidTrainingId: a malformed id.
            NatsRunNotFound: neither the bucket nor the stream holds the run.
            NatsAuthError, NatsUnavailable, NatsError: as :meth:`arecover`.
        """
        token = run_token(training_id)
        at = time.time() if now is None else now
        async with self.session() as js:
            stored: StoredRun | None = None
            kv = await _bucket(js, self.store.bucket)
            if kv is not None:
                data = await _get(kv, token)
                if data is not None:
                    with contextlib.suppress(ValueError):
                        stored = read_document(data, await _get(kv, history_key(token)))
            state, stream_seq, bad = await fold_run(js, self.store, training_id, stored)
        if state.last_seq == 0:
            raise NatsRunNotFound(f"no run {training_id!r} in NATS at {self.options.shown}")
        if stored is None:
            origin = "stream"
        else:
            origin = "kv+stream" if state.last_seq > stored.state.last_seq else "kv"
        return self._record(training_id, state, stream_seq, origin, bad, at)

    async def areplay(self, training_id: str, after: int = 0) -> list[Event]:
        """The run's events the stream holds with seq > *after*, in stream order."""
        events: list[Event] = []
        async with self.session() as js:
            reader = StreamReader(js, self.store.stream, run_filter(training_id))
            await reader.open()
            try:
                async for delivery in reader.catch_up():
                    event = delivery.event
                    if event is not None and event.seq > after:
                        events.append(event)
            finally:
                await reader.close()
        return events

    def _record(
        self, tid: str, state: RunState, stream_seq: int, origin: str, bad: int, now: float
    ) -> NatsRunRecord:
        liveness = self.liveness(state, now)
        summary = to_summary(state, liveness=liveness, now=now, training_id=tid)
        summary["log"] = run_filter(tid)
        summary["source"] = "nats"
        summary["bad_lines"] = bad
        return NatsRunRecord(
            training_id=tid,
            state=state,
            liveness=liveness,
            summary=summary,
            where=summary["log"],
            cursor=state.last_seq,
            bad_lines=bad,
            stream_seq=stream_seq,
            origin=origin,
        )

    def liveness(self, state: RunState, now: float) -> Liveness:
        """A run's liveness from its silence (a remote writer cannot be checked)."""
        return liveness_of(state, now=now, stale_after=self.stale_after, lost_after=self.lost_after)
