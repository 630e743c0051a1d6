"""Configuration: where PULSE keeps its files and which transports it uses.

This module owns reading configuration. Precedence, highest first:

1. explicit arguments (``--home``, ``TrainingRun(sinks=...)``);
2. environment variables (``PULSE_HOME``, ``PULSE_TRANSPORTS``, ...);
3. the ``[pulse]`` table of a ``pulse.toml``, or the ``[tool.pulse]`` table of
   a ``pyproject.toml``, in the current directory or the nearest parent;
4. defaults.

Every key is listed in :data:`KEYS` with its environment variable and
default, so the documentation is generated from this table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import attrs

from pulse_core.errors import ConfigError


@attrs.frozen
class Key:
    """One configuration key."""

    name: str
    env: str | None
    default: Any
    kind: type
    help: str


KEYS: Final[tuple[Key, ...]] = (
    Key("home", "PULSE_HOME", ".pulse", str, "Folder for logs, the v1 snapshot, the hub socket."),
    Key(
        "transports",
        "PULSE_TRANSPORTS",
        ("file", "v1", "socket"),
        tuple,
        "Sinks a TrainingRun writes to, by entry-point name (comma-separated in the env var).",
    ),
    Key("heartbeat_interval", "PULSE_HEARTBEAT_INTERVAL", 5.0, float, "Seconds between beats."),
    Key("stale_after", "PULSE_STALE_AFTER", 15.0, float, "Silence (s) after which a run is stale."),
    Key("lost_after", "PULSE_LOST_AFTER", 600.0, float, "Silence (s) after which a run is lost."),
    Key("strict", "PULSE_STRICT", False, bool, "Raise on illegal lifecycle requests, not warn."),
    Key(
        "close_timeout",
        "PULSE_CLOSE_TIMEOUT",
        5.0,
        float,
        "Seconds close() waits for a run's writer to flush; then it warns and returns.",
    ),
)
_BY_NAME: Final = {key.name: key for key in KEYS}


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
        return self.home / "logs" / "training"


def find_file_table(start: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """Find the nearest ``pulse.toml`` or ``pyproject.toml`` with a pulse table."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / "pulse.toml"
        if candidate.is_file():
            data = _read_toml(candidate)
            table = data.get("pulse", data)
            if not isinstance(table, dict):
                raise ConfigError(f"'pulse' in {candidate} must be a table")
            return dict(table), candidate
        candidate = folder / "pyproject.toml"
        if candidate.is_file():
            data = _read_toml(candidate)
            table = data.get("tool", {}).get("pulse")
            if isinstance(table, dict):
                return dict(table), candidate
    return {}, None


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


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib  # here: most commands run where no configuration file exists

    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read configuration {path}: {exc}") from None


def _coerce(key: Key, value: Any, where: str) -> Any:
    try:
        if key.kind is tuple:
            if isinstance(value, str):
                return tuple(part.strip() for part in value.split(",") if part.strip())
            if isinstance(value, list | tuple) and all(isinstance(v, str) and v for v in value):
                return tuple(value)
            raise TypeError("expected a list of transport names")
        if key.kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise TypeError("expected true or false")
        if key.kind is float:
            if isinstance(value, bool):
                raise TypeError("expected a number")
            number = float(value)
            if number == float("inf"):
                raise ValueError("expected a finite number")
            if not number > 0:
                raise ValueError("expected a positive number")
            return number
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad value {value!r:.60} for {key.name!r} in {where}: {exc}") from None


#: Per-transport option tables as a JSON object, merged over the file's tables
#: (e.g. ``{"file": {"interval": 0.25}}``; supervisors set it for their children).
ENV_TRANSPORT_OPTIONS: Final = "PULSE_TRANSPORT_OPTIONS"


def _env_tables(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    text = environ.get(ENV_TRANSPORT_OPTIONS, "").strip()
    if not text:
        return {}
    import json  # here: the variable is rarely set

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"${ENV_TRANSPORT_OPTIONS} is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ConfigError(
            f"${ENV_TRANSPORT_OPTIONS} must be a JSON object of option tables, "
            f'e.g. {{"file": {{"interval": 0.25}}}}; got {text!r:.80}'
        )
    return {str(name): dict(table) for name, table in value.items()}


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
    environ = os.environ if env is None else env
    table, source = find_file_table(start)
    where_file = str(source) if source else "configuration"
    values: dict[str, Any] = {}
    options: dict[str, Mapping[str, Any]] = {}
    for name, value in table.items():
        if name in _BY_NAME:
            values[name] = _coerce(_BY_NAME[name], value, where_file)
        elif isinstance(value, dict):
            options[name] = dict(value)
        else:
            valid = ", ".join(sorted(_BY_NAME))
            raise ConfigError(f"unknown key {name!r} in {where_file}; valid keys: {valid}")
    for name, table in _env_tables(environ).items():
        options[name] = {**options.get(name, {}), **table}
    for key in KEYS:
        if key.env and environ.get(key.env) not in (None, ""):
            values[key.name] = _coerce(key, environ[key.env], f"${key.env}")
    if home is not None:
        values["home"] = str(home)
    resolved = {key.name: values.get(key.name, key.default) for key in KEYS}
    home_path = Path(resolved["home"]).expanduser()
    from_file = home is None and "home" in table and not environ.get("PULSE_HOME")
    if source is not None and from_file and not home_path.is_absolute():
        home_path = source.parent / home_path  # relative to the file that says it
    return Config(
        home=home_path,
        transports=tuple(resolved["transports"]),
        heartbeat_interval=resolved["heartbeat_interval"],
        stale_after=resolved["stale_after"],
        lost_after=resolved["lost_after"],
        strict=resolved["strict"],
        close_timeout=resolved["close_timeout"],
        transport_options=options,
        source=source,
    )
