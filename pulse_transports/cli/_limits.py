"""``pulse serve``'s share of the process: open files, and the event loop's error reports.

Private to :mod:`pulse_transports.cli`: the open-file limit is raised so the
hub can hold its ``--max-connections``, then shared between the web view (at
most a quarter) and the hub socket so a flood of one never starves the other
of descriptors; errors the event loop reports (an ``accept`` out of
descriptors, a connection's failure) become one short rate-limited line,
never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from typing import Any, Final

import attrs

from pulse_core._log import get_logger
from pulse_transports.hub import HubSettings


def raise_open_files(wanted: int) -> None:
    """Lift the soft RLIMIT_NOFILE towards *wanted* (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def share_descriptors(settings: HubSettings, http_wanted: int) -> tuple[HubSettings, int]:
    """Split the open-file limit between the web view and the hub socket.

    Args:
        settings: the hub's settings (its ``max_connections``).
        http_wanted: the HTTP connection cap asked for (0: no web view).

    Returns:
        The settings with ``max_connections`` lowered to what the limit
        leaves the hub socket, and the HTTP cap (at most a quarter of the
        limit; 0 without a web view).
    """
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    files = 1 << 20 if soft == resource.RLIM_INFINITY else soft
    http_cap = 0
    if http_wanted > 0:
        http_cap = min(http_wanted, max(8, files // 4))
    spare = max(16, files - http_cap - _RESERVED_FILES)
    if settings.max_connections > spare:
        settings = attrs.evolve(settings, max_connections=spare)
    return settings, http_cap


#: Descriptors kept for everything but connections (logs, the index, threads).
_RESERVED_FILES: Final = 64


def loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The event loop's error handler: one short rate-limited line, no traceback."""
    exc = context.get("exception")
    get_logger("pulse.serve").warning(
        "pulse serve: event loop error",
        message=context.get("message"),
        error=f"{type(exc).__name__}: {exc}" if exc is not None else None,
    )
