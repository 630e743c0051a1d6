"""NATS JetStream: the ``nats`` sink, the NATS source, the hub feed and the store.

This package owns everything PULSE does with NATS (specs/nats.md):

* **Subjects** (``_subject``). ``pulse.v2.<run>.<type>`` for the sampled
  kinds (progress, metrics, heartbeat, unknown types) and
  ``pulse.v2.<run>.<type>.<seq>`` for the kept kinds (meta, status, error,
  dropped), where ``<run>`` is the training id with every ``.`` written as
  ``=`` (:func:`run_token`): a dot separates subject tokens, and ``=`` never
  occurs in a training id.
* **The store** (``_store``). One JetStream stream (:class:`StoreConfig`,
  :func:`ensure_store`). Its per-subject limit keeps the latest
  ``max_msgs_per_subject`` values of each sampled kind of a run, while every
  kept event has a subject of its own and so is never discarded by it;
  ``max_age`` and ``max_bytes`` bound the whole. Beside it, the key-value
  bucket ``pulse_runs`` holds each run's latest state, v2 view and v1
  snapshot (:func:`state_document`), so a reader recovers every run from
  one read of the bucket.
* :class:`NatsSink` (``_sink``) -- the ``nats`` transport. ``write()`` puts
  the encoded event in a bounded queue and returns; a background thread
  running a private asyncio event loop publishes it with a JetStream
  acknowledgement, retrying with backoff and deduplicated by ``Nats-Msg-Id``
  (``<training_id>:<seq>``), and keeps the bucket up to date.
* :class:`NatsSource` (``_source``) -- reading: :meth:`~NatsSource.recover`
  (every run's last known state), :meth:`~NatsSource.load_run`,
  :meth:`~NatsSource.replay`, and :class:`StreamReader` (``_reader``: replay
  from any point, then follow live) feeding the reference reducer.
* :class:`NatsFeed` (``_feed``) -- the hub's bridge: NATS events into a hub's
  bus, as a producer's would be.
* :class:`NatsOptions` (``_connection``) -- server URLs, token,
  user/password, creds file and TLS, passed through to nats-py; URLs are
  logged only redacted (:func:`redact`), secrets never. The errors
  (:class:`NatsError` and its kinds) live in ``_errors``.

The private modules are an implementation detail: import every name from
``pulse_transports.nats``. Must not be imported by :mod:`pulse_core`.
nats-py is an optional dependency (``pip install 'pulse-v2[nats]'``); this
package is imported only when the ``nats`` transport or command is used.
"""

from __future__ import annotations

try:
    import nats  # noqa: F401 - fail here, with the install command, if nats-py is missing
except ImportError as _missing:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the nats transport needs nats-py: pip install 'pulse-v2[nats]'"
    ) from _missing

from pulse_transports.nats._connection import (
    DEFAULT_URL,
    ENV_CREDS,
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_URL,
    ENV_USER,
    RETRY_MAX,
    NatsOptions,
    connect,
    explain,
    redact,
    redact_url,
)
from pulse_transports.nats._errors import (
    NatsAuthError,
    NatsError,
    NatsRunNotFound,
    NatsUnavailable,
)
from pulse_transports.nats._feed import KEEP_ENDED, NatsFeed
from pulse_transports.nats._reader import READER_HEARTBEAT, Delivery, Policy, StreamReader, fold_run
from pulse_transports.nats._sink import ACK_TIMEOUT, BUFFER_BYTES, KV_INTERVAL, QUEUE, NatsSink
from pulse_transports.nats._source import NatsRunRecord, NatsSource
from pulse_transports.nats._store import (
    BUCKET,
    DOC_FORMAT,
    DUPLICATE_WINDOW,
    KV_MAX_BYTES,
    MAX_AGE,
    MAX_BYTES,
    MAX_MSG_SIZE,
    MAX_MSGS_PER_SUBJECT,
    STREAM,
    StoreConfig,
    StoredRun,
    ensure_store,
    history_document,
    history_key,
    read_document,
    read_documents,
    state_document,
    store_states,
)
from pulse_transports.nats._subject import (
    KEPT_KINDS,
    ROOT,
    SAMPLED_KINDS,
    kind_of,
    msg_id,
    run_filter,
    run_token,
    subject_of,
    training_id_of,
)

__all__ = [
    "ACK_TIMEOUT",
    "BUCKET",
    "BUFFER_BYTES",
    "DEFAULT_URL",
    "DOC_FORMAT",
    "DUPLICATE_WINDOW",
    "ENV_CREDS",
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_URL",
    "ENV_USER",
    "KEEP_ENDED",
    "KEPT_KINDS",
    "KV_INTERVAL",
    "KV_MAX_BYTES",
    "MAX_AGE",
    "MAX_BYTES",
    "MAX_MSGS_PER_SUBJECT",
    "MAX_MSG_SIZE",
    "QUEUE",
    "READER_HEARTBEAT",
    "RETRY_MAX",
    "ROOT",
    "SAMPLED_KINDS",
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
    "Policy",
    "StoreConfig",
    "StoredRun",
    "StreamReader",
    "connect",
    "ensure_store",
    "explain",
    "fold_run",
    "history_document",
    "history_key",
    "kind_of",
    "msg_id",
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
