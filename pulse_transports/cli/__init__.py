"""The ``pulse`` command line.

This package owns the commands people type. It is the only place that
configures structlog (libraries never do). Each command lives in its own
module, registers itself on :data:`main` and is imported only when used.
"""

from __future__ import annotations

from pulse_transports.cli._common import LazyGroup, main

LazyGroup.lazy = {
    name: f"pulse_transports.cli.{name}"
    for name in (
        "bridge",
        "demo",
        "gc",
        "ls",
        "nats",
        "replay",
        "run",
        "serve",
        "show",
        "v1",
        "validate",
        "watch",
    )
}

__all__ = ["main"]
