"""The typed shapes say exactly what the projections return, and their schemas accept it."""

from __future__ import annotations

from typing import Any

import cattrs
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]  # no stubs
from strategies import WIRE, events, run_events

from pulse_core.liveness import ALIVE, ENDED, LOST, STALE, Liveness
from pulse_core.projections import V1_KEYS, to_history_record, to_summary, to_v1, to_view
from pulse_core.reducer import replay
from pulse_core.shapes import (
    SHAPES,
    HistoryRecord,
    RunSummary,
    V1Snapshot,
    View,
    component_schemas,
)
from pulse_core.state import RunState

NOW = 1_800_000_000.0
CONVERTER = cattrs.Converter(forbid_extra_keys=True)
states = st.one_of(
    run_events(WIRE).map(replay),
    st.lists(events(WIRE, training_id=st.just("run-1")), max_size=20).map(replay),
)
livenesses = st.sampled_from([ALIVE, STALE, LOST, ENDED])


def document() -> dict[str, Any]:
    """The generated schemas beside the two enums they reference."""
    schemas: dict[str, Any] = dict(component_schemas(*SHAPES))
    schemas["Status"] = {"type": "string"}
    schemas["Liveness"] = {"type": "string", "enum": ["alive", "stale", "lost", "ended"]}
    return {"components": {"schemas": schemas}}


SCHEMAS = document()


def round_trip(shape: type, value: dict[str, Any]) -> None:
    """*value* structures into *shape* with no key left over and comes back equal."""
    typed = CONVERTER.structure(value, shape)
    assert CONVERTER.unstructure(typed) == value
    Draft202012Validator({"$ref": f"#/components/schemas/{shape.__name__}", **SCHEMAS}).validate(
        value
    )


class TestShapes:
    """Every projection of any state is exactly an instance of its class."""

    @given(states, livenesses)
    def test_view(self, state: RunState, liveness: Liveness) -> None:
        """to_view has View's keys and types, no more, no fewer."""
        round_trip(View, to_view(state, now=NOW, liveness=liveness))

    @given(states, livenesses)
    def test_summary(self, state: RunState, liveness: Liveness) -> None:
        """to_summary is a RunSummary."""
        round_trip(RunSummary, to_summary(state, liveness=liveness, now=NOW, training_id="r"))

    @given(states, livenesses)
    def test_history_record(self, state: RunState, liveness: Liveness) -> None:
        """to_history_record is a HistoryRecord."""
        round_trip(HistoryRecord, to_history_record(state, liveness=liveness, now=NOW))

    @given(states, livenesses)
    def test_v1(self, state: RunState, liveness: Liveness) -> None:
        """to_v1 is a V1Snapshot."""
        round_trip(V1Snapshot, to_v1(state, liveness=liveness))

    def test_a_key_too_many_is_caught(self) -> None:
        """The round trip fails for a view with a key its class does not declare."""
        view = to_view(RunState(training_id="r"), now=NOW)
        view["surprise"] = 1
        try:
            round_trip(View, view)
        except cattrs.errors.ClassValidationError:
            return
        raise AssertionError("an undeclared key passed")


class TestSchemas:
    """The generated schemas name every part and are closed where v1 is."""

    def test_every_part_is_named(self) -> None:
        """Nested classes get their own component, referenced by name."""
        schemas = component_schemas(View)
        assert {"View", "ViewProgress", "ErrorReport", "Flow", "Timings", "Stats"} <= set(schemas)
        assert schemas["View"]["properties"]["progress"] == {
            "$ref": "#/components/schemas/ViewProgress"
        }
        assert schemas["View"]["properties"]["status"] == {"$ref": "#/components/schemas/Status"}

    def test_v1_is_closed(self) -> None:
        """The v1 snapshot allows exactly its six keys."""
        schema = component_schemas(V1Snapshot)["V1Snapshot"]
        assert schema["additionalProperties"] is False
        assert schema["required"] == list(V1_KEYS)
