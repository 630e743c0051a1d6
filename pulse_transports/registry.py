"""Transports by name, through the ``pulse.transports`` entry-point group.

This module owns turning a transport name from configuration into a sink.
Built-in adapters are registered in our own pyproject.toml exactly as a
third-party plugin registers its own, and are loaded lazily, by name.

A transport entry point names a class (or callable) with the signature
``factory(*, home: Path, **options) -> Sink``. It may declare ``OPTIONS``, a
mapping of option name to type, so bad options fail at start-up with a
message naming the key and the valid choices.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Final

from pulse_core.errors import ConfigError
from pulse_core.ports import Sink

GROUP: Final = "pulse.transports"


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
    except Exception as exc:  # noqa: BLE001 - a plugin may fail to import in any way
        raise ConfigError(f"transport {name!r} failed to load: {exc}") from exc
    return factory


def check_options(name: str, factory: Callable[..., Sink], options: Mapping[str, Any]) -> None:
    """Fail with a clear message if *options* has keys or types *factory* rejects."""
    declared: Mapping[str, type] | None = getattr(factory, "OPTIONS", None)
    if declared is None:
        return
    for key, value in options.items():
        if key not in declared:
            valid = ", ".join(sorted(declared)) or "(none)"
            raise ConfigError(
                f"unknown option {key!r} for transport {name!r}; valid options: {valid}"
            )
        kind = declared[key]
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if not ok or isinstance(value, bool) and kind is not bool:
            raise ConfigError(
                f"option {key!r} of transport {name!r} must be {kind.__name__}, got {value!r:.60}"
            )


def make_sinks(
    names: tuple[str, ...], home: Path, options: Mapping[str, Mapping[str, Any]]
) -> list[Sink]:
    """Build one sink per transport name, with its options from configuration."""
    sinks = []
    for name in names:
        factory = load_factory(name)
        opts = dict(options.get(name, {}))
        check_options(name, factory, opts)
        sinks.append(factory(home=home, **opts))
    return sinks


def default_sinks() -> list[Sink]:
    """The sinks configuration asks for (the ``pulse.config`` entry point)."""
    from pulse_transports.config import load_config

    config = load_config()
    return make_sinks(config.transports, config.home, config.transport_options)
