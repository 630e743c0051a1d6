"""A run reads its configuration once: settings and default sinks from one read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import pulse_transports.config as config_module
from pulse_core.emitter import TrainingRun, _settings
from pulse_transports import registry


@pytest.fixture
def config_reads(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """Count load_config calls; the configuration is a file sink in a temporary home."""
    calls: list[int] = []
    real = config_module.load_config

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(config_module, "load_config", counting)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PULSE_HOME", str(tmp_path / "home"))
    return calls


def entry_points(names: set[str]) -> Any:
    """An ``_entry_point`` stand-in that offers the registry's functions named in *names*."""

    def find(name: str) -> Any:
        return getattr(registry, name) if name in names else None

    return find


class TestOneRead:
    """load_config runs once per run with default arguments."""

    def test_run_settings_reads_once(
        self, monkeypatch: pytest.MonkeyPatch, config_reads: list[int]
    ) -> None:
        """With the run_settings entry point, settings and sinks come from one read."""
        monkeypatch.setattr(
            _settings, "_entry_point", entry_points({"run_settings", "run_defaults"})
        )
        run = TrainingRun("settings-once", background=False)
        run.close()
        assert len(config_reads) == 1
        assert run.sink_stats()

    def test_fallback_without_run_settings(
        self, monkeypatch: pytest.MonkeyPatch, config_reads: list[int]
    ) -> None:
        """An older transports package (no run_settings) still works, with two reads."""
        monkeypatch.setattr(
            _settings, "_entry_point", entry_points({"run_defaults", "default_sinks"})
        )
        run = TrainingRun("settings-fallback", background=False)
        run.close()
        assert len(config_reads) == 2

    def test_given_sinks_and_settings_read_nothing(
        self, monkeypatch: pytest.MonkeyPatch, config_reads: list[int]
    ) -> None:
        """A run given its sinks and settings never reads the configuration."""
        monkeypatch.setattr(
            _settings, "_entry_point", entry_points({"run_settings", "run_defaults"})
        )
        run = TrainingRun(
            "settings-none", sinks=[], strict=False, heartbeat_interval=5.0, background=False
        )
        run.close()
        assert config_reads == []
