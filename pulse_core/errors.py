"""The exception types PULSE raises; one base class, PulseError.

Owns nothing but exception classes; imports nothing.
"""

from __future__ import annotations


class PulseError(Exception):
    """Base class of every exception PULSE raises on purpose."""


class InvalidTrainingId(PulseError, ValueError):
    """A training_id is empty, too long, or has unsafe characters."""


class DecodeError(PulseError, ValueError):
    """A line or object is not a valid PULSE v2 event.

    The message says what is wrong; ``line`` carries the offending input
    (truncated to 200 characters) when there was one.
    """

    def __init__(self, message: str, line: bytes | str | None = None) -> None:
        super().__init__(message)
        self.line = line[:200] if line is not None else None


class IllegalTransition(PulseError):
    """Training code asked for a lifecycle change the machine does not allow."""

    def __init__(self, source: str, target: str, training_id: str | None = None) -> None:
        where = f" (training_id {training_id})" if training_id else ""
        super().__init__(f"illegal lifecycle transition {source} -> {target}{where}")
        self.source = source
        self.target = target


class ConfigError(PulseError, ValueError):
    """Configuration names an unknown key, transport or value."""


class RunLocked(PulseError):
    """Another writer already holds the log of this training_id."""


class RunExists(PulseError):
    """The training_id names a run that already ended; a new run needs a new id.

    Attributes:
        training_id: the id asked for.
        status: how that run ended (``done``, ``error`` or ``cancelled``).
        path: its log file (delete it to reuse the id), as text.
    """

    def __init__(self, message: str, *, training_id: str, status: str, path: str) -> None:
        super().__init__(message)
        self.training_id = training_id
        self.status = status
        self.path = path


class RunNotFound(PulseError):
    """A source holds nothing of a training id (no log, no stream messages)."""
