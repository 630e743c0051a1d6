"""The store: the JetStream stream, the runs bucket and the bucket's documents.

This module owns what NATS keeps (specs/nats.md). One JetStream stream
(:class:`StoreConfig`, :func:`ensure_store`): its per-subject limit keeps the
latest ``max_msgs_per_subject`` values of each sampled kind of a run, while
every kept event has a subject of its own and so is never discarded by it;
``max_age`` and ``max_bytes`` bound the whole. Beside it, the key-value
bucket ``pulse_runs`` holds each run's latest state, v2 view and v1 snapshot
(:func:`state_document`, :func:`read_documents`; a sink keeps its run's
entries with :class:`RunEntry`), so a reader recovers every run from one
read of the bucket. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import attrs
import nats.js.errors
import orjson
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from pulse_core.errors import ConfigError
from pulse_core.events import Event
from pulse_core.projections import to_v1, to_view
from pulse_core.reducer import Folder
from pulse_core.state import RunState
from pulse_core.statecodec import STATE_FORMAT, state_from_obj, state_to_obj
from pulse_transports.config import check_limits, check_table
from pulse_transports.nats._subject import ROOT, run_token

if TYPE_CHECKING:
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

#: The options of a ``nats`` table that configure the store.
STORE_OPTIONS: Final[Mapping[str, type]] = {
    "stream": str,
    "bucket": str,
    "max_msgs_per_subject": int,
    "max_age": float,
    "max_bytes": int,
    "duplicate_window": float,
}
#: Seconds the bucket is left alone after a failed update (it is a cache).
KV_RETRY: Final = 10.0


# -- names and defaults (specs/nats.md says why each default is what it is) ------

#: The JetStream stream holding every run's events.
STREAM: Final = "PULSE_V2"
#: The key-value bucket holding every run's latest state.
BUCKET: Final = "pulse_runs"

#: Values kept per run of each sampled kind (progress, metrics, heartbeat):
#: 25 s of history at the default 10 updates/s, about 64 KiB a run.
MAX_MSGS_PER_SUBJECT: Final = 256
#: Age after which any message leaves the stream (and a key the bucket).
MAX_AGE: Final = 30 * 86400.0
#: The stream's size limit; past it the oldest messages go.
MAX_BYTES: Final = 1 << 30
#: The largest message: the hub's frame limit.
MAX_MSG_SIZE: Final = 1 << 20
#: Seconds the server remembers a Nats-Msg-Id to drop a retried publish.
DUPLICATE_WINDOW: Final = 120.0
#: The bucket's size limit.
KV_MAX_BYTES: Final = 256 << 20

_HISTORY_SUFFIX: Final = ".history"
DOC_FORMAT: Final = 1


@attrs.frozen
class StoreConfig:
    """The stream and bucket PULSE uses, and their limits (specs/nats.md).

    Attributes:
        stream: the stream's name; it takes the subjects ``pulse.v2.>``.
        bucket: the key-value bucket of the runs' latest states.
        max_msgs_per_subject: values kept per run of each sampled kind.
        max_age: seconds a message (and a bucket key) is kept.
        max_bytes: the stream's size limit (the oldest messages go first).
        max_msg_size: the largest message.
        duplicate_window: seconds a ``Nats-Msg-Id`` is remembered.
        kv_max_bytes: the bucket's size limit.
        replicas: copies kept in a cluster (1 on a single server).
    """

    stream: str = STREAM
    bucket: str = BUCKET
    max_msgs_per_subject: int = MAX_MSGS_PER_SUBJECT
    max_age: float = MAX_AGE
    max_bytes: int = MAX_BYTES
    max_msg_size: int = MAX_MSG_SIZE
    duplicate_window: float = DUPLICATE_WINDOW
    kv_max_bytes: int = KV_MAX_BYTES
    replicas: int = 1

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> StoreConfig:
        """The store of a ``[tool.pulse.nats]`` table (other keys are ignored).

        Raises:
            ConfigError: for a mistyped or impossible limit.
        """
        values = check_table(table, STORE_OPTIONS, what="transport 'nats'", ignore_unknown=True)
        store = cls(**values)
        store.check()
        return store

    def check(self) -> None:
        """Refuse impossible limits.

        Raises:
            ConfigError: naming the option.
        """
        check_limits(
            "transport 'nats'",
            {
                "max_msgs_per_subject": (self.max_msgs_per_subject, 1),
                "max_age": (self.max_age, None),
                "duplicate_window": (self.duplicate_window, None),
                "max_bytes": (self.max_bytes, 1024),
                "kv_max_bytes": (self.kv_max_bytes, 1024),
                "max_msg_size": (self.max_msg_size, 1024),
            },
        )
        if self.duplicate_window > self.max_age:
            raise ConfigError("option 'duplicate_window' of transport 'nats' exceeds 'max_age'")

    def stream_config(self) -> StreamConfig:
        """The JetStream configuration of the stream."""
        return StreamConfig(
            name=self.stream,
            description="PULSE v2 training events (specs/nats.md)",
            subjects=[f"{ROOT}.>"],
            retention=RetentionPolicy.LIMITS,
            discard=DiscardPolicy.OLD,
            max_msgs_per_subject=self.max_msgs_per_subject,
            max_age=self.max_age,
            max_bytes=self.max_bytes,
            max_msg_size=self.max_msg_size,
            duplicate_window=self.duplicate_window,
            storage=StorageType.FILE,
            num_replicas=self.replicas,
            allow_direct=True,
        )

    def kv_config(self) -> KeyValueConfig:
        """The configuration of the key-value bucket."""
        return KeyValueConfig(
            bucket=self.bucket,
            description="PULSE v2 runs: latest state, v2 view, v1 snapshot (specs/nats.md)",
            history=1,
            ttl=self.max_age,
            max_bytes=self.kv_max_bytes,
            max_value_size=self.max_msg_size,
            storage=StorageType.FILE,
            replicas=self.replicas,
            direct=True,
        )


async def ensure_store(
    js: JetStreamContext, store: StoreConfig, *, update: bool = False
) -> dict[str, str]:
    """Create the stream and the bucket when missing.

    An existing stream is left as it is, unless *update* applies *store*'s
    limits to it (the bucket is never changed once made).

    Returns:
        ``{"stream": "created|exists|updated", "bucket": "created|exists"}``.
    """
    done: dict[str, str] = {}
    try:
        await js.stream_info(store.stream)
    except nats.js.errors.NotFoundError:
        await js.add_stream(store.stream_config())
        done["stream"] = "created"
    else:
        if update:
            await js.update_stream(store.stream_config())
            done["stream"] = "updated"
        else:
            done["stream"] = "exists"
    try:
        await js.key_value(store.bucket)
        done["bucket"] = "exists"
    except nats.js.errors.BucketNotFoundError:
        await js.create_key_value(store.kv_config())
        done["bucket"] = "created"
    return done


# -- state documents (the bucket's values) ---------------------------------------------


def history_key(token: str) -> str:
    """The bucket key of a run's metric history (beside the run's own key)."""
    return token + _HISTORY_SUFFIX


def state_document(state: RunState, *, stream_seq: int, now: float) -> bytes:
    """The bucket value of a run: its state, v2 view and v1 snapshot, as JSON.

    The metric history is left out (it is stored under :func:`history_key`,
    read only by ``show``), so recovering every run stays a small read.

    Shape::

        {"format": 1, "state_format": str, "training_id": str,
         "stream_seq": int,     # the stream sequence the state covers
         "last_seq": int, "updated_at": float,
         "view": {...},         # pulse_core.projections.to_view
         "v1": {...},           # pulse_core.projections.to_v1
         "state": {...}}        # pulse_core.statecodec.state_to_obj, no history
    """
    light = attrs.evolve(state, history={})
    return orjson.dumps(
        {
            "format": DOC_FORMAT,
            "state_format": STATE_FORMAT,
            "training_id": state.training_id,
            "stream_seq": stream_seq,
            "last_seq": state.last_seq,
            "updated_at": now,
            "view": to_view(light, now=now),
            "v1": to_v1(state),
            "state": state_to_obj(light),
        }
    )


def history_document(state: RunState, *, stream_seq: int) -> bytes:
    """The bucket value of a run's metric history (see :func:`state_document`)."""
    series = {name: [s.width, s.count, s.windows] for name, s in state.history.items()}
    return orjson.dumps({"format": DOC_FORMAT, "stream_seq": stream_seq, "history": series})


