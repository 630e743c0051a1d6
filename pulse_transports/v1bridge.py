"""The v1 -> v2 bridge moved to :mod:`pulse_transports.v1.bridge`.

This module only keeps the ``pulse.sources`` entry point that installs made
before the move name (``pulse_transports.v1bridge:V1FileSource``) loading.
"""

from __future__ import annotations

from pulse_transports.v1.bridge import V1FileSource

__all__ = ["V1FileSource"]
