"""Fixtures for the integration tests: a PULSE home per test, and reading its run logs.

Tests that need the ML frameworks (torch, transformers, lightning, keras, tqdm)
carry the ``integrations`` marker, registered here. They are never skipped:
install the extra first (``pip install -e '.[test,integrations]'``) or
deselect them (``-m "not integrations"``). Framework imports happen inside
fixtures and tests, so collecting this folder needs no framework.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pulse_core.state import RunState
from pulse_transports.follow import read_log
from pulse_transports.integrations import tracking


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``integrations`` marker (pytest runs with --strict-markers)."""
    config.addinivalue_line(
        "markers",
        "integrations: needs the ML frameworks of the 'integrations' extra "
        "(pip install -e '.[test,integrations]'); deselect with -m 'not integrations'",
    )


@pytest.fixture
def pulse_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh PULSE home that runs opened from configuration write to (file + v1 sinks)."""
    home = tmp_path / "pulse"
    monkeypatch.setenv("PULSE_HOME", str(home))
    monkeypatch.setenv("PULSE_TRANSPORTS", "file")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    for name in (
        "PULSE_TRAINING_ID",
        "PULSE_RANKS",
        "PULSE_HANDLE_SIGNALS",
        "PULSE_TOTAL_EPOCHS",
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "NODE_RANK",
        "SLURM_PROCID",
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no pulse.toml / pyproject.toml of the repo applies
    tracking.set_current_run(None)
    yield home
    tracking.set_current_run(None)


@pytest.fixture
def read_runs(pulse_home: Path) -> Callable[[], list[RunState]]:
    """Replay every run log in the home (sorted by file name) into its state."""

    def read() -> list[RunState]:
        folder = pulse_home / "logs" / "training"
        if not folder.exists():
            return []
        return [read_log(path).state for path in sorted(folder.glob("*.jsonl"))]

    return read


@pytest.fixture
def every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """Callbacks forward every step's values at once (and look for cancels every step)."""
    from pulse_transports.integrations import _common

    monkeypatch.setattr(_common, "STEP_INTERVAL", 0.0)


@pytest.fixture
def torch_quiet() -> Iterator[None]:
    """One torch thread (tiny models on 2 cores run ~20x faster) and a fixed seed."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def statuses() -> Callable[[RunState], list[str]]:
    """Give the status timeline of a run state, in order."""

    def timeline(state: RunState) -> list[str]:
        return [entry.status for entry in state.timeline]

    return timeline


os.environ.setdefault("KERAS_BACKEND", "torch")  # before any test imports keras
