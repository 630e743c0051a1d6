"""Where a run's defaults come from: the environment and the ``pulse.config`` entry points.

This module owns reading the run settings the emitter is not given: the
``PULSE_*`` flags and numbers (a bad value is logged and ignored), and the
default sinks and run settings from configuration, through the
``pulse.config`` entry points that ``pulse_transports`` installs -- so
:mod:`pulse_core` never imports :mod:`pulse_transports`, and must not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

from pulse_core._log import get_logger
from pulse_core.emitter._value import _as_text
from pulse_core.errors import PulseError
from pulse_core.ports import Sink

log = get_logger("pulse.emitter")

_INF: Final = float("inf")

#: Environment variables a run reads when the argument is not given (set by
#: ``pulse run`` and the Flow Manager for child processes).
ENV_TRAINING_ID: Final = "PULSE_TRAINING_ID"
ENV_FLOW_ID: Final = "PULSE_FLOW_ID"
ENV_FLOW_RUN_ID: Final = "PULSE_FLOW_RUN_ID"
ENV_FLOW_STEP_ID: Final = "PULSE_FLOW_STEP_ID"
ENV_ATTEMPT: Final = "PULSE_ATTEMPT"
ENV_TOTAL_EPOCHS: Final = "PULSE_TOTAL_EPOCHS"
ENV_HANDLE_SIGNALS: Final = "PULSE_HANDLE_SIGNALS"
ENV_STRICT: Final = "PULSE_STRICT"
ENV_HEARTBEAT_INTERVAL: Final = "PULSE_HEARTBEAT_INTERVAL"
ENV_CLOSE_TIMEOUT: Final = "PULSE_CLOSE_TIMEOUT"
#: Set to 1 by a supervisor that already wrote ``preparing`` and ``running``.
ENV_SUPERVISED: Final = "PULSE_SUPERVISED"
#: The run name a supervisor (pulse run, a Flow Manager) gave; it wins over the script's.
ENV_RUN_NAME: Final = "PULSE_RUN_NAME"


def _as_env(env: Any) -> Mapping[str, str]:
    if env is None:
        return os.environ
    try:
        if isinstance(env, Mapping):
            return {_as_text(k): _as_text(v) for k, v in list(env.items())}
    except Exception:  # noqa: BLE001, S110 - a hostile mapping: the real environment
        pass
    log.warning("pulse: ignoring env that is not a mapping", type=type(env).__name__)
    return os.environ


def _env_flag(environ: Mapping[str, str], name: str) -> bool:
    return environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        log.warning("pulse: ignoring a bad setting", setting=name, value=text[:60])
        return None


def _positive(value: Any, default: float, what: str) -> float:
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = -1.0
    if not number > 0 or number == _INF:
        log.warning("pulse: ignoring a bad setting", setting=what, value=repr(value)[:60])
        return default
    return number


def _entry_point(name: str) -> Any:
    # Imported here: importlib.metadata costs milliseconds that a run started
    # with explicit sinks and settings should not pay.
    from importlib.metadata import entry_points

    for ep in entry_points(group="pulse.config"):
        if ep.name == name:
            return ep.load()
    return None


def _run_defaults(environ: Mapping[str, str]) -> Mapping[str, Any]:
    """Run settings from configuration (``pulse.config`` entry point ``run_defaults``)."""
    factory = _entry_point("run_defaults")
    if factory is None:
        return {}
    defaults: Mapping[str, Any] = factory(environ)
    return defaults


def _default_sinks(environ: Mapping[str, str]) -> list[Sink]:
    """Sinks from configuration, via the ``pulse.config`` entry point."""
    factory = _entry_point("default_sinks")
    if factory is None:
        raise PulseError(
            "no sinks given and no 'pulse.config' entry point installed; "
            "pass sinks=[...] or install pulse-v2 with its transports"
        )
    sinks: list[Sink] = factory(environ)
    return sinks


def resolve(
    environ: Mapping[str, str], *, need_defaults: bool, need_sinks: bool
) -> tuple[Mapping[str, Any], list[Sink] | None]:
    """Read configuration once for a run: its settings and its default sinks.

    Uses the ``pulse.config`` entry point ``run_settings`` (one configuration
    read for both); without it, ``run_defaults`` and ``default_sinks`` (each
    reads the configuration). Returns ``({}, None)`` for what is not needed.
    """
    if not (need_defaults or need_sinks):
        return {}, None
    combined = _entry_point("run_settings")
    if combined is not None:
        defaults, sinks = combined(environ, with_sinks=need_sinks)
        return (defaults if need_defaults else {}), (list(sinks) if need_sinks else None)
    return (
        _run_defaults(environ) if need_defaults else {},
        _default_sinks(environ) if need_sinks else None,
    )
