"""The hub's settings: what ``pulse serve`` starts a :class:`~pulse_transports.hub.Hub` with.

Private to :mod:`pulse_transports.hub`, which re-exports :class:`HubSettings`
and the defaults. Must not be imported by :mod:`pulse_core`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import attrs

from pulse_core.errors import ConfigError
from pulse_core.liveness import LOST_AFTER, STALE_AFTER
from pulse_transports.inprocess import BUFFER, KEEP_ENDED, LIMIT, MAX_RUNS, RECENT
from pulse_transports.wire import HANDSHAKE_TIMEOUT, LINE_TIMEOUT, MAX_FRAME, is_loopback

#: Default most updates per second per run and stream, per subscriber.
RATE: Final = 10.0
#: Default most open connections (each also needs a file descriptor).
MAX_CONNECTIONS: Final = 10_000
#: Default seconds between two checks of the held runs' writers.
LIVENESS_TICK: Final = 1.0
#: Default most bytes held in unfinished lines over all connections.
MAX_HELD: Final = 32 * 1024 * 1024


@attrs.frozen
class HubSettings:
    """Everything a hub is started with (``pulse serve`` options).

    Attributes:
        home: the PULSE home (run logs are read from ``<home>/logs/training``).
        socket_path: the Unix socket (mode 0600); None for TCP only.
        tcp: ``(host, port)`` to listen on as well; port 0 picks a free one.
        token: the shared secret TCP clients must send (Unix clients are
            trusted by the socket's file mode).
        allow_remote: permit a non-loopback TCP address (needs a token).
        rate: default most updates/s per run and stream for a subscriber;
            a subscriber may ask for fewer, not more.
        max_frame: the longest line accepted, newline included.
        handshake_timeout: seconds a new connection has to send its hello.
        line_timeout: seconds a line, once begun, has to reach its newline.
        max_held: bytes of unfinished lines the hub holds over all
            connections; past it, a connection whose unfinished line is
            over 16 KiB is refused (``overloaded``).
        subscriber_buffer: waiting items above which a subscriber's
            progress stays coalesced.
        subscriber_limit: waiting items above which it is dropped (resync).
        max_connections: connections beyond this are refused.
        recent: events kept in memory per run for resuming subscribers.
        max_runs: runs kept in memory.
        keep_ended: seconds a run that ended (or is lost and silent) stays in memory.
        stale_after, lost_after: the liveness thresholds, seconds.
        liveness_tick: seconds between two checks of the held runs' writers.
        follow_home: follow every log in ``<home>/logs/training`` (else only
            the logs of runs whose writer is alive are read, at start).
    """

    home: Path
    socket_path: Path | None = None
    tcp: tuple[str, int] | None = None
    token: str | None = None
    allow_remote: bool = False
    rate: float = RATE
    max_frame: int = MAX_FRAME
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    line_timeout: float = LINE_TIMEOUT
    max_held: int = MAX_HELD
    subscriber_buffer: int = BUFFER
    subscriber_limit: int = LIMIT
    max_connections: int = MAX_CONNECTIONS
    recent: int = RECENT
    max_runs: int = MAX_RUNS
    keep_ended: float = KEEP_ENDED
    stale_after: float = STALE_AFTER
    lost_after: float = LOST_AFTER
    liveness_tick: float = LIVENESS_TICK
    follow_home: bool = True

    def check(self) -> None:
        """Refuse unsafe or impossible settings.

        Raises:
            ConfigError: naming the setting and what to do.
        """
        if self.socket_path is None and self.tcp is None:
            raise ConfigError("the hub needs a Unix socket path or a TCP address")
        if self.tcp is not None and not is_loopback(self.tcp[0]):
            if not self.allow_remote:
                raise ConfigError(
                    f"refusing to listen on non-loopback address {self.tcp[0]!r}: "
                    "pass --allow-remote (and a token) to accept other machines"
                )
            if not (self.token or "").strip():  # a token of spaces guards nothing
                raise ConfigError(
                    "a non-loopback TCP address needs a shared token: --token or $PULSE_HUB_TOKEN"
                )
        if not self.rate > 0:
            raise ConfigError(f"rate must be positive, got {self.rate}")
        if not self.liveness_tick > 0:
            raise ConfigError(f"liveness_tick must be positive, got {self.liveness_tick}")
        if not self.line_timeout > 0:
            raise ConfigError(f"line_timeout must be positive, got {self.line_timeout}")
        if self.max_frame < 1024:
            raise ConfigError(f"max_frame must be at least 1024 bytes, got {self.max_frame}")
        if not 1 <= self.subscriber_buffer <= self.subscriber_limit:
            raise ConfigError("need 1 <= subscriber_buffer <= subscriber_limit")
