"""One registry of process hooks: runs and other abortables share one sys.excepthook."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pulse_core.emitter import TrainingRun, _hooks, register_abortable, unregister_abortable
from pulse_core.events import StatusChanged
from pulse_core.testing import RecordingSink


class Peer:
    """An Abortable that remembers what ended it."""

    def __init__(self) -> None:
        self.failed: list[BaseException] = []

    def fail_with(self, exc: BaseException) -> None:
        """Remember *exc*."""
        self.failed.append(exc)


class TestOneExcepthook:
    """An uncaught exception reaches every open run and every registered abortable."""

    @pytest.mark.parametrize("peer_first", [True, False])
    def test_both_hear_of_it(self, monkeypatch: pytest.MonkeyPatch, peer_first: bool) -> None:
        """Whichever registered first, both are ended and sys.excepthook stays ours."""
        chained: list[Any] = []
        peer, sink = Peer(), RecordingSink()
        if peer_first:
            register_abortable(peer)
        run = TrainingRun("hooks-run", sinks=[sink], env={}, strict=False, background=False)
        if not peer_first:
            register_abortable(peer)
        try:
            assert sys.excepthook is _hooks._excepthook
            # After the first registration (which installs the hooks): the chained hook.
            monkeypatch.setattr(_hooks, "_previous_excepthook", lambda *a: chained.append(a))
            boom = RuntimeError("boom")
            sys.excepthook(RuntimeError, boom, None)
        finally:
            unregister_abortable(peer)
            run.close()
        assert peer.failed == [boom]
        statuses = [e.status for e in sink.events if isinstance(e, StatusChanged)]
        assert statuses[-1] == "error"
        assert len(chained) == 1

    def test_unregistered_is_left_alone(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """An abortable that unregistered is not called."""
        peer = Peer()
        register_abortable(peer)
        unregister_abortable(peer)
        monkeypatch.setattr(_hooks, "_previous_excepthook", lambda *a: None)
        sys.excepthook(ValueError, ValueError("x"), None)
        assert peer.failed == []


PEER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pulse_transports.integrations._rank_errors import PeerRun
    from pulse_core.emitter import _hooks
    peer = PeerRun("peer-run", rank=1, world_size=2, home=sys.argv[1])
    assert sys.excepthook is _hooks._excepthook, sys.excepthook
    raise RuntimeError("rank 1 failed")
    """
)


class TestPeerRun:
    """A non-zero rank's PeerRun uses the emitter's excepthook, not a second one."""

    def test_uncaught_exception_writes_rank_error(self, tmp_path: Path) -> None:
        """A real process: the uncaught exception writes the rank's error file."""
        result = subprocess.run(
            [sys.executable, "-c", PEER_SCRIPT, str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert "rank 1 failed" in result.stderr
        errors = list(tmp_path.rglob("*.json"))
        assert errors, result.stderr
        assert any("RuntimeError" in path.read_text(encoding="utf-8") for path in errors)
