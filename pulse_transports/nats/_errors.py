"""The NATS transport's errors: what callers catch when NATS cannot be used.

This module owns the :class:`NatsError` family; the other modules of
:mod:`pulse_transports.nats` turn nats-py's failures into these. Imports no
nats-py. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

from pulse_core.errors import PulseError, RunNotFound


class NatsError(PulseError):
    """NATS could not be used: unreachable, refused, or missing the PULSE stream."""


class NatsAuthError(NatsError):
    """The NATS server refused the credentials (token, user/password, creds)."""


class NatsUnavailable(NatsError):
    """No NATS server answered at the configured URL."""


class NatsRunNotFound(NatsError, RunNotFound):
    """NATS holds nothing of a training id."""
