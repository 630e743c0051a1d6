"""The ``pulse`` command line.

This package owns the commands people type. It is the only place that
configures logging (libraries never do). Each command lives in its own
module, registers itself on :data:`main` and is imported only when used.

:data:`main` (the click group) is loaded on first use: the ``pulse`` script
calls :func:`run`, which answers the common ``pulse ls`` and ``pulse show ID``
without importing click (:mod:`pulse_transports.cli._fast`) and hands
everything else to :data:`main`.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # not typing's: importing typing costs the fast ls a tenth
if TYPE_CHECKING:
    from typing import Any

    from pulse_transports.cli._common import main

#: Every command, by name; its module is ``pulse_transports.cli.<name>``.
COMMANDS = (
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


def __getattr__(name: str) -> Any:
    if name != "main":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from pulse_transports.cli._common import LazyGroup
    from pulse_transports.cli._common import main as group

    LazyGroup.lazy = {command: f"pulse_transports.cli.{command}" for command in COMMANDS}
    globals()["main"] = group
    return group


def run(prog_name: str | None = None) -> None:
    """The ``pulse`` script: the fast ``ls``/``show`` when it applies, else the click group."""
    from pulse_transports.cli._fast import fast

    code = fast(sys.argv[1:])
    if code is not None:
        sys.exit(code)
    group: Any = __getattr__("main")
    group(prog_name=prog_name)


__all__ = ["COMMANDS", "main", "run"]
