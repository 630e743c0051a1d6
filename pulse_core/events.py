"""The PULSE v2 events: frozen facts about one training run.

This module owns the event types and the training-id rules. It holds no
serialisation code (that is :mod:`pulse_core.codec`) and must never import
I/O modules (os, time, socket, pathlib, asyncio, structlog).

Every event carries the envelope ``v`` (protocol major version),
``training_id``, ``seq`` (1, 2, 3, ... per training_id, assigned by the
emitter) and ``timestamp`` (UTC, seconds since the Unix epoch, as a float).

Events are hashable: mappings inside them (labels, metrics, details) are
read-only by type (``Mapping``) and left out of the hash, so an event can
key a dict (the web stream's encoding cache) while decoding stays as cheap
as building plain dicts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

import attrs

from pulse_core.errors import InvalidTrainingId

PROTOCOL_VERSION: Final = 2


class Phase(enum.StrEnum):
    """A run's lifecycle phase. The values are the wire strings.

    A member equals (and hashes as) its wire string, so ``Phase.DONE ==
    "done"``. Events carry the status as it came off the wire, a plain
    string; the reducer turns a known one into a ``Phase`` and records an
    unknown one as an ``unknown_status`` anomaly.
    """

    IDLE = "idle"
    PREPARING = "preparing"
    RUNNING = "running"
    COOLING_DOWN = "cooling_down"
    DONE = "done"
    ERROR = "error"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for done, error and cancelled."""
        return self in TERMINAL_STATUSES

    def __repr__(self) -> str:
        # Shown as the wire string (``'done'``): a state or projection printed
        # in a log, a doctest or the docs reads as it did with plain strings.
        return repr(self.value)


Status: TypeAlias = Phase
#: The wire strings of every phase, in lifecycle order.
STATUSES: Final[tuple[str, ...]] = tuple(phase.value for phase in Phase)
#: The one place terminality is said: a run ends done, error or cancelled.
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({Phase.DONE, Phase.ERROR, Phase.CANCELLED})
#: Wire string -> phase, for known statuses only.
PHASES: Final[Mapping[str, Phase]] = {phase.value: phase for phase in Phase}


def is_terminal(status: str) -> bool:
    """Tell whether *status* (a phase or a wire string) is terminal."""
    return status in TERMINAL_STATUSES


#: Well-known error codes. Any UPPER_SNAKE code is accepted on the wire;
#: these are the ones PULSE itself emits and UIs may special-case.
WELL_KNOWN_ERROR_CODES: Final[Mapping[str, str]] = {
    "DATASET_NOT_FOUND": "a dataset or input file does not exist",
    "CUDA_OOM": "the accelerator ran out of memory",
    "OUT_OF_MEMORY": "the host ran out of memory",
    "INVALID_CONFIG": "the training configuration is invalid",
    "PROCESS_CRASHED": "the training process died without reporting (signal, abort)",
    "PROCESS_EXITED_WITHOUT_RESULT": "the process exited without reporting done",
    "PROCESS_LOST": "the writer is gone and the run never ended",
    "LAUNCH_FAILED": "the training command could not be started",
    "CANCELLED_BY_SIGNAL": "the run was stopped by SIGTERM/SIGINT",
    "UNHANDLED_EXCEPTION": "an exception no other code matches",
    "SINK_FAILURE": "a reporting sink failed (PULSE internal)",
}
ERROR_CODE_RE: Final = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")

#: training_id: starts alphanumeric, then letters, digits, ``.``, ``_``, ``-``;
#: at most 128 characters. It becomes a file name, so nothing else is allowed.
TRAINING_ID_MAX_LEN: Final = 128
_TRAINING_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_valid_ids: set[str] = set()  # ids already checked: logs repeat one id
#: Most ids remembered as checked; then they are forgotten at once (a hub
#: hears thousands of runs: what it keeps of them must not grow with them).
_VALID_IDS_KEPT: Final = 256


