"""Shared pieces of the CLI: the group, ``--home``, logging set-up, errors."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from pulse_core._log import format_line
from pulse_core.errors import PulseError
from pulse_transports.config import Config, load_config

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes shared by every command (documented in the CLI reference).
EXIT_OK = 0
EXIT_FAILED = 1  # the thing asked for ran and failed (a run that errored)
EXIT_USAGE = 2  # bad arguments (click's own code)
EXIT_NOT_FOUND = 3  # unknown training id or missing home
EXIT_UNREADABLE = 4  # a file that is not a readable PULSE log


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


class LazyGroup(click.Group):
    """A click group that imports a command's module only when it is used.

    Keeps ``pulse ls`` from paying for the imports of ``demo`` or ``serve``.
    """

    #: command name -> module that registers it on :data:`main`.
    lazy: ClassVar[dict[str, str]] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self.lazy))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in self.lazy:
            importlib.import_module(self.lazy[cmd_name])
            command = super().get_command(ctx, cmd_name)
        return command


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details to stderr.")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="PULSE home folder for every command (a command's own --home wins).",
)
@click.version_option(package_name="pulse-v2", prog_name="pulse")
@click.pass_context
def main(ctx: click.Context, verbose: bool, home: Path | None) -> None:
    """PULSE v2: watch, inspect and replay ML training runs.

    \b
    Examples:
      pulse demo                 run a small real training, reported live
      pulse ls                   list runs, newest first
      pulse show                 the latest run in detail
      pulse --home /tmp/pulse ls the runs under another home
    """
    configure_logging(verbose)
    ctx.ensure_object(dict)["home"] = home


def _home_from_group(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """A command's ``--home``, else the group's (``pulse --home X ls``)."""
    if value is not None:
        return value
    root = ctx.find_root()
    group_home = root.obj.get("home") if isinstance(root.obj, dict) else None
    return group_home if isinstance(group_home, Path) else None


def home_option(func: F) -> F:
    """Add ``--home`` (default: $PULSE_HOME, then pulse.toml, then ./.pulse)."""
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        callback=_home_from_group,
        help="PULSE home folder (default: $PULSE_HOME, pulse.toml, then ./.pulse).",
    )(func)


#: ``--json`` of the commands whose JSON shape docs/reference/cli.md describes.
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (its shape: docs/reference/cli.md, JSON output).",
)


def home_source(home: Path | None) -> str:
    """Where the home came from, for messages: ``--home``, ``PULSE_HOME`` or the default."""
    if home is not None:
        return "--home"
    if os.environ.get("PULSE_HOME"):
        return "PULSE_HOME"
    return "default"


def id_error(value: str) -> str:
    """Why *value* is not a training id, once escaped (no double escaping of unicode)."""
    shown = repr(value[:80] + ("..." if len(value) > 80 else ""))
    return (
        f"training_id {shown} is not valid: use 1-128 characters from [A-Za-z0-9._-], "
        "starting with a letter or digit"
    )


def resolve_config(home: Path | None) -> Config:
    """Load configuration, turning configuration errors into one-line CLI errors."""
    try:
        return load_config(home=home)
    except PulseError as exc:
        raise click.UsageError(str(exc)) from None
