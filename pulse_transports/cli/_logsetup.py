"""How the ``pulse`` command reports diagnostics: short human lines on stderr.

This module owns :func:`configure_logging`, the one place the CLI sets up
logging (libraries never do); :mod:`pulse_transports.cli._common` and the
fast ``pulse ls`` (:mod:`pulse_transports.cli._fast`) call it. It imports
no click, so the fast path stays light.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

from pulse_core._log import format_line


class _StderrLogger:
    """Writes one line to whatever ``sys.stderr`` is at call time; never raises."""

    def msg(self, message: str) -> None:
        try:
            stream = sys.stderr
            if stream is not None:
                stream.write(message + "\n")
                stream.flush()
        except Exception:  # noqa: BLE001, S110 - a closed or broken stderr: nothing to tell
            pass

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class _StderrLoggerFactory:
    """Loggers that write to whatever ``sys.stderr`` is at call time."""

    def __call__(self, *args: Any) -> _StderrLogger:
        return _StderrLogger()


def _short_event(event: str) -> str:
    for prefix in ("pulse: ", "pulse "):
        if event.startswith(prefix):
            return event[len(prefix) :]
    return event


def _traceback(exc_info: Any) -> str:
    import traceback

    info = sys.exc_info() if exc_info is True else exc_info
    if isinstance(info, BaseException):
        info = (type(info), info, info.__traceback__)
    if isinstance(info, tuple) and info[0] is not None:
        return "\n" + "".join(traceback.format_exception(*info)).rstrip()
    return ""


def _human_line(verbose: bool) -> Callable[[Any, str, MutableMapping[str, Any]], str]:
    """A structlog renderer: ``pulse warning: <event> (key=value ...)``."""

    def render(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        event = _short_event(str(event_dict.pop("event", "")))
        level = "error" if method == "exception" else method
        exc_info = event_dict.pop("exc_info", None)
        event_dict.pop("timestamp", None)
        event_dict.pop("level", None)
        line = f"pulse {level}: {format_line(event, dict(event_dict))}"
        if verbose and exc_info:
            line += _traceback(exc_info)
        return line

    return render


class _HumanHandler(logging.Handler):
    """The standard-logging twin of :func:`_human_line`, on the stderr of the moment."""

    verbose = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"pulse {record.levelname.lower()}: {_short_event(record.getMessage())}"
            if self.verbose and record.exc_info:
                line += _traceback(record.exc_info)
        except Exception:  # noqa: BLE001 - diagnostics never break a command
            return
        _StderrLogger().msg(line)


_HANDLER = _HumanHandler()


def configure_logging(verbose: bool = False) -> None:
    """Send diagnostics to stderr as short human lines; warnings and up unless *verbose*.

    ``pulse warning: <what happened> key=value ...``, one line each; with
    ``-v`` also info/debug lines and the traceback of an internal failure.
    The library logs through the standard ``pulse`` logger unless structlog
    is configured (:mod:`pulse_core._log`), so this configures that logger;
    structlog is configured alike only if something imported it already --
    never imported here, it would cost ``pulse ls`` a third of its time.
    """
    level = logging.DEBUG if verbose else logging.WARNING
    pulse = logging.getLogger("pulse")
    pulse.setLevel(level)
    _HANDLER.verbose = verbose
    if _HANDLER not in pulse.handlers:
        pulse.addHandler(_HANDLER)
    structlog = sys.modules.get("structlog")
    if structlog is not None:
        structlog.configure(
            processors=[_human_line(verbose)],
            wrapper_class=structlog.make_filtering_bound_logger(level),
            logger_factory=_StderrLoggerFactory(),
            cache_logger_on_first_use=False,
        )
