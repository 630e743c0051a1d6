"""NATS JetStream: the ``nats`` sink, the NATS source, the hub feed and the store.

This module owns everything PULSE does with NATS (specs/nats.md):

* **Subjects.** ``pulse.v2.<run>.<type>`` for the sampled kinds (progress,
  metrics, heartbeat, unknown types) and ``pulse.v2.<run>.<type>.<seq>`` for
  the kept kinds (meta, status, error, dropped), where ``<run>`` is the
  training id with every ``.`` written as ``=`` (:func:`run_token`): a dot
  separates subject tokens, and ``=`` never occurs in a training id.
* **The store.** One JetStream stream (:class:`StoreConfig`,
  :func:`ensure_store`). Its per-subject limit keeps the latest
  ``max_msgs_per_subject`` values of each sampled kind of a run, while every
  kept event has a subject of its own and so is never discarded by it;
  ``max_age`` and ``max_bytes`` bound the whole. Beside it, the key-value
  bucket ``pulse_runs`` holds each run's latest state, v2 view and v1
  snapshot (:func:`state_document`), so a reader recovers every run from
  one read of the bucket.
* :class:`NatsSink` -- the ``nats`` transport. ``write()`` puts the encoded
  event in a bounded queue and returns; a background thread running a
  private asyncio event loop publishes it with a JetStream acknowledgement,
  retrying with backoff and deduplicated by ``Nats-Msg-Id``
  (``<training_id>:<seq>``), and keeps the bucket up to date.
* :class:`NatsSource` -- reading: :meth:`~NatsSource.recover` (every run's
  last known state), :meth:`~NatsSource.load_run`,
  :meth:`~NatsSource.replay`, and :class:`StreamReader` (replay from any
  point, then follow live) feeding the reference reducer.
* :class:`NatsFeed` -- the hub's bridge: NATS events into a hub's bus, as a
  producer's would be.
* :class:`NatsOptions` -- server URLs, token, user/password, creds file and
  TLS, passed through to nats-py; URLs are logged only redacted
  (:func:`redact`), secrets never.

Must not be imported by :mod:`pulse_core`. nats-py is an optional
dependency (``pip install 'pulse-v2[nats]'``); this module is imported only
when the ``nats`` transport or command is used.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import random
import re
import ssl
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

import attrs
import orjson
import structlog

from pulse_core.codec import TAG_OF, decode, encode
from pulse_core.errors import ConfigError, DecodeError, PulseError
from pulse_core.events import ErrorReported, Event, UnknownEvent, validate_training_id
from pulse_core.liveness import LOST_AFTER, STALE_AFTER, Liveness, liveness_of
from pulse_core.policy import LIVE_INTERVAL, POISON_ATTEMPTS, RETRY_FIRST
from pulse_core.projections import to_v1, to_view
from pulse_core.reducer import Folder
from pulse_core.state import RunState
from pulse_transports.history import STATE_FORMAT, state_from_obj, state_to_obj, summarize

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client as NatsClient
    from nats.js.api import (
        ConsumerConfig,
        DeliverPolicy,
        DiscardPolicy,
        KeyValueConfig,
        RetentionPolicy,
        StorageType,
        StreamConfig,
    )
except ImportError as _missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the nats transport needs nats-py: pip install 'pulse-v2[nats]'"
    ) from _missing

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.kv import KeyValue

    from pulse_transports.config import Config
    from pulse_transports.inprocess import Bus

log = structlog.get_logger("pulse.nats")

T = TypeVar("T")

# -- names and defaults (specs/nats.md says why each default is what it is) ------

#: The first two tokens of every PULSE subject.
ROOT: Final = "pulse.v2"
#: The JetStream stream holding every run's events.
STREAM: Final = "PULSE_V2"
#: The key-value bucket holding every run's latest state.
BUCKET: Final = "pulse_runs"
#: Where nats-py finds a server when nothing is configured.
DEFAULT_URL: Final = "nats://127.0.0.1:4222"

ENV_URL: Final = "PULSE_NATS_URL"
ENV_TOKEN: Final = "PULSE_NATS_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_USER: Final = "PULSE_NATS_USER"
ENV_PASSWORD: Final = "PULSE_NATS_PASSWORD"  # noqa: S105 - a variable name
ENV_CREDS: Final = "PULSE_NATS_CREDS"

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
#: Least seconds between two bucket updates of a run without a kept event.
KV_INTERVAL: Final = 5.0
#: Events the sink may hold while the server is unreachable.
QUEUE: Final = 10_000
#: Bytes (encoded) the sink may hold while the server is unreachable.
BUFFER_BYTES: Final = 16 << 20
#: Seconds one publish may wait for its acknowledgement.
ACK_TIMEOUT: Final = 2.0
#: Longest pause between two attempts while failing (seconds).
RETRY_MAX: Final = 2.0
#: Seconds an ended run stays in a hub fed from NATS (as the bus keeps it).
KEEP_ENDED: Final = 3600.0
#: Idle heartbeat of the readers' consumers: a consumer lost with a
#: restarted server is noticed and recreated within about twice this.
READER_HEARTBEAT: Final = 1.0

#: The kinds whose every event is kept (a subject per event).
KEPT_KINDS: Final = frozenset({"meta", "status", "error", "dropped"})
#: The kinds limited per subject (a subject per run and kind).
SAMPLED_KINDS: Final = frozenset({"progress", "metrics", "heartbeat"})

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_USERINFO_RE: Final = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s,]*@")
_HISTORY_SUFFIX: Final = ".history"
DOC_FORMAT: Final = 1


# -- errors ----------------------------------------------------------------------


class NatsError(PulseError):
    """NATS could not be used: unreachable, refused, or missing the PULSE stream."""


class NatsAuthError(NatsError):
    """The NATS server refused the credentials (token, user/password, creds)."""


class NatsUnavailable(NatsError):
    """No NATS server answered at the configured URL."""


class NatsRunNotFound(NatsError):
    """NATS holds nothing of a training id."""


# -- subjects ----------------------------------------------------------------------


def run_token(training_id: str) -> str:
    """The subject token of a run: the training id with each ``.`` written ``=``.

    Training ids are ``[A-Za-z0-9._-]``; a dot separates subject tokens, and
    ``=`` (valid in subjects and bucket keys) never occurs in an id, so the
    mapping is one to one (:func:`training_id_of` undoes it).

    Raises:
        InvalidTrainingId: if *training_id* is not a valid id.
    """
    return validate_training_id(training_id).replace(".", "=")


def training_id_of(token: str) -> str:
    """The training id of a subject token made by :func:`run_token`.

    Raises:
        InvalidTrainingId: if the token does not decode to a valid id.
    """
    return validate_training_id(token.replace("=", "."))


def run_filter(training_id: str | None = None) -> str:
    """The subject filter of one run's events (of every run's with None)."""
    if training_id is None:
        return f"{ROOT}.>"
    return f"{ROOT}.{run_token(training_id)}.>"


def kind_of(event: Event) -> str:
    """The subject token naming *event*'s kind (its wire tag, or ``unknown``)."""
    if isinstance(event, UnknownEvent):
        return event.type if _TOKEN_RE.fullmatch(event.type) else "unknown"
    return TAG_OF[event.__class__]


