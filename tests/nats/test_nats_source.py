"""The NATS source passes the RunSource contract against a real nats-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from natskit import NatsServer

from pulse_core.emitter import TrainingRun
from pulse_transports.flows import FlowTrainer
from pulse_transports.nats import NatsSink, NatsSource, run_filter
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


class TestFlowTrainerOnNats:
    """FlowTrainer(source=NatsSource) answers Flow History from NATS, not the home's logs."""

    def test_records_and_drill_down(self, server: NatsServer, tmp_path: Path) -> None:
        """A run published only to NATS is a Flow History record, with its drill-down."""
        sink = NatsSink(url=server.url, interval=0.0)
        with TrainingRun(
            "flow.nats",
            sinks=[sink],
            flow_id="f",
            flow_run_id="fr-n",
            flow_step_id="train",
            total_epochs=2,
            heartbeat_interval=60,
            handle_signals=False,
        ) as run:
            run.progress(epoch=2)
            run.metrics(loss=0.25)
        home = tmp_path / "home"
        home.mkdir()
        trainer = FlowTrainer(home=home, source=NatsSource(server.url))
        assert FlowTrainer(home=home).records(flow_run_id="fr-n") == []
        (record,) = trainer.records(flow_run_id="fr-n")
        assert record["training_id"] == "flow.nats"
        assert record["outcome"] == "success"
        assert record["log_path"] == run_filter("flow.nats")
        detail = trainer.drill_down("flow.nats")
        assert detail["view"]["status"] == "done"
        assert detail["record"]["key_metrics"]["final_loss"] == pytest.approx(0.25)
