"""Configuration values from arguments, environment, file and defaults, without attrs.

This module owns the rules of :mod:`pulse_transports.config` that turn
inputs into values: :data:`KEYS`, finding the nearest ``pulse.toml`` or
``pyproject.toml`` with a pulse table (:func:`find_file_table`), reading it,
coercing each value, and :func:`resolve`, which returns every key's value,
the per-transport option tables and the file used. ``load_config`` wraps its
answer in a :class:`~pulse_transports.config.Config`; the fast ``pulse ls``
and ``pulse show`` (:mod:`pulse_transports.cli._fast`) use it directly, so
both follow one rule set.

Paths are plain strings normalised as :class:`pathlib.PurePosixPath` would
print them (:func:`path_str`). Must import only the standard library, and of
it nothing heavier than ``os`` at import time: ``tomllib`` is imported when a
file is read, ``json`` when ``$PULSE_TRANSPORT_OPTIONS`` is set.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False  # not typing's: importing typing costs the fast ls a tenth
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final


class ConfigProblem(ValueError):
    """A configuration value or file that cannot be used (``ConfigError`` in the API)."""


class Key:
    """One configuration key: its name, environment variable, default, kind and help."""

    __slots__ = ("default", "env", "help", "kind", "name")

    def __init__(self, name: str, env: str | None, default: Any, kind: type, help: str) -> None:
        self.name = name
        self.env = env
        self.default = default
        self.kind = kind
        self.help = help

    def __repr__(self) -> str:
        return f"Key({self.name!r}, {self.env!r}, {self.default!r})"


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

#: Per-transport option tables as a JSON object, merged over the file's tables
#: (e.g. ``{"file": {"interval": 0.25}}``; supervisors set it for their children).
ENV_TRANSPORT_OPTIONS: Final = "PULSE_TRANSPORT_OPTIONS"


def path_str(text: str) -> str:
    """``str(pathlib.PurePosixPath(text))`` without importing pathlib."""
    root = "//" if text[:2] == "//" and text[:3] != "///" else "/" if text[:1] == "/" else ""
    parts = [part for part in text.split("/") if part and part != "."]
    return root + "/".join(parts) if root or parts else "."


def expand_user(text: str) -> str:
    """``str(pathlib.Path(text).expanduser())``, its error included.

    Raises:
        RuntimeError: as pathlib does, when ``~user`` names no known home.
    """
    path = path_str(text)
    if path[:1] != "~":
        return path
    first, _, rest = path.partition("/")
    home = os.path.expanduser(first)
    if home[:1] == "~":
        raise RuntimeError("Could not determine home directory.")
    return path_str(os.path.join(home, rest) if rest else home)


def _is_file(path: str) -> bool:
    """``pathlib.Path.is_file``: False for a missing path, other OS errors raised."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP):
            return False
        raise
    except ValueError:
        return False
    return mode & 0o170000 == 0o100000


def find_file_table(start: str | None = None) -> tuple[dict[str, Any], str | None]:
    """Find the nearest ``pulse.toml`` or ``pyproject.toml`` with a pulse table.

    Returns:
        The table and the file's path (``({}, None)`` when there is none).

    Raises:
        ConfigProblem: for an unreadable file or a ``pulse`` key that is not a table.
    """
    folder = os.path.realpath(os.getcwd() if start is None else start)
    while True:
        candidate = os.path.join(folder, "pulse.toml")
        if _is_file(candidate):
            data = _read_toml(candidate)
            table = data.get("pulse", data)
            if not isinstance(table, dict):
                raise ConfigProblem(f"'pulse' in {candidate} must be a table")
            return dict(table), candidate
        candidate = os.path.join(folder, "pyproject.toml")
        if _is_file(candidate):
            data = _read_toml(candidate)
            table = data.get("tool", {}).get("pulse")
            if isinstance(table, dict):
                return dict(table), candidate
        parent = os.path.dirname(folder)
        if parent == folder:
            return {}, None
        folder = parent


def _read_toml(path: str) -> dict[str, Any]:
    import tomllib  # here: most commands run where no configuration file exists

    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigProblem(f"cannot read configuration {path}: {exc}") from None


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
        raise ConfigProblem(f"bad value {value!r:.60} for {key.name!r} in {where}: {exc}") from None


def _env_tables(environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    text = environ.get(ENV_TRANSPORT_OPTIONS, "").strip()
    if not text:
        return {}
    import json  # here: the variable is rarely set

    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigProblem(f"${ENV_TRANSPORT_OPTIONS} is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(t, dict) for t in value.values()):
        raise ConfigProblem(
            f"${ENV_TRANSPORT_OPTIONS} must be a JSON object of option tables, "
            f'e.g. {{"file": {{"interval": 0.25}}}}; got {text!r:.80}'
        )
    return {str(name): dict(table) for name, table in value.items()}


def resolve(
    home: str | None = None, env: Mapping[str, str] | None = None, start: str | None = None
) -> dict[str, Any]:
    """Every key's value by the precedence of :mod:`pulse_transports.config`.

    Args:
        home: an explicit home folder (wins over everything).
        env: the environment (``os.environ`` by default).
        start: where to start looking for a configuration file (the cwd by default).

    Returns:
        One entry per key of :data:`KEYS` (``home`` a normalised path string,
        relative to the file that names it), plus ``transport_options`` (per
        transport option tables) and ``source`` (the file's path or None).

    Raises:
        ConfigProblem: naming the key, the place and the valid choices.
        RuntimeError: for a ``~user`` home that names no known user (as pathlib).
    """
    environ = os.environ if env is None else env
    table, source = find_file_table(start)
    where_file = source if source else "configuration"
    values: dict[str, Any] = {}
    options: dict[str, Mapping[str, Any]] = {}
    for name, value in table.items():
        if name in _BY_NAME:
            values[name] = _coerce(_BY_NAME[name], value, where_file)
        elif isinstance(value, dict):
            options[name] = dict(value)
        else:
            valid = ", ".join(sorted(_BY_NAME))
            raise ConfigProblem(f"unknown key {name!r} in {where_file}; valid keys: {valid}")
    for name, options_table in _env_tables(environ).items():
        options[name] = {**options.get(name, {}), **options_table}
    for key in KEYS:
        if key.env and environ.get(key.env) not in (None, ""):
            values[key.name] = _coerce(key, environ[key.env], f"${key.env}")
    if home is not None:
        values["home"] = home
    resolved = {key.name: values.get(key.name, key.default) for key in KEYS}
    home_path = expand_user(resolved["home"])
    from_file = home is None and "home" in table and not environ.get("PULSE_HOME")
    if source is not None and from_file and home_path[:1] != "/":
        home_path = path_str(os.path.join(os.path.dirname(source), home_path))  # its file's
    resolved["home"] = home_path
    resolved["transport_options"] = options
    resolved["source"] = source
    return resolved
