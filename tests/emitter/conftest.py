"""Fixtures for the emitter tests: a fake clock, runs that close themselves, log capture."""

from __future__ import annotations

from typing import Any

import pytest

from pulse_core.emitter import _hooks, _lifecycle, _route, _run, _settings, _value, _writer


class LogRecorder:
    """Stands in for a module's structlog logger and keeps what was logged."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def _keep(self, level: str, event: str, **kw: Any) -> None:
        self.records.append({"level": level, "event": event, **kw})

    def debug(self, event: str, **kw: Any) -> None:
        self._keep("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._keep("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._keep("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._keep("error", event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        self._keep("exception", event, **kw)

    def events(self, level: str | None = None) -> list[str]:
        """The logged messages, optionally of one level."""
        return [r["event"] for r in self.records if level is None or r["level"] == level]


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> LogRecorder:
    """What the emitter logs through structlog, whatever structlog's configuration."""
    recorder = LogRecorder()
    for module in (_run, _lifecycle, _writer, _route, _hooks, _settings, _value):  # own `log`s
        monkeypatch.setattr(module, "log", recorder)
    return recorder