def validate_training_id(value: object) -> str:
    """Check that *value* is a safe training id and return it.

    Args:
        value: the candidate id.

    Returns:
        The id, unchanged.

    Raises:
        InvalidTrainingId: if it is not a string of 1-128 characters from
            ``[A-Za-z0-9._-]`` starting with a letter or digit.
    """
    if value.__class__ is str and value in _valid_ids:
        return value
    if not isinstance(value, str):
        raise InvalidTrainingId(f"training_id must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidTrainingId("training_id must not be empty")
    if len(value) > TRAINING_ID_MAX_LEN:
        raise InvalidTrainingId(
            f"training_id is {len(value)} characters long; the limit is {TRAINING_ID_MAX_LEN}"
        )
    if _TRAINING_ID_RE.fullmatch(value) is None:
        shown = value.encode("unicode_escape").decode("ascii")[:60]
        raise InvalidTrainingId(
            f"training_id {shown!r} has characters outside [A-Za-z0-9._-] "
            "or does not start with a letter or digit"
        )
    if len(_valid_ids) >= _VALID_IDS_KEPT:
        _valid_ids.clear()
    _valid_ids.add(value)
    return value


def forget_checked_ids() -> None:
    """Forget the ids already checked (a hub whose runs have expired keeps none of them)."""
    _valid_ids.clear()


def is_error_code(value: str) -> bool:
    """Tell whether *value* is an UPPER_SNAKE error code."""
    return ERROR_CODE_RE.fullmatch(value) is not None


def _version_last(cls: type, fields: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    """Move the envelope's ``v`` after the event's own fields: the wire order."""
    return [f for f in fields if f.name != "v"] + [f for f in fields if f.name == "v"]


@attrs.frozen(slots=True)
class _Envelope:
    """The fields every event carries (``v`` keyword-only, last on the wire)."""

    training_id: str
    seq: int
    timestamp: float
    v: int = attrs.field(default=PROTOCOL_VERSION, kw_only=True)


@attrs.frozen(slots=True, field_transformer=_version_last)
class RunMeta(_Envelope):
    """What the run is and where it comes from; normally the first event."""

    name: str | None = None
    flow_id: str | None = None
    flow_run_id: str | None = None
    flow_step_id: str | None = None
    attempt: int | None = None
    total_epochs: int | None = None
    total_steps: int | None = None
    pid: int | None = None
    host: str | None = None
    world_size: int | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict, hash=False)


@attrs.frozen(slots=True, field_transformer=_version_last)
class StatusChanged(_Envelope):
    """The run moved to a lifecycle state (or restated it with a new message)."""

    status: str
    message: str = ""


@attrs.frozen(slots=True, field_transformer=_version_last)
class Progress(_Envelope):
    """Where training is; every field optional, the latest value wins."""

    epoch: int | None = None
    total_epochs: int | None = None
    step: int | None = None
    total_steps: int | None = None


@attrs.frozen(slots=True, field_transformer=_version_last)
class Metrics(_Envelope):
    """Measured values; every one optional. ``extra`` holds named numbers.

    ``min`` and ``max`` (optional, protocol 2.1) are the lowest and highest
    value of each metric the emitter saw -- for the four named metrics every
    call, not only the forwarded samples; ``names_dropped`` (optional) counts the distinct
    extra metric names the emitter left out past its cap (64).
    """

    loss: float | None = None
    time_per_epoch: float | None = None
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    extra: Mapping[str, float] = attrs.field(factory=dict, hash=False)
    min: Mapping[str, float] = attrs.field(factory=dict, hash=False)
    max: Mapping[str, float] = attrs.field(factory=dict, hash=False)
    names_dropped: int | None = None


@attrs.frozen(slots=True, field_transformer=_version_last)
class ErrorReported(_Envelope):
    """An error, as its own event; the progress at that moment rides along.

    An error event does not by itself end the run: the terminal
    ``status: error`` event does. The emitter sends both for a fatal error.
    """

    error_code: str
    message: str
    is_retryable: bool = False
    details: Mapping[str, Any] | None = attrs.field(default=None, hash=False)
    epoch: int | None = None
    step: int | None = None


@attrs.frozen(slots=True, field_transformer=_version_last)
class Heartbeat(_Envelope):
    """The writer is alive; carries nothing else."""


@attrs.frozen(slots=True, field_transformer=_version_last)
class Dropped(_Envelope):
    """A sink had to drop events (buffer full while failing); says how many."""

    count: int
    reason: str = ""


@attrs.frozen(slots=True, field_transformer=_version_last)
class UnknownEvent(_Envelope):
    """An event of a type this version does not know; readers skip it."""

    type: str
    data: Mapping[str, Any] = attrs.field(factory=dict, hash=False)


@attrs.frozen(slots=True, field_transformer=_version_last)
class StateCheckpoint(_Envelope):
    """The run's folded state up to this line of its log (wire tag ``state_checkpoint``).

    Not a run event: a file writer appends one every so often and at every
    compaction, so a reader can start from the last one and fold only the
    lines after it. Folding it changes nothing (the reducer skips it).

    Attributes:
        seq: the highest seq folded into ``state``.
        format: the state codec's ``STATE_FORMAT``; a reader of another
            format folds the whole log instead.
        state: the folded state (``pulse_core.statecodec.state_to_obj``).
        lines: how many lines of the log lie before this one.
    """

    format: str
    state: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    lines: int = 0


Event: TypeAlias = (
    RunMeta
    | StatusChanged
    | Progress
    | Metrics
    | ErrorReported
    | Heartbeat
    | Dropped
    | StateCheckpoint
    | UnknownEvent
)
KNOWN_EVENT_TYPES: Final = (
    RunMeta,
    StatusChanged,
    Progress,
    Metrics,
    ErrorReported,
    Heartbeat,
    Dropped,
)
