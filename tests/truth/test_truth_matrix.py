"""The truth matrix: every reader agrees with what happened to a run, however it ended.

All scenarios of :mod:`matrix` run once per module, concurrently (four
processes at a time), against one ``pulse serve --http`` hub; each test then
checks one scenario's cells. The expected values are the truth the issue
demands, so a cell fails until the seam it crosses is fixed -- nothing here
is skipped or marked expected-to-fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from matrix import READERS, SCENARIOS, Scenario, cell, markdown
from truthkit import Outcome, play_all

ROOT = Path(__file__).resolve().parents[2]
#: Scenario processes at a time (the machine is small; torchrun alone is three).
WORKERS = 4


@pytest.fixture(scope="module")
def outcomes() -> dict[str, Outcome]:
    """Every scenario played once, against one hub, four at a time."""
    return {o.scenario.name: o for o in play_all(WORKERS)}


class TestTruthMatrix:
    """Each scenario: every reader shows its status, liveness and outcome."""

    @pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
    def test_every_reader_agrees(self, scenario: Scenario, outcomes: dict[str, Outcome]) -> None:
        """Every reader of the scenario shows the truth within the read wait."""
        outcome = outcomes[scenario.name]
        assert set(outcome.cells) == set(scenario.readers) or outcome.notes
        failures = outcome.failures()
        assert not failures, f"{scenario.name} ({outcome.training_id}):\n" + "\n".join(failures)


class TestMatrixTable:
    """The table itself is whole and renders for the docs."""

    def test_every_scenario_has_a_cell_per_reader(self) -> None:
        """The Markdown table has one row per scenario and one column per reader."""
        lines = markdown().splitlines()
        assert len(lines) == 2 + len(SCENARIOS)
        assert all(line.count("|") == len(READERS) + 2 for line in lines)

    def test_lost_is_an_error_in_v1(self) -> None:
        """A lost run is never running in the v1 vocabulary."""
        lost = [s for s in SCENARIOS if s.truth.liveness == "lost"]
        assert lost
        assert {cell(s, "pulse v1") for s in lost} == {"error (lost)"}


class TestMatrixDocs:
    """The docs' matrix is generated from this test's table."""

    def test_liveness_page_has_the_marker(self) -> None:
        """docs/concepts/liveness.md asks for the generated table."""
        page = ROOT / "docs" / "concepts" / "liveness.md"
        assert "<!-- pulse:truth-matrix -->" in page.read_text()

    def test_generator_renders_the_table(self) -> None:
        """The docs hook renders exactly the table this test checks."""
        sys.path.insert(0, str(ROOT / "docs"))
        try:
            import gen_pages
        finally:
            sys.path.remove(str(ROOT / "docs"))
        assert gen_pages.GENERATORS["truth-matrix"]() == markdown()
