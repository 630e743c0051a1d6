"""The NATS source passes the RunSource contract against a real nats-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from natskit import NatsServer

from pulse_transports.nats import NatsSink, NatsSource
from pulse_transports.testing import MakeSink, RunSourceContract


class TestNatsSourceContract(RunSourceContract):
    """NatsSource on a fresh JetStream server runs the whole contract."""

    @pytest.fixture
    def source(self, server: NatsServer) -> Iterator[NatsSource]:
        """A NATS source on the test's server."""
        source = NatsSource(server.url)
        yield source
        source.close()

    @pytest.fixture
    def make_sink(self, server: NatsServer) -> MakeSink:
        """NATS sinks publishing to the stream the source reads."""
        return lambda: NatsSink(url=server.url, interval=0.0)
