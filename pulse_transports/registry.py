"""Transports and sources by name, through the ``pulse.transports`` and ``pulse.sources`` groups.

This module owns turning a transport name from configuration into a sink,
and a source name (``pulse ls --source nats``) into a
:class:`~pulse_core.ports.RunSource`. Built-in adapters are registered in our
own pyproject.toml exactly as a third-party plugin registers its own, and are
loaded lazily, by name.

A source entry point names a class with ``from_config(config, **given)``
returning a :class:`~pulse_core.ports.RunSource` (*given*: command-line
values that win over the configuration's).

A transport entry point names a class (or callable) with the signature
``factory(*, home: Path, **options) -> Sink``. It may declare ``OPTIONS``, a
mapping of option name to type, so bad options fail at start-up with a
message naming the key and the valid choices.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pulse_core.errors import ConfigError
from pulse_core.ports import RunSource, Sink
from pulse_transports.config import check_table

if TYPE_CHECKING:
    from pulse_transports.config import Config

GROUP: Final = "pulse.transports"
SOURCES: Final = "pulse.sources"
#: The built-in sources, also known by name when the installed metadata
#: predates their entry points (an editable install not reinstalled).
BUILTIN_SOURCES: Final = {
    "file": "pulse_transports.filesource:FileSource",
    "nats": "pulse_transports.nats:NatsSource",
}


def available() -> dict[str, str]:
    """Map every installed transport name to its entry-point value."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def load_factory(name: str) -> Callable[..., Sink]:
    """Load the factory of transport *name*.

    Raises:
        ConfigError: if no such transport is installed (listing the valid ones).
    """
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        valid = ", ".join(sorted(available())) or "(none installed)"
        raise ConfigError(f"unknown transport {name!r}; valid choices: {valid}")
    try:
        factory: Callable[..., Sink] = found[0].load()
    except Exception as exc:  # a plugin may fail to import in any way
        raise ConfigError(f"transport {name!r} failed to load: {exc}") from exc
    return factory


def check_options(name: str, factory: Callable[..., Sink], options: Mapping[str, Any]) -> None:
    """Fail with a clear message if *options* has keys or types *factory* rejects.

    Raises:
        ConfigError: naming the transport, the key and the valid options.
    """
    declared: Mapping[str, type] | None = getattr(factory, "OPTIONS", None)
    if declared is None:
        return
    check_table(options, declared, what=f"transport {name!r}")


def check_tables(options: Mapping[str, Mapping[str, Any]], where: str = "configuration") -> None:
    """Fail if an option table names a transport that is not installed.

    Raises:
        ConfigError: naming the table and the installed transports.
    """
    installed = available()
    for name in options:
        if name not in installed:
            valid = ", ".join(sorted(installed)) or "(none installed)"
            raise ConfigError(
                f"option table {name!r} in {where} names no installed transport; "
                f"valid choices: {valid}"
            )


def make_sinks(
    names: tuple[str, ...], home: Path, options: Mapping[str, Mapping[str, Any]]
) -> list[Sink]:
    """Build one sink per transport name, with its options from configuration.

    Raises:
        ConfigError: an unknown transport, an unknown or mistyped option, or
            an option value the transport rejects (naming transport and key).
    """
    check_tables(options)
    sinks = []
    for name in names:
        factory = load_factory(name)
        opts = dict(options.get(name, {}))
        check_options(name, factory, opts)
        try:
            sinks.append(factory(home=home, **opts))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad options for transport {name!r} {opts!r:.120}: {exc}") from None
    return sinks


def default_sinks(env: Mapping[str, str] | None = None) -> list[Sink]:
    """The sinks configuration asks for (the ``pulse.config`` entry point).

    Args:
        env: the environment to read ``PULSE_*`` settings from (default
            ``os.environ``).
    """
    from pulse_transports.config import load_config

    config = load_config(env=env)
    return make_sinks(config.transports, config.home, config.transport_options)


def run_settings(
    env: Mapping[str, str] | None = None, *, with_sinks: bool = True
) -> tuple[dict[str, Any], list[Sink] | None]:
    """Run settings and default sinks from one configuration read.

    The ``pulse.config`` entry point ``run_settings``: a TrainingRun resolves
    what its arguments leave open with one call (``run_defaults`` and
    ``default_sinks`` each read the configuration).
    """
    from pulse_transports.config import load_config

    config = load_config(env=env)
    defaults = {
        "strict": config.strict,
        "heartbeat_interval": config.heartbeat_interval,
        "close_timeout": config.close_timeout,
    }
    if not with_sinks:
        return defaults, None
    return defaults, make_sinks(config.transports, config.home, config.transport_options)


def run_defaults(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Run settings from configuration: ``strict``, ``heartbeat_interval``, ``close_timeout``.

    The ``pulse.config`` entry point ``run_defaults``: a TrainingRun uses these
    where its arguments leave them open.
    """
    from pulse_transports.config import load_config

    config = load_config(env=env)
    return {
        "strict": config.strict,
        "heartbeat_interval": config.heartbeat_interval,
        "close_timeout": config.close_timeout,
    }


def available_sources() -> dict[str, str]:
    """Map every installed source name to its entry-point value (built-ins included)."""
    return {**BUILTIN_SOURCES, **{ep.name: ep.value for ep in entry_points(group=SOURCES)}}


def load_source(name: str) -> Any:
    """Load the class of source *name* from the ``pulse.sources`` group.

    Raises:
        ConfigError: if no such source is installed (listing the valid ones).
    """
    found = [ep for ep in entry_points(group=SOURCES) if ep.name == name]
    try:
        if found:
            return found[0].load()
        if name in BUILTIN_SOURCES:
            module, _, attr = BUILTIN_SOURCES[name].partition(":")
            return getattr(importlib.import_module(module), attr)
    except Exception as exc:  # a plugin may fail to import in any way
        raise ConfigError(f"source {name!r} failed to load: {exc}") from exc
    valid = ", ".join(sorted(available_sources()))
    raise ConfigError(f"unknown source {name!r}; valid choices: {valid}")


def make_source(name: str, config: Config, **given: Any) -> RunSource:
    """Build source *name* from configuration, *given* values winning.

    Raises:
        ConfigError: an unknown source, or one that does not read runs.
    """
    factory = load_source(name)
    build = getattr(factory, "from_config", None)
    source = build(config, **given) if build is not None else None
    if not isinstance(source, RunSource):
        raise ConfigError(f"source {name!r} does not read runs (it is not a RunSource)")
    return source
