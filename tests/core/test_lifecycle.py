"""The lifecycle: the flat TABLE agrees with the transitions machine it came from."""

from __future__ import annotations

import itertools

import pytest
from transitions import MachineError

from pulse_core.events import STATUSES, TERMINAL_STATUSES
from pulse_core.lifecycle import (
    INITIAL,
    TABLE,
    TRANSITIONS,
    TRIGGER_FOR_STATUS,
    allowed_targets,
    build_machine,
    is_terminal,
    next_status,
)

TRIGGERS = sorted({str(t["trigger"]) for t in TRANSITIONS})
NON_TERMINAL = [s for s in STATUSES if s not in TERMINAL_STATUSES]


class Model:
    """A bare model the machine decorates with state and triggers."""

    state: str


def fire(source: str, trigger: str) -> str:
    """Fire *trigger* on a fresh model in *source* and return its new state."""
    machine = build_machine()
    model = Model()
    machine.add_model(model, initial=source)
    model.trigger(trigger)  # type: ignore[attr-defined]
    return model.state


class TestTableAgreesWithMachine:
    """TABLE is exactly what the machine does, state by trigger."""

    @pytest.mark.parametrize(("source", "trigger"), list(itertools.product(STATUSES, TRIGGERS)))
    def test_every_state_and_trigger(self, source: str, trigger: str) -> None:
        """The machine ends where TABLE says, and refuses exactly where TABLE has no entry."""
        expected = TABLE.get((source, trigger))
        if expected is None:
            with pytest.raises(MachineError):
                fire(source, trigger)
        else:
            assert fire(source, trigger) == expected

    def test_table_covers_only_known_names(self) -> None:
        """Every key and value of TABLE is a known status and trigger."""
        for (source, trigger), dest in TABLE.items():
            assert source in STATUSES
            assert dest in STATUSES
            assert trigger in TRIGGERS

    def test_machine_states(self) -> None:
        """The machine has the seven statuses and starts idle."""
        machine = build_machine()
        assert list(machine.states) == list(STATUSES)
        assert machine.initial == INITIAL == "idle"

    def test_auto_transitions_off(self) -> None:
        """No to_<state> triggers: they would allow leaving terminal states."""
        machine = build_machine()
        assert machine.auto_transitions is False
        assert not [name for name in machine.events if name.startswith("to_")]
        assert sorted(machine.events) == TRIGGERS


class TestRules:
    """The lifecycle rules of the spec hold in the table."""

    @pytest.mark.parametrize("terminal", sorted(TERMINAL_STATUSES))
    def test_terminal_states_have_no_exits(self, terminal: str) -> None:
        """Nothing leaves done, error or cancelled -- not even a restatement."""
        assert [key for key in TABLE if key[0] == terminal] == []
        assert allowed_targets(terminal) == []
        assert is_terminal(terminal)
        for target in STATUSES:
            assert next_status(terminal, target) is None

    @pytest.mark.parametrize("source", NON_TERMINAL)
    def test_error_and_cancelled_reachable(self, source: str) -> None:
        """error and cancelled are reachable from every non-terminal state."""
        assert TABLE[(source, "fail")] == "error"
        assert TABLE[(source, "cancel")] == "cancelled"
        assert next_status(source, "error") == "error"
        assert next_status(source, "cancelled") == "cancelled"
        assert not is_terminal(source)

    def test_happy_path_and_shortcuts(self) -> None:
        """idle -> preparing -> running -> cooling_down -> done, skipping the optional ones."""
        path = ["idle", "preparing", "running", "cooling_down", "done"]
        for source, target in itertools.pairwise(path):
            assert next_status(source, target) == target
        assert next_status("idle", "running") == "running"
        assert next_status("running", "done") == "done"
        assert next_status("idle", "done") is None
        assert next_status("cooling_down", "running") is None
        assert next_status("preparing", "cooling_down") is None

    def test_restatement(self) -> None:
        """preparing, running and cooling_down may be restated; idle may not."""
        for status in ("preparing", "running", "cooling_down"):
            assert next_status(status, status) == status
        assert next_status("idle", "idle") is None

    @pytest.mark.parametrize(("source", "target"), list(itertools.product(STATUSES, STATUSES)))
    def test_next_status_matches_table(self, source: str, target: str) -> None:
        """A status event is legal exactly when some trigger leads from source to target."""
        legal = any(dest == target for (src, _), dest in TABLE.items() if src == source)
        assert (next_status(source, target) == target) is legal
        assert (target in allowed_targets(source)) is legal

    def test_trigger_for_status(self) -> None:
        """The trigger named for a status leads to that status wherever it is allowed."""
        for status, trigger in TRIGGER_FOR_STATUS.items():
            sources = [src for (src, trg) in TABLE if trg == trigger]
            assert sources
            assert all(TABLE[(src, trigger)] == status for src in sources)

    def test_unknown_names(self) -> None:
        """Unknown statuses are neither legal targets nor sources."""
        assert next_status("idle", "paused") is None
        assert next_status("paused", "running") is None
        assert allowed_targets("paused") == []
