"""Configuration: where PULSE keeps its files and which transports it uses.

This module owns reading configuration. Precedence, highest first:

1. explicit arguments (``--home``, ``TrainingRun(sinks=...)``);
2. environment variables (``PULSE_HOME``, ``PULSE_TRANSPORTS``, ...);
3. the ``[pulse]`` table of a ``pulse.toml``, or the ``[tool.pulse]`` table of
   a ``pyproject.toml``, in the current directory or the nearest parent;
4. defaults.

Every key is listed in :data:`KEYS` with its environment variable and
default, so the documentation is generated from this table. The rules that
turn inputs into values live in :mod:`pulse_transports.configfile` (no attrs
or pathlib: the fast ``pulse ls`` uses them too); this module wraps them in
:class:`Config` and owns the option-table checks of the transports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from pulse_core.errors import ConfigError
from pulse_core.liveness import Thresholds
from pulse_transports._logfile import log_dir
from pulse_transports.configfile import (
    ENV_TRANSPORT_OPTIONS,
    KEYS,
    ConfigProblem,
    Key,
    find_file_table,
    resolve,
)


@attrs.frozen
class Config:
    """Resolved configuration."""

    home: Path
    transports: tuple[str, ...]
    heartbeat_interval: float
    stale_after: float
    lost_after: float
    strict: bool
    close_timeout: float
    #: per-transport option tables, e.g. ``{"file": {"max_bytes": 1048576}}``.
    transport_options: Mapping[str, Mapping[str, Any]]
    source: Path | None

    @property
    def log_dir(self) -> Path:
        """``<home>/logs/training``: one ``<training_id>.jsonl`` per run."""
        return log_dir(self.home)

    @property
    def thresholds(self) -> Thresholds:
        """``stale_after`` and ``lost_after``, to pass on as keyword arguments."""
        return {"stale_after": self.stale_after, "lost_after": self.lost_after}


def is_kind(value: Any, kind: type) -> bool:
    """The one typing rule of option tables: an int is a float, a bool is only a bool."""
    if isinstance(value, bool) and kind is not bool:
        return False
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def check_table(
    table: Mapping[str, Any],
    kinds: Mapping[str, type],
    *,
    what: str,
    ignore_unknown: bool = False,
) -> dict[str, Any]:
    """The one option checker: every key known, every value of its kind.

    *what* names the table in messages (``transport 'socket'``,
    ``[socket.hub]``). With *ignore_unknown*, keys not in *kinds* are left
    out instead of refused; a None value counts as absent.

    Returns:
        The known keys with their values.

    Raises:
        ConfigError: naming the key, the table and the valid keys or the kind.
    """
    checked: dict[str, Any] = {}
    for key, value in table.items():
        kind = kinds.get(key)
        if kind is None:
            if ignore_unknown:
                continue
            valid = ", ".join(sorted(kinds)) or "(none)"
            raise ConfigError(f"unknown option {key!r} for {what}; valid options: {valid}")
        if value is None and ignore_unknown:
            continue
        if not is_kind(value, kind):
            raise ConfigError(
                f"option {key!r} of {what} must be {kind.__name__}, got {value!r:.60}"
            )
        checked[key] = value
    return checked


def check_limits(what: str, limits: Mapping[str, tuple[float, float | None]]) -> None:
    """The one limit checker: each option's value is at least its least (None: above 0).

    *limits* maps an option's name to ``(value, least)``; *what* names the
    table in messages (``transport 'nats'``).

    Raises:
        ConfigError: naming the first option out of bounds and its limit.
    """
    for key, (value, least) in limits.items():
        if least is None and not value > 0:
            raise ConfigError(f"option {key!r} of {what} must be positive, got {value!r}")
        if least is not None and not value >= least:
            raise ConfigError(f"option {key!r} of {what} must be at least {least:g}, got {value!r}")


def load_config(
    home: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    start: Path | None = None,
) -> Config:
    """Resolve the configuration.

    Args:
        home: an explicit home folder (wins over everything).
        env: the environment (``os.environ`` by default).
        start: where to start looking for a configuration file.

    Raises:
        ConfigError: naming the key, the place and the valid choices.
    """
    try:
        values = resolve(
            None if home is None else str(home), env, None if start is None else str(start)
        )
    except ConfigProblem as exc:
        raise ConfigError(str(exc)) from None
    source = values["source"]
    return Config(
        home=Path(values["home"]),
        transports=tuple(values["transports"]),
        heartbeat_interval=values["heartbeat_interval"],
        stale_after=values["stale_after"],
        lost_after=values["lost_after"],
        strict=values["strict"],
        close_timeout=values["close_timeout"],
        transport_options=values["transport_options"],
        source=None if source is None else Path(source),
    )


__all__ = [
    "ENV_TRANSPORT_OPTIONS",
    "KEYS",
    "Config",
    "Key",
    "check_limits",
    "check_table",
    "find_file_table",
    "is_kind",
    "load_config",
]
