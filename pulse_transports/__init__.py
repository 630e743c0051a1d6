"""PULSE v2 adapters: file log, v1 snapshot, configuration, CLI.

Adapters depend on :mod:`pulse_core`; the core never imports this package.
"""

from __future__ import annotations

__all__: list[str] = []
