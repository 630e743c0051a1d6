"""The library's own diagnostics: short, rate-limited, on stderr, never raising.

This module owns how ``pulse_core`` (and, by a one-line import swap, the
transports) reports warnings. :func:`get_logger` returns a logger with the
structlog-like call shape the library uses (``log.warning("event", key=value)``)
that routes each message:

* to structlog, if the application configured it (``structlog.is_configured()``):
  the application decides the format and destination;
* otherwise to the standard :mod:`logging` logger of the same name
  (``pulse.emitter``, ...): the application's handlers, or Python's
  last-resort handler on **stderr** -- never stdout.

Whatever the route, a message is one short line (the event and ``key=value``
pairs, each value cut to a few hundred characters), never a traceback with
locals (``exception()`` adds only the exception's type and message, plus the
traceback if the logger is enabled for DEBUG, i.e. ``pulse -v``), rate-limited
per message (the first, then at most one per :data:`WINDOW` seconds carrying
how many were suppressed), and a failure to write (a closed or broken stderr,
a hostile value's ``__repr__``) is swallowed: diagnostics never break training.

structlog is imported only when the application has imported it already, so
``import pulse_core`` does not pay for it. Must never import
:mod:`pulse_transports`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Any, Final

#: Seconds between two lines of the same message (the first is always shown).
WINDOW: Final = 10.0
#: Characters kept of one value, and of the whole line.
VALUE_MAX: Final = 200
LINE_MAX: Final = 1000
#: Distinct messages tracked by the rate limiter before it starts afresh.
_KEYS_MAX: Final = 512

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}

_seen: dict[tuple[str, str], list[float]] = {}  # (logger, event) -> [last shown, suppressed]
_seen_lock = threading.Lock()


def _short(value: Any) -> str:
    try:
        text = value if value.__class__ is str else repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not break logging
        text = f"<unprintable {type(value).__name__}>"
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    if len(text) > VALUE_MAX:
        text = text[:VALUE_MAX] + f"…[{len(text) - VALUE_MAX} more]"
    if " " in text or not text:
        text = '"' + text.replace('"', '\\"') + '"'
    return text


def format_line(event: str, fields: dict[str, Any]) -> str:
    """Render *event* and *fields* as one short ``event key=value ...`` line."""
    parts = [_short(event).strip('"')]
    for key, value in fields.items():
        parts.append(f"{key}={_short(value)}")
    line = " ".join(parts)
    if len(line) > LINE_MAX:
        line = line[:LINE_MAX] + "…"
    return line


def _admit(name: str, event: str, clock: float) -> int | None:
    """Return how many earlier copies were suppressed, or None to suppress this one."""
    key = (name, event)
    with _seen_lock:
        entry = _seen.get(key)
        if entry is None:
            if len(_seen) >= _KEYS_MAX:
                _seen.clear()
            _seen[key] = [clock, 0]
            return 0
        if clock - entry[0] >= WINDOW:
            suppressed = int(entry[1])
            entry[0], entry[1] = clock, 0
            return suppressed
        entry[1] += 1
        return None


def reset_rate_limits() -> None:
    """Forget which messages were shown (tests; a new process phase)."""
    with _seen_lock:
        _seen.clear()


def _structlog_configured() -> Any:
    module = sys.modules.get("structlog")
    if module is None:
        return None  # not imported, so not configured: never pay for the import
    try:
        return module if module.is_configured() else None
    except Exception:  # noqa: BLE001
        return None


class PulseLogger:
    """A logger with structlog's call shape; see the module docstring for the route."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, event: str, **fields: Any) -> None:
        """Log a debug detail."""
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        """Log an informational message."""
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        """Log a warning."""
        self._log("warning", event, fields)

    warn = warning

    def error(self, event: str, **fields: Any) -> None:
        """Log an error (of the library, not of training)."""
        self._log("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        """Log a critical failure."""
        self._log("critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log an error with the exception being handled (type and message only)."""
        exc = sys.exc_info()[1]
        if exc is not None and "error" not in fields:
            try:
                fields["error"] = f"{type(exc).__name__}: {exc}"
            except Exception:  # noqa: BLE001 - a hostile __str__
                fields["error"] = type(exc).__name__
        self._log("exception", event, fields)

    def _log(self, level: str, event: Any, fields: dict[str, Any]) -> None:
        try:
            self._route(level, event, fields)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            return

    def _route(self, level: str, event: Any, fields: dict[str, Any]) -> None:
        number = _LEVELS[level]
        structlog = _structlog_configured()
        std = logging.getLogger(self.name)
        if structlog is None:
            if not std.isEnabledFor(number):
                return  # cheap way out before the rate limiter and formatting
        else:
            logger = structlog.get_logger(self.name).bind()
            enabled = getattr(logger, "is_enabled_for", None)
            if enabled is not None and not enabled(number):
                return  # filtered out: must not count against the rate limit
        text = event if event.__class__ is str else _short(event)
        # Floods are warnings and errors; info/debug lines (one per compaction,
        # per connection) are rare by design and are never held back.
        suppressed = _admit(self.name, text, time.monotonic()) if number >= logging.WARNING else 0
        if suppressed is None:
            return
        if suppressed:
            fields["suppressed"] = suppressed
        if structlog is not None:
            safe = {
                key: _short(value) if not _plain(value) else value for key, value in fields.items()
            }
            if level == "exception":
                level = "error"
                check = getattr(logger, "is_enabled_for", None)
                if check is not None and check(logging.DEBUG):
                    safe["exc_info"] = True  # details only when debugging (pulse -v)
            getattr(logger, level)(text, **safe)
            return
        exc_info = level == "exception" and std.isEnabledFor(logging.DEBUG)
        std.log(number, format_line(text, fields), exc_info=exc_info)


def _plain(value: Any) -> bool:
    return value is None or value.__class__ in (str, int, float, bool)


def get_logger(name: str = "pulse") -> PulseLogger:
    """Return the library logger *name* (``pulse.<module>``).

    Args:
        name: a ``pulse.*`` logger name (the standard logging hierarchy).

    Returns:
        A logger whose calls never raise and never write to stdout.
    """
    return PulseLogger(name)
