"""The subject scheme: where each event of a run is published (specs/nats.md).

This module owns the mapping from events to subjects -- ``pulse.v2.<run>.<type>``
for the sampled kinds (progress, metrics, heartbeat, unknown types) and
``pulse.v2.<run>.<type>.<seq>`` for the kept kinds (meta, status, error,
dropped), where ``<run>`` is the training id with every ``.`` written as ``=``
(:func:`run_token`) -- the subject filters readers use, and the
``Nats-Msg-Id`` that deduplicates retried publishes. Pure: no I/O and no
nats-py. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

import re
from typing import Final

from pulse_core.codec import TAG_OF
from pulse_core.errors import PulseError
from pulse_core.events import Event, UnknownEvent, validate_training_id

# -- names and defaults (specs/nats.md says why each default is what it is) ------

#: The first two tokens of every PULSE subject.
ROOT: Final = "pulse.v2"

#: The kinds whose every event is kept (a subject per event).
KEPT_KINDS: Final = frozenset({"meta", "status", "error", "dropped"})
#: The kinds limited per subject (a subject per run and kind).
SAMPLED_KINDS: Final = frozenset({"progress", "metrics", "heartbeat"})

_TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


def _tid_of_subject(subject: str) -> str | None:
    parts = subject.split(".")
    if len(parts) < 4:
        return None
    try:
        return training_id_of(parts[2])
    except PulseError:
        return None
