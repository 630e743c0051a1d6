"""Liveness of a run: alive, stale, lost or ended -- the honest answer.

This module owns the pure liveness rule. The facts it needs from the outside
world (is the writer's lock free? is its pid running?) are passed in by the
reading side as ``writer_alive``. Must never import I/O modules.

* ``ended``: the run reached done, error or cancelled.
* ``lost``: not ended, and the writer is known to be gone
  (``writer_alive is False``), or nothing was heard for longer than
  ``lost_after`` seconds.
* ``stale``: not ended, nothing heard (no event, no heartbeat) for longer
  than ``stale_after`` seconds; it becomes ``alive`` again on the next event.
* ``alive``: otherwise.
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias, TypedDict

from pulse_core.state import RunState

Liveness: TypeAlias = Literal["alive", "stale", "lost", "ended"]
ALIVE: Final = "alive"
STALE: Final = "stale"
LOST: Final = "lost"
ENDED: Final = "ended"

#: Default heartbeat interval of the emitter (seconds).
HEARTBEAT_INTERVAL: Final = 5.0
#: Default silence after which a run is stale: three missed heartbeats.
STALE_AFTER: Final = 3 * HEARTBEAT_INTERVAL
#: Default silence after which a run is lost even if its writer cannot be checked.
LOST_AFTER: Final = 600.0


class Thresholds(TypedDict):
    """The two liveness thresholds (seconds), as the keyword arguments that take them."""

    stale_after: float
    lost_after: float


def liveness_of(
    state: RunState,
    *,
    now: float,
    stale_after: float = STALE_AFTER,
    lost_after: float = LOST_AFTER,
    writer_alive: bool | None = None,
) -> Liveness:
    """Classify a run's liveness.

    Args:
        state: the run's state.
        now: the current time, Unix seconds.
        stale_after: silence (seconds) after which the run is stale.
        lost_after: silence (seconds) after which the run is lost.
        writer_alive: True/False when the caller checked the writer (its
            log lock or pid); None when it could not.
    """
    if state.is_terminal:
        return ENDED
    if writer_alive is False:
        return LOST
    last = state.last_event_at
    if last is None:
        return ALIVE if writer_alive else STALE
    return by_silence(now - last, stale_after=stale_after, lost_after=lost_after)


def by_silence(silence: float, *, stale_after: float, lost_after: float) -> Liveness:
    """The liveness of a run whose writer said nothing for *silence* seconds."""
    if silence > lost_after:
        return LOST
    if silence > stale_after:
        return STALE
    return ALIVE
