"""Shared pieces of the CLI: the group, ``--home``, logging set-up, errors."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from pulse_core.errors import PulseError
from pulse_transports.cli._logsetup import configure_logging
from pulse_transports.config import Config, load_config

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes shared by every command (documented in the CLI reference).
EXIT_OK = 0
EXIT_FAILED = 1  # the thing asked for ran and failed (a run that errored)
EXIT_USAGE = 2  # bad arguments (click's own code)
EXIT_NOT_FOUND = 3  # unknown training id or missing home
EXIT_UNREADABLE = 4  # a file that is not a readable PULSE log


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
