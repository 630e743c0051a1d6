"""Shared pieces of the CLI: the group, ``--home``, logging set-up, errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import structlog

from pulse_core.errors import PulseError
from pulse_transports.config import Config, load_config

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes shared by every command (documented in the CLI reference).
EXIT_OK = 0
EXIT_FAILED = 1  # the thing asked for ran and failed (a run that errored)
EXIT_USAGE = 2  # bad arguments (click's own code)
EXIT_NOT_FOUND = 3  # unknown training id or missing home
EXIT_UNREADABLE = 4  # a file that is not a readable PULSE log


def configure_logging(verbose: bool = False) -> None:
    """Send structlog output to stderr, warnings and up unless *verbose*."""
    level = logging.DEBUG if verbose else logging.WARNING
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.option("-v", "--verbose", is_flag=True, help="Log debug details to stderr.")
@click.version_option(package_name="pulse-v2", prog_name="pulse")
def main(verbose: bool) -> None:
    """PULSE v2: watch, inspect and replay ML training runs.

    \b
    Examples:
      pulse demo                 run a small real training, reported live
      pulse ls                   list runs, newest first
      pulse show RUN_ID          one run in detail
    """
    configure_logging(verbose)


def home_option(func: F) -> F:
    """Add ``--home`` (default: $PULSE_HOME, then pulse.toml, then ./.pulse)."""
    return click.option(
        "--home",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="PULSE home folder (default: $PULSE_HOME, pulse.toml, then ./.pulse).",
    )(func)


def resolve_config(home: Path | None) -> Config:
    """Load configuration, turning configuration errors into one-line CLI errors."""
    try:
        return load_config(home=home)
    except PulseError as exc:
        raise click.UsageError(str(exc)) from None
