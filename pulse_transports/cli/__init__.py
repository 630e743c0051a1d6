"""The ``pulse`` command line.

This package owns the commands people type. It is the only place that
configures structlog (libraries never do). Each command lives in its own
module and registers itself on :data:`main`.
"""

from __future__ import annotations

from pulse_transports.cli._common import main
from pulse_transports.cli import demo as _demo  # noqa: F401  (registers the command)

__all__ = ["main"]