@attrs.frozen
class StoredRun:
    """A run as the bucket holds it."""

    training_id: str
    stream_seq: int
    updated_at: float
    state: RunState


def read_document(data: bytes, history: bytes | None = None) -> StoredRun:
    """Read a bucket value (and, if given, the run's history value).

    Raises:
        ValueError: if *data* is not a state document of this version.
    """
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != DOC_FORMAT:
        raise ValueError("not a PULSE state document of this version")
    if doc.get("state_format") != STATE_FORMAT:
        raise ValueError("state written by another version")
    obj = doc.get("state")
    if history is not None and isinstance(obj, dict):
        with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
            extra = orjson.loads(history)
            if extra.get("format") == DOC_FORMAT and isinstance(extra.get("history"), dict):
                obj = {**obj, "history": extra["history"]}
    state = state_from_obj(obj)
    seq = doc.get("stream_seq")
    updated = doc.get("updated_at")
    if state.training_id is None or not isinstance(seq, int):
        raise ValueError("document without training_id or stream_seq")
    return StoredRun(
        training_id=state.training_id,
        stream_seq=seq,
        updated_at=float(updated) if isinstance(updated, int | float) else 0.0,
        state=state,
    )


# -- reading and writing the bucket ---------------------------------------------------


async def _bucket(js: JetStreamContext, bucket: str) -> KeyValue | None:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return None


