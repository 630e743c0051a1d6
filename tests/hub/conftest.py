"""Fixtures for the hub tests: real ``pulse serve`` processes and raw clients.

The helpers themselves live in ``hubkit.py`` (importable by the tests).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hubkit import HubProcess, RawClient

from pulse_transports.wire import Address

_HUB_ENV = ("PULSE_HUB_TOKEN", "PULSE_HUB_SOCKET", "PULSE_HUB_TCP")


@pytest.fixture
def hub_home(tmp_path: Path) -> Iterator[Path]:
    """A home whose ``pulse.sock`` path fits the Unix socket limit (~107 bytes)."""
    home = tmp_path / "home"
    if len(str(home / "pulse.sock")) < 100:
        yield home
        return
    short = Path(tempfile.mkdtemp(prefix="ph-"))
    try:
        yield short / "home"
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture
def start_hub(hub_home: Path) -> Iterator[Callable[..., HubProcess]]:
    """Start ``pulse serve`` with extra arguments; every hub is stopped at the end."""
    hubs: list[HubProcess] = []

    def start(
        *args: str,
        home: Path | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        ready: bool = True,
        nofile: int | None = None,
    ) -> HubProcess:
        full_env = {k: v for k, v in os.environ.items() if k not in _HUB_ENV}
        full_env.update(env or {})
        hub = HubProcess(home or hub_home, list(args), env=full_env, cwd=cwd, nofile=nofile)
        hubs.append(hub)
        return hub.wait_ready() if ready else hub

    yield start
    for hub in hubs:
        hub.stop()


@pytest.fixture
def hub(start_hub: Callable[..., HubProcess]) -> HubProcess:
    """A running hub on ``<home>/pulse.sock`` and a free loopback TCP port (no token)."""
    return start_hub("--tcp", "127.0.0.1:0", "--no-token")


@pytest.fixture
def clients() -> Iterator[Callable[[Address], RawClient]]:
    """Open raw clients; all are closed at the end."""
    opened: list[RawClient] = []

    def open_client(address: Address) -> RawClient:
        client = RawClient(address)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()