def subject_of(event: Event, token: str | None = None) -> str:
    """The subject *event* is published on (see the module doc)."""
    tok = token if token is not None else run_token(event.training_id)
    kind = kind_of(event)
    if kind in KEPT_KINDS:
        return f"{ROOT}.{tok}.{kind}.{event.seq}"
    return f"{ROOT}.{tok}.{kind}"


def msg_id(event: Event) -> str:
    """The ``Nats-Msg-Id`` of *event*: ``<training_id>:<seq>`` (retries deduplicate)."""
    return f"{event.training_id}:{event.seq}"


# -- connection options ----------------------------------------------------------------


def redact(text: str) -> str:
    """Hide the userinfo (``user:password@``, ``token@``) of every URL in *text*."""
    return _USERINFO_RE.sub(r"\g<scheme>***@", text)


def redact_url(url: str) -> str:
    """A server URL (or comma-separated list) fit for logs: userinfo hidden."""
    return redact(url)


_OPTION_KEYS: Final = (
    "url",
    "token",
    "user",
    "password",
    "creds",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_hostname",
)
_ENV_OF: Final = {
    "url": ENV_URL,
    "token": ENV_TOKEN,
    "user": ENV_USER,
    "password": ENV_PASSWORD,
    "creds": ENV_CREDS,
}