async def _get(kv: KeyValue, key: str) -> bytes | None:
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    return entry.value


async def read_documents(js: JetStreamContext, bucket: str) -> dict[str, StoredRun]:
    """Every run's stored state (without metric history), by training id.

    One ordered read of the bucket's latest values; unreadable values (of
    another version) are skipped, so those runs are folded from the stream.
    """
    kv = await _bucket(js, bucket)
    if kv is None:
        return {}
    out: dict[str, StoredRun] = {}
    watcher = await kv.watch("*", ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value is None:
                continue
            try:
                doc = read_document(entry.value)
            except ValueError:
                continue
            out[doc.training_id] = doc
    finally:
        with contextlib.suppress(Exception):
            await watcher.stop()  # type: ignore[no-untyped-call]
    return out


async def store_states(
    js: JetStreamContext, store: StoreConfig, states: Mapping[str, tuple[RunState, int]]
) -> int:
    """Write runs' states to the bucket (what the sink does; for tools and rebuilds).

    Args:
        js: a JetStream context.
        store: the bucket's name.
        states: training id -> (state, stream sequence it covers).

    Returns:
        How many runs were written.
    """
    kv = await js.key_value(store.bucket)
    now = time.time()
    for tid, (state, stream_seq) in states.items():
        token = run_token(tid)
        await kv.put(token, state_document(state, stream_seq=stream_seq, now=now))
        await kv.put(history_key(token), history_document(state, stream_seq=stream_seq))
    return len(states)


class RunEntry:
    """One run's bucket entries, kept up to date by the sink that publishes it.

    The sink folds each acknowledged event in (:meth:`published`); the state
    is stored after a kept event, else at most every *interval* seconds
    (:meth:`wanted`), and the history entry only when it grew. The bucket is
    a cache: a failed update is logged by the caller and retried after
    :data:`KV_RETRY` seconds, and events go on meanwhile.
    """

    def __init__(self, bucket: str, token: str, *, interval: float) -> None:
        self.bucket = bucket
        self.token = token
        self.interval = interval
        self.folder = Folder()
        self.stream_seq = 0
        self.puts = 0
        self._kv: KeyValue | None = None
        self._due = self._dirty = False
        self._at = 0.0
        self._retry_at = 0.0
        self._metrics = -1

    def resume(self, state: RunState, stream_seq: int) -> None:
        """Go on from what the stream holds of a continued run."""
        self.folder = Folder(state)
        self.stream_seq = stream_seq

    def published(self, event: Event, stream_seq: int, *, kept: bool) -> None:
        """Fold in an acknowledged event (a kept one makes an update due)."""
        self.stream_seq = max(self.stream_seq, stream_seq)
        self.folder.apply(event)
        self._dirty = True
        self._due = self._due or kept

    def wanted(self, now: float, force: bool = False) -> bool:
        """Whether to store the state now: after a kept event, else at a low rate."""
        if not self._dirty:
            return False
        due = force or self._due or now - self._at >= self.interval
        return due and (force or now >= self._retry_at)

    async def update(self, js: JetStreamContext, now: float, force: bool = False) -> None:
        """Store the state (and the history when it grew); raise what the bucket raised."""
        try:
            if self._kv is None:
                self._kv = await js.key_value(self.bucket)
            state = self.folder.state
            doc = state_document(state, stream_seq=self.stream_seq, now=time.time())
            await self._kv.put(self.token, doc)
            metrics = sum(series.count for series in state.history.values())
            if metrics != self._metrics or force:
                history = history_document(state, stream_seq=self.stream_seq)
                await self._kv.put(history_key(self.token), history)
                self._metrics = metrics
        except Exception:
            self._retry_at = now + KV_RETRY
            self._kv = None
            raise
        self.puts += 1
        self._due = self._dirty = False
        self._at = now
