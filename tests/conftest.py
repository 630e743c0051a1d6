"""Test-wide configuration: hypothesis profiles and shared fixtures.

Profiles (cattrs ``tests/conftest.py``): ``ci`` runs many derandomized
examples, ``fast`` a few for a quick local loop, ``dev`` (the default) 100.
``ci`` is chosen when the ``CI`` environment variable is set;
``HYPOTHESIS_PROFILE`` names a profile explicitly.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from pulse_core.emitter import TrainingRun
from pulse_core.testing import FakeClock

# A suite started as a background job of a non-interactive shell (`cmd &` in a
# script, nohup, some CI runners) inherits SIGINT ignored, and every process the
# tests start would too: Python then installs no KeyboardInterrupt handler, and
# the tests that interrupt a real training process or `pulse watch` with SIGINT
# would wait for a process that never sees it. A handler here (not "ignore")
# makes the children start with the default disposition, as from a terminal.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile(
    "ci",
    max_examples=500,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("fast", max_examples=10, deadline=None)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
)


@pytest.fixture(autouse=True)
def _fresh_log_rate_limits() -> None:
    """Each test sees the library's first warning of a kind (the limiter is process-wide)."""
    from pulse_core._log import reset_rate_limits

    reset_rate_limits()


@pytest.fixture(autouse=True)
def _structlog_left_as_found() -> Iterator[None]:
    """A test that configures structlog (the CLI does) does not leak it into later tests."""
    yield
    import structlog

    structlog.reset_defaults()


@pytest.fixture
def tmp_home(tmp_path: Path) -> Path:
    """A fresh, empty directory to use as a home or data directory."""
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock for monotonic and wall time."""
    return FakeClock()


@pytest.fixture
def make_run(clock: FakeClock) -> Iterator[Callable[..., TrainingRun]]:
    """Build runs on the fake clock without a background thread; all closed at the end."""
    made: list[TrainingRun] = []

    def build(*args: Any, **kwargs: Any) -> TrainingRun:
        kwargs.setdefault("clock", clock.monotonic)
        kwargs.setdefault("wall", clock.time)
        kwargs.setdefault("background", False)
        kwargs.setdefault("env", {})
        kwargs.setdefault("strict", False)
        kwargs.setdefault("heartbeat_interval", 5.0)
        run = TrainingRun(*args, **kwargs)
        made.append(run)
        return run

    yield build
    for run in made:
        run.close()
