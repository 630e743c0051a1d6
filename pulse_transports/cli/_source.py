"""Choosing where ``ls``, ``show`` and ``watch`` read runs: ``--source`` and the NATS connection.

This module owns :func:`source_options` (``--source file|nats`` plus the
NATS connection options and ``--home``), :func:`nats_options` (the
connection options alone, for ``pulse nats serve/setup``),
:func:`nats_source` (a :class:`~pulse_transports.nats.NatsSource` from
configuration, the given options winning), :func:`nats_errors` (NATS
failures as one-line exits) and :func:`open_source` (any other source by
its ``pulse.sources`` name).

The connection comes from ``--url``/``--token``/... , then the
``[tool.pulse.nats]`` table, then ``$PULSE_NATS_URL``, ``$PULSE_NATS_TOKEN``,
``$PULSE_NATS_USER``, ``$PULSE_NATS_PASSWORD``, ``$PULSE_NATS_CREDS``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from pulse_transports.cli._common import EXIT_FAILED, EXIT_NOT_FOUND, home_option, resolve_config

if TYPE_CHECKING:
    from pulse_core.ports import RunSource
    from pulse_transports.nats import NatsSource

F = TypeVar("F", bound=Callable[..., Any])

_CONNECTION = ("url", "token", "user", "password", "creds", "tls_ca", "tls_cert", "tls_key")


def nats_options(func: F) -> F:
    """Add the connection options (and ``--home``, for the configuration)."""
    options = [
        click.option(
            "--url",
            default=None,
            metavar="URL",
            help="NATS server URL(s), comma-separated [default: [tool.pulse.nats] url, "
            "$PULSE_NATS_URL, nats://127.0.0.1:4222].",
        ),
        click.option(
            "--token", default=None, help="Authentication token [default: $PULSE_NATS_TOKEN]."
        ),
        click.option("--user", default=None, help="User name [default: $PULSE_NATS_USER]."),
        click.option("--password", default=None, help="Password [default: $PULSE_NATS_PASSWORD]."),
        click.option(
            "--creds",
            type=click.Path(dir_okay=False),
            default=None,
            help="A .creds file (JWT + NKey) [default: $PULSE_NATS_CREDS].",
        ),
        click.option("--tls-ca", type=click.Path(dir_okay=False), default=None, help="CA bundle."),
        click.option(
            "--tls-cert", type=click.Path(dir_okay=False), default=None, help="Client certificate."
        ),
        click.option("--tls-key", type=click.Path(dir_okay=False), default=None, help="Its key."),
        home_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


def nats_module() -> Any:
    """Import the NATS transport, failing with the install command if nats-py is missing."""
    from pulse_transports.cli.ls import fail

    try:
        import pulse_transports.nats as module
    except ImportError as exc:
        fail(f"{exc}", EXIT_FAILED)
    return module


def nats_source(home: Path | None, connection: dict[str, Any]) -> NatsSource:
    """A source from configuration, the given connection options winning."""
    module = nats_module()
    config = resolve_config(home)
    given = {key: connection.get(key) for key in _CONNECTION}
    from pulse_core.errors import ConfigError

    try:
        source: NatsSource = module.NatsSource.from_config(config, **given)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    return source


@contextlib.contextmanager
def nats_errors() -> Iterator[None]:
    """Turn NATS failures into one-line errors: 3 for an unknown run, else 1."""
    from pulse_transports.cli.ls import fail

    module = nats_module()
    try:
        yield
    except module.NatsRunNotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except module.NatsError as exc:
        fail(str(exc), EXIT_FAILED)


def source_options(func: F) -> F:
    """Add ``--source`` and the NATS connection options (with ``--home``)."""
    func = nats_options(func)
    return click.option(
        "--source",
        default="file",
        show_default=True,
        metavar="NAME",
        help="Where runs are read: file (the home's logs), nats, or an installed "
        "pulse.sources plugin. The --url/--token/... options apply to nats.",
    )(func)


def open_source(name: str, home: Path | None, connection: dict[str, Any]) -> RunSource:
    """Any source by its ``pulse.sources`` name, from configuration.

    Exits with a usage error (2) for an unknown name or a name that does not read runs.
    """
    from pulse_core.errors import ConfigError
    from pulse_transports.registry import make_source

    config = resolve_config(home)
    given = {key: value for key, value in connection.items() if value is not None}
    try:
        return make_source(name, config, **given)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def file_only(source: str, connection: dict[str, Any]) -> bool:
    """True for ``--source file``; a NATS connection option given with it is a usage error."""
    if source != "file":
        return False
    given = sorted(f"--{key.replace('_', '-')}" for key, value in connection.items() if value)
    if given:
        raise click.UsageError(f"{', '.join(given)} apply to --source nats, not to the file logs")
    return True
