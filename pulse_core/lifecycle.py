"""The run lifecycle, declared once as a ``transitions`` state machine.

This module owns the allowed lifecycle transitions. The machine below is the
single source: at import it is flattened into :data:`TABLE`, a plain
``(state, trigger) -> state`` dict that the reducer and emitter use (a dict
lookup is ~50x cheaper than ``Machine.trigger``), and the spec's table and the
docs diagram are generated from it. A test asserts table and machine agree.

Rules (see specs/protocol.md, "Lifecycle"):

* idle -> preparing -> running -> cooling_down -> done is the happy path;
  preparing may be skipped (idle -> running) and so may cooling_down
  (running -> done).
* error and cancelled are reachable from every non-terminal state.
* preparing, running and cooling_down may be restated (same state, new
  message): the ``note`` trigger.
* done, error and cancelled are terminal and absorbing: nothing leaves them.

Must never import I/O modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from transitions import Machine

from pulse_core.events import STATUSES
from pulse_core.events import is_terminal as _is_terminal

INITIAL: Final = "idle"

#: trigger name -> the status a status event names to fire it.
TRANSITIONS: Final[list[dict[str, object]]] = [
    {"trigger": "prepare", "source": "idle", "dest": "preparing"},
    {"trigger": "start", "source": ["idle", "preparing"], "dest": "running"},
    {"trigger": "cool_down", "source": "running", "dest": "cooling_down"},
    {"trigger": "finish", "source": ["running", "cooling_down"], "dest": "done"},
    {
        "trigger": "fail",
        "source": ["idle", "preparing", "running", "cooling_down"],
        "dest": "error",
    },
    {
        "trigger": "cancel",
        "source": ["idle", "preparing", "running", "cooling_down"],
        "dest": "cancelled",
    },
    {"trigger": "note", "source": ["preparing", "running", "cooling_down"], "dest": "="},
]

#: The status a status event carries -> the trigger it fires from a *different*
#: state; restating the current state fires ``note``.
TRIGGER_FOR_STATUS: Final[Mapping[str, str]] = {
    "preparing": "prepare",
    "running": "start",
    "cooling_down": "cool_down",
    "done": "finish",
    "error": "fail",
    "cancelled": "cancel",
}


def build_machine() -> Machine:
    """Build the lifecycle machine (for docs, specs and the agreement test)."""
    return Machine(
        model=None,
        states=list(STATUSES),
        transitions=TRANSITIONS,
        initial=INITIAL,
        auto_transitions=False,
        send_event=False,
    )


def _flatten(machine: Machine) -> dict[tuple[str, str], str]:
    table: dict[tuple[str, str], str] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                dest = transition.dest if transition.dest is not None else source
                table[(source, trigger)] = dest
    return table


#: (state, trigger) -> next state. Built once at import from the machine.
TABLE: Final[Mapping[tuple[str, str], str]] = _flatten(build_machine())

#: (state, target status) -> True when a status event naming target is legal.
_STATUS_ALLOWED: Final[frozenset[tuple[str, str]]] = frozenset(
    (source, dest) for (source, _trigger), dest in TABLE.items()
)


def next_status(current: str, target: str) -> str | None:
    """Return the state after a status event naming *target*, or None if illegal.

    Args:
        current: the run's current status.
        target: the status the event names.

    Returns:
        *target* when the move (or restatement) is allowed, else None.
    """
    return target if (current, target) in _STATUS_ALLOWED else None


def is_terminal(status: str) -> bool:
    """Tell whether *status* is terminal (done, error, cancelled): :func:`events.is_terminal`."""
    return _is_terminal(status)


def allowed_targets(current: str) -> list[str]:
    """List the statuses a run in *current* may move to, in STATUSES order."""
    return [s for s in STATUSES if (current, s) in _STATUS_ALLOWED]
