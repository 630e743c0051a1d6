"""The PULSE v1 snapshot format: its file name, its statuses, reading it as data.

This module owns :data:`V1_FILE` (``training_status.json``, the one place
the name is spelled), the status words old v1 writers use
(:data:`STATUS_ALIASES`, :func:`map_status`), and
:func:`parse_snapshot`/:func:`read_snapshot`: a v1 snapshot file as a
:class:`V1Snapshot`, lenient about what old writers put in it (status
aliases such as ``completed``, ISO or numeric timestamps) and strict about
what makes it unusable (not JSON, not an object, no status string). Writing
it is :func:`pulse_core.projections.to_v1` plus
:func:`pulse_transports.file.write_json_atomic`.

Must never import :mod:`pulse_transports.cli`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import attrs
import orjson

from pulse_core.errors import PulseError
from pulse_core.events import STATUSES, TERMINAL_STATUSES
from pulse_core.projections import V1_KEYS

#: The v1 snapshot's file name inside a PULSE home.
V1_FILE: Final = "training_status.json"
#: Numeric timestamps above this are milliseconds, not seconds (year 5138).
MILLIS_ABOVE: Final = 1e11

#: Status words old v1 writers use, mapped to the v2 lifecycle state they mean.
#: The seven v2 names map to themselves. Matching ignores case, spaces and dashes.
STATUS_ALIASES: Final[Mapping[str, str]] = {
    **{name: name for name in STATUSES},
    "waiting": "idle",
    "pending": "idle",
    "queued": "idle",
    "starting": "preparing",
    "initializing": "preparing",
    "initialising": "preparing",
    "loading": "preparing",
    "training": "running",
    "train": "running",
    "started": "running",
    "in_progress": "running",
    "saving": "cooling_down",
    "finalizing": "cooling_down",
    "finalising": "cooling_down",
    "completed": "done",
    "complete": "done",
    "finished": "done",
    "success": "done",
    "succeeded": "done",
    "failed": "error",
    "failure": "error",
    "crashed": "error",
    "canceled": "cancelled",
    "stopped": "cancelled",
    "aborted": "cancelled",
    "interrupted": "cancelled",
}


class InvalidSnapshot(PulseError):
    """A v1 snapshot file that cannot be used (torn, not JSON, no status)."""


# -- reading a snapshot ----------------------------------------------------------


@attrs.frozen
class V1Snapshot:
    """One reading of a v1 snapshot file.

    Attributes:
        raw_status: the ``status`` string as written.
        status: the v2 lifecycle state it means (:data:`STATUS_ALIASES`), or
            None for a word PULSE does not know.
        epoch, total_epochs: non-negative integers, or None when absent or unusable.
        loss: a finite number, or None.
        message: the message (``""`` when absent).
        timestamp: Unix seconds, or None when absent or unreadable.
        data: the six v1 keys as they were in the file (absent ones None).
    """

    raw_status: str
    status: str | None
    epoch: int | None
    total_epochs: int | None
    loss: float | None
    message: str
    timestamp: float | None
    data: Mapping[str, Any]

    @property
    def terminal(self) -> bool:
        """True when the status means done, error or cancelled."""
        return self.status in TERMINAL_STATUSES

    def same_content(self, other: V1Snapshot) -> bool:
        """True when both say the same thing, timestamps aside."""
        return (self.status, self.raw_status, self.epoch, self.total_epochs, self.message) == (
            other.status,
            other.raw_status,
            other.epoch,
            other.total_epochs,
            other.message,
        ) and same_number(self.loss, other.loss)


def map_status(value: str) -> str | None:
    """The v2 lifecycle state a v1 status word means, or None if unknown."""
    key = value.strip().lower().replace("-", "_").replace(" ", "_")
    return STATUS_ALIASES.get(key)


def parse_timestamp(value: object) -> float | None:
    """Read a v1 timestamp: ISO 8601 text or a number; None if unusable.

    Numbers are Unix seconds (above :data:`MILLIS_ABOVE`: milliseconds);
    numeric text is read as a number. ISO text without a UTC offset is the
    local time of this machine (what ``datetime.now().isoformat()`` wrote).
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                return None
            try:
                return moment.timestamp()
            except (OverflowError, OSError, ValueError):
                return None
    else:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number / 1000.0 if number > MILLIS_ABOVE else number


def _numeric(value: object) -> object:
    """*value*, numeric text read as a float; None for a bool or nothing."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return value


def _count(value: object) -> int | None:
    """A non-negative integer from an int, an integral float or numeric text."""
    value = _numeric(value)
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _number(value: object) -> float | None:
    """A finite number from an int, a float or numeric text."""
    value = _numeric(value)
    if isinstance(value, int | float):
        number = float(value)
        return number if math.isfinite(number) else None
    return None


def same_number(a: float | None, b: float | None) -> bool:
    """Two optional numbers are the same: both missing, or equal to 12 digits."""
    if a is None or b is None:
        return a is b
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)


def parse_snapshot(data: bytes | str) -> V1Snapshot:
    """Parse the bytes of a v1 snapshot file.

    Raises:
        InvalidSnapshot: if it is not a JSON object with a ``status`` string
            (an empty file, a half-written one, anything else).
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidSnapshot(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidSnapshot(f"not a JSON object but {type(obj).__name__}")
    status = obj.get("status")
    if not isinstance(status, str) or not status.strip():
        raise InvalidSnapshot("no status string")
    message = obj.get("message")
    return V1Snapshot(
        raw_status=status,
        status=map_status(status),
        epoch=_count(obj.get("epoch")),
        total_epochs=_count(obj.get("total_epochs")),
        loss=_number(obj.get("loss")),
        message=message if isinstance(message, str) else ("" if message is None else str(message)),
        timestamp=parse_timestamp(obj.get("timestamp")),
        data={key: obj.get(key) for key in V1_KEYS},
    )


def read_snapshot(path: Path | str) -> V1Snapshot | None:
    """Read and parse a v1 snapshot file; None if it is missing or unusable."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    try:
        return parse_snapshot(data)
    except InvalidSnapshot:
        return None