@attrs.frozen
class NatsOptions:
    """How to reach and authenticate to NATS; passed through to nats-py.

    Attributes:
        url: server URL, or several separated by commas (``nats://``,
            ``tls://``; userinfo in a URL works but is better given below).
        token: an authentication token.
        user, password: user/password authentication.
        creds: path of a ``.creds`` file (JWT + NKey seed).
        tls_ca: a CA bundle to verify the server with (enables TLS).
        tls_cert, tls_key: a client certificate and key (mutual TLS).
        tls_hostname: the name to verify the server's certificate against.
        connect_timeout: seconds one connection attempt may take.
        name: the connection name shown in the server's monitoring.
    """

    url: str = DEFAULT_URL
    token: str | None = attrs.field(default=None, repr=False)
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_hostname: str | None = None
    connect_timeout: float = 2.0
    name: str = "pulse"

    @classmethod
    def resolve(
        cls,
        given: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> NatsOptions:
        """Options from given values (a ``[tool.pulse.nats]`` table, arguments).

        A given value wins; ``$PULSE_NATS_URL``, ``$PULSE_NATS_TOKEN``,
        ``$PULSE_NATS_USER``, ``$PULSE_NATS_PASSWORD`` and
        ``$PULSE_NATS_CREDS`` fill what is left open (so secrets can stay out
        of files); then the defaults. Keys other than the connection options
        are ignored.
        """
        environ = os.environ if env is None else env
        values: dict[str, Any] = {}
        source = {**(given or {}), **extra}
        for key in _OPTION_KEYS:
            value = source.get(key)
            if value in (None, "") and key in _ENV_OF:
                value = environ.get(_ENV_OF[key]) or None
            if value not in (None, ""):
                values[key] = str(value)
        for key in ("connect_timeout", "name"):
            if source.get(key) is not None:
                values[key] = source[key]
        return cls(**values)

    @property
    def servers(self) -> list[str]:
        """The server URLs."""
        return [part.strip() for part in self.url.split(",") if part.strip()]

    @property
    def shown(self) -> str:
        """The URL(s) as logs and messages show them (userinfo hidden)."""
        return redact_url(self.url)

    def redact(self, text: str) -> str:
        """*text* with URL userinfo and this configuration's secrets hidden."""
        out = redact(text)
        for secret in (self.token, self.password):
            if secret:
                out = out.replace(secret, "***")
        return out

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context when TLS is asked for (a CA, a client cert, ``tls://``)."""
        wants = self.tls_ca or self.tls_cert or any(s.startswith("tls://") for s in self.servers)
        if not wants:
            return None
        context = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        return context

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``nats.aio.client.Client.connect``."""
        kwargs: dict[str, Any] = {
            "servers": self.servers,
            "connect_timeout": self.connect_timeout,
            "name": self.name,
        }
        if self.token:
            kwargs["token"] = self.token
        if self.user:
            kwargs["user"] = self.user
        if self.password:
            kwargs["password"] = self.password
        if self.creds:
            kwargs["user_credentials"] = self.creds
        context = self.ssl_context()
        if context is not None:
            kwargs["tls"] = context
            if self.tls_hostname:
                kwargs["tls_hostname"] = self.tls_hostname
        return kwargs


def explain(exc: BaseException, options: NatsOptions) -> NatsError:
    """Turn a nats-py failure into a :class:`NatsError` with a clear, redacted message."""
    if isinstance(exc, NatsError):
        return exc
    if isinstance(exc, nats.errors.NoRespondersError | nats.js.errors.ServiceUnavailableError):
        return NatsError(
            f"the NATS server at {options.shown} does not answer JetStream requests: "
            "start it with JetStream enabled (nats-server -js)"
        )
    text = options.redact(str(exc).strip() or type(exc).__name__)
    lowered = text.lower()
    if (
        isinstance(exc, nats.errors.AuthorizationError)
        or "authorization" in lowered
        or "authentication" in lowered
        or "user credentials" in lowered
    ):
        return NatsAuthError(
            f"the NATS server at {options.shown} refused the credentials ({text}); "
            "check token, user/password or creds ([tool.pulse.nats], $PULSE_NATS_TOKEN)"
        )
    return NatsUnavailable(f"cannot reach NATS at {options.shown}: {type(exc).__name__}: {text}")


async def connect(
    options: NatsOptions,
    *,
    reconnect: bool = False,
    reconnect_wait: float = 0.5,
    on_disconnect: Any = None,
    on_reconnect: Any = None,
) -> NatsClient:
    """Connect to NATS with *options*.

    Args:
        options: where and how.
        reconnect: keep reconnecting for ever after a lost connection
            (long-lived readers and sinks); False for one-shot commands.
        reconnect_wait: seconds between two reconnection attempts.
        on_disconnect, on_reconnect: coroutine functions nats-py calls.

    Raises:
        NatsAuthError: the server refused the credentials.
        NatsUnavailable: no server answered.
    """
    client = NatsClient()
    seen: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        # nats-py's default logs a traceback per error; ours is one quiet,
        # redacted line (callers see failures through their own calls).
        if len(seen) < 8:
            seen.append(exc)
        log.debug("nats client error", error=options.redact(f"{type(exc).__name__}: {exc}"))

    kwargs = options.connect_kwargs()
    # nats-py annotates the wait as int; it is used as seconds and takes a float.
    extra: dict[str, Any] = {"reconnect_time_wait": 0.05}
    if on_disconnect is not None:
        extra["disconnected_cb"] = on_disconnect
    if on_reconnect is not None:
        extra["reconnected_cb"] = on_reconnect
    try:
        # The first attempt fails fast with the real reason (refused, wrong
        # token); with reconnection on, nats-py would retry it silently for ever.
        # (1 is nats-py's least: each server is tried twice, 50 ms apart.)
        await client.connect(
            **kwargs,
            error_cb=on_error,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            **extra,
        )
    except Exception as exc:  # noqa: BLE001 - nats-py raises many kinds; mapped to ours
        with contextlib.suppress(Exception):
            await client.close()
        if isinstance(exc, nats.errors.NoServersError) and seen:
            exc = seen[-1]  # why the servers failed, not only that they did
        raise explain(exc, options) from None
    # nats-py reads these at each reconnection: from now on, for ever (or never).
    client.options["allow_reconnect"] = reconnect
    client.options["max_reconnect_attempts"] = -1 if reconnect else 0
    client.options["reconnect_time_wait"] = reconnect_wait
    return client


# -- the store ------------------------------------------------------------------------


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
        kinds: dict[str, type] = {
            "stream": str,
            "bucket": str,
            "max_msgs_per_subject": int,
            "max_age": float,
            "max_bytes": int,
            "duplicate_window": float,
        }
        values: dict[str, Any] = {}
        for key, kind in kinds.items():
            value = table.get(key)
            if value is None:
                continue
            ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
            if not ok or isinstance(value, bool):
                raise ConfigError(f"option {key!r} of transport 'nats' must be {kind.__name__}")
            values[key] = value
        store = cls(**values)
        store.check()
        return store

    def check(self) -> None:
        """Refuse impossible limits.

        Raises:
            ConfigError: naming the option.
        """
        if self.max_msgs_per_subject < 1:
            raise ConfigError("option 'max_msgs_per_subject' of transport 'nats' must be >= 1")
        for key in ("max_age", "duplicate_window"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"option {key!r} of transport 'nats' must be positive")
        if self.duplicate_window > self.max_age:
            raise ConfigError("option 'duplicate_window' of transport 'nats' exceeds 'max_age'")
        for key in ("max_bytes", "kv_max_bytes", "max_msg_size"):
            if getattr(self, key) < 1024:
                raise ConfigError(f"option {key!r} of transport 'nats' must be >= 1024 bytes")

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
         "state": {...}}        # pulse_transports.history.state_to_obj, no history
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


# -- reading the stream ---------------------------------------------------------------


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

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        subject: str,
        *,
        policy: Policy = "all",
        start_seq: int | None = None,
    ) -> None:
        self.js = js
        self.stream = stream
        self.subject = subject
        self.policy = policy
        self.start_seq = start_seq
        #: messages waiting when the reader opened (0: nothing to catch up).
        self.initial_pending = 0
        self._sub: Any = None

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


# -- the sink ------------------------------------------------------------------------------


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
        self._queue: deque[_Out] = deque()
        self._bytes = 0
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
        if not durable:
            return
        deadline = time.monotonic() + self.close_timeout
        with self._cond:
            while (self._queue or self._inflight is not None) and self.connected:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(min(left, 0.1))

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

    def _hold(self, item: _Out) -> None:
        """Append, coalescing sampled kinds, within the count and byte bounds.

        A newer value replaces the same kind still waiting since the last
        kept event, so the order of kept events is never changed.
        """
        queue = self._queue
        if item.kind is not None:
            for index in range(len(queue) - 1, -1, -1):
                held = queue[index]
                if held.kind == item.kind:
                    del queue[index]
                    self._bytes -= len(held.payload)
                    self.coalesced += 1
                    break
                if held.kind is None:
                    break
        queue.append(item)
        self._bytes += len(item.payload)
        self._trim()

    def _trim(self) -> None:
        """Drop the oldest sampled values, then the oldest kept events but meta, past the bounds."""
        queue = self._queue
        while queue and (len(queue) > self.queue_limit or self._bytes > self.buffer_bytes):
            victim = next((i for i, e in enumerate(queue) if e.kind is not None), None)
            if victim is None:
                victim = next((i for i, e in enumerate(queue) if kind_of(e.event) != "meta"), 0)
            gone = queue[victim]
            del queue[victim]
            self._bytes -= len(gone.payload)
            self._count_drop(gone.event, "the queue of an unreachable server is full")

    def _count_drop(self, event: Event, why: str) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
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
            self._bytes -= len(item.payload)
            self._inflight = item
            return item

    def _done(self, item: _Out, *, sent: bool) -> None:
        """Finish the in-flight item: acknowledged (or given up), or back to the front."""
        with self._cond:
            self._inflight = None
            if not sent:
                self._queue.appendleft(item)
                self._bytes += len(item.payload)
                self._trim()
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
                    gone = self._queue.popleft()
                    self._bytes -= len(gone.payload)
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
        if not self._logged_down or self.failures % 100 == 0:
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
        base = min(RETRY_MAX, RETRY_FIRST * 2 ** min(max(self._streak, 1) - 1, 10))
        return float(base * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto

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


# -- the source -----------------------------------------------------------------------


@attrs.frozen
class NatsRunRecord:
    """What the NATS source knows about one run.

    Attributes:
        training_id: the run's id.
        state: its folded state.
        liveness: alive, stale, lost or ended: from silence alone (NATS
            cannot check a remote writer's lock).
        summary: the ``pulse ls`` row (``log`` is the run's subject filter,
            ``source`` is ``"nats"``).
        stream_seq: the last stream sequence the state covers.
        origin: ``kv`` (the bucket), ``kv+stream`` (the bucket, then newer
            stream messages) or ``stream`` (folded from the stream).
        bad_messages: messages of the run that did not decode.
    """

    training_id: str
    state: RunState
    liveness: Liveness
    summary: dict[str, Any]
    stream_seq: int
    origin: str
    bad_messages: int = 0


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
            stale_after=config.stale_after,
            lost_after=config.lost_after,
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
        summary = summarize(state, liveness=liveness, now=now, path=Path(tid))
        summary["training_id"] = state.training_id or tid
        summary["log"] = run_filter(tid)
        summary["source"] = "nats"
        summary["bad_lines"] = bad
        return NatsRunRecord(
            training_id=tid,
            state=state,
            liveness=liveness,
            summary=summary,
            stream_seq=stream_seq,
            origin=origin,
            bad_messages=bad,
        )

    def liveness(self, state: RunState, now: float) -> Liveness:
        """A run's liveness from its silence (a remote writer cannot be checked)."""
        return liveness_of(state, now=now, stale_after=self.stale_after, lost_after=self.lost_after)


def _tid_of_subject(subject: str) -> str | None:
    parts = subject.split(".")
    if len(parts) < 4:
        return None
    try:
        return training_id_of(parts[2])
    except PulseError:
        return None


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


# -- the hub's bridge ------------------------------------------------------------------


class NatsFeed:
    """Feeds a hub's bus from NATS: every run's events, as its producers would.

    Called by the hub with its :class:`~pulse_transports.inprocess.Bus`, it
    reads the stream's latest message per subject (each run's current state:
    its kept events and latest values), publishes the runs that are live or
    ended within ``keep_ended`` seconds, then follows ``pulse.v2.>`` live.
    The bus drops what it already has by seq, so events that also reach the
    hub over its socket are delivered once. A lost connection is retried
    for ever with backoff; the hub cancels the feed when it closes.

    Args:
        options: the connection.
        store: the stream and bucket (and their limits, if it makes them).
        keep_ended: seconds after its end a run is still loaded.
        create: make the stream and bucket when missing (as sinks do).
    """

    def __init__(
        self,
        options: NatsOptions,
        store: StoreConfig | None = None,
        *,
        keep_ended: float = KEEP_ENDED,
        create: bool = True,
    ) -> None:
        self.options = options
        self.store = store or StoreConfig()
        self.keep_ended = keep_ended
        self.create = create
        self.forwarded = 0
        self.failures = 0
        #: set once the current state of every run was handed to the bus.
        self.caught_up = asyncio.Event()

    def __repr__(self) -> str:
        return f"NatsFeed({self.options.shown!r}, stream={self.store.stream!r})"

    async def __call__(self, bus: Bus) -> None:
        """Feed *bus* until cancelled."""
        streak = 0
        while True:
            try:
                await self._feed(bus)
                streak = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged; the feed goes on
                self.failures += 1
                streak += 1
                if streak == 1 or self.failures % 100 == 0:
                    log.warning(
                        "pulse hub cannot read NATS; retrying",
                        server=self.options.shown,
                        error=str(explain(exc, self.options))[:300],
                    )
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** min(max(streak, 1) - 1, 10))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter

    async def _feed(self, bus: Bus) -> None:
        nc = await connect(self.options, reconnect=True)
        reader: StreamReader | None = None
        try:
            js = nc.jetstream(timeout=max(2.0, self.options.connect_timeout))
            if self.create:
                await ensure_store(js, self.store)
            reader = StreamReader(js, self.store.stream, run_filter(), policy="last_per_subject")
            await reader.open()
            log.info(
                "pulse hub reading NATS", server=self.options.shown, behind=reader.initial_pending
            )
            runs: dict[str, list[Event]] = {}
            async for delivery in reader.catch_up(timeout=10.0):
                if delivery.event is not None:
                    runs.setdefault(delivery.event.training_id, []).append(delivery.event)
            now = time.time()
            for events in runs.values():
                folder = Folder()
                for event in events:
                    folder.apply(event)
                ended = folder.state.finished_at
                if ended is not None and now - ended > self.keep_ended:
                    continue
                for event in events:
                    if bus.publish(event):
                        self.forwarded += 1
            self.caught_up.set()
            while True:
                live = await reader.next(timeout=None)
                if live is not None and live.event is not None and bus.publish(live.event):
                    self.forwarded += 1
        finally:
            if reader is not None:
                await reader.close()
            with contextlib.suppress(Exception):
                await nc.close()


__all__ = [
    "BUCKET",
    "ROOT",
    "STREAM",
    "Delivery",
    "NatsAuthError",
    "NatsError",
    "NatsFeed",
    "NatsOptions",
    "NatsRunNotFound",
    "NatsRunRecord",
    "NatsSink",
    "NatsSource",
    "NatsUnavailable",
    "StoreConfig",
    "StoredRun",
    "StreamReader",
    "connect",
    "ensure_store",
    "explain",
    "fold_run",
    "history_document",
    "read_document",
    "read_documents",
    "redact",
    "redact_url",
    "run_filter",
    "run_token",
    "state_document",
    "store_states",
    "subject_of",
    "training_id_of",
]
