"""Fixtures of the NATS tests: a real JetStream server per test, stopped after.

Each test gets its own ``nats-server -js`` on a free loopback port with a store
folder under the test's tmp_path (the helpers are in ``natskit.py``), so tests
never share a stream. ``PULSE_NATS_*`` variables are cleared, so only what a
test passes reaches the client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from natskit import NatsServer


@pytest.fixture(autouse=True)
def _no_nats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "PULSE_NATS_URL",
        "PULSE_NATS_TOKEN",
        "PULSE_NATS_USER",
        "PULSE_NATS_PASSWORD",
        "PULSE_NATS_CREDS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., NatsServer]]:
    """Start servers (each with its own store); all are stopped at the end."""
    servers: list[NatsServer] = []

    def start(
        auth: str | None = None, port: int | None = None, args: tuple[str, ...] = ()
    ) -> NatsServer:
        server = NatsServer(tmp_path / f"js-{len(servers)}", port=port, auth=auth, args=args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., NatsServer]) -> NatsServer:
    """A running JetStream server without authentication."""
    return start_server()
