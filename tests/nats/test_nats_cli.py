"""``pulse ls/show/watch --source nats`` and ``pulse nats setup/serve`` against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from natskit import NatsServer

from pulse_core.emitter import TrainingRun
from pulse_transports.cli import main
from pulse_transports.nats import NatsSink


def _run(url: str, tid: str, *, fail: bool = False) -> None:
    with TrainingRun(tid, sinks=[NatsSink(url=url)], total_epochs=2, heartbeat_interval=60) as run:
        run.progress(epoch=1, step=5, total_steps=10)
        run.metrics(loss=0.5)
        if fail:
            run.error("CUDA_OOM", "out of memory", is_retryable=True)


def _invoke(command: str, *args: str) -> tuple[int, str]:
    """Run ``pulse <command> --source nats`` for reading commands, else ``pulse nats <command>``."""
    if command in ("ls", "show", "watch"):
        argv = [command, "--source", "nats", *args]
    else:
        argv = ["nats", command, *args]
    result = CliRunner().invoke(main, argv)
    return result.exit_code, result.output


class TestHelp:
    """The group is listed by ``pulse --help`` and explains itself without a server."""

    def test_listed_and_described(self) -> None:
        top = CliRunner().invoke(main, ["--help"])
        assert top.exit_code == 0
        assert "nats" in top.output
        group = CliRunner().invoke(main, ["nats", "--help"])
        assert group.exit_code == 0
        commands = group.output.split("Commands:")[1].split()
        assert "serve" in commands
        assert "setup" in commands
        assert "ls" not in commands
        for command in ("ls", "show", "watch"):
            result = CliRunner().invoke(main, [command, "--help"])
            assert result.exit_code == 0
            assert "--source" in result.output


class TestLs:
    """``pulse nats ls`` lists the runs in NATS like ``pulse ls`` lists logs."""

    def test_json_rows(self, server: NatsServer) -> None:
        _run(server.url, "cli.ok")
        _run(server.url, "cli.bad", fail=True)
        code, out = _invoke("ls", "--url", server.url, "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert doc["source"] == {
            "kind": "nats",
            "url": server.url,
            "stream": "PULSE_V2",
            "bucket": "pulse_runs",
        }
        rows = {row["training_id"]: row for row in doc["runs"]}
        assert rows["cli.ok"]["status"] == "done"
        assert rows["cli.bad"]["status"] == "error"
        assert rows["cli.bad"]["error"]["error_code"] == "CUDA_OOM"
        assert rows["cli.ok"]["log"] == "pulse.v2.cli=ok.>"
        assert rows["cli.ok"]["liveness"] == "ended"

    def test_filters_and_table(self, server: NatsServer) -> None:
        _run(server.url, "cli.one")
        _run(server.url, "cli.two", fail=True)
        code, out = _invoke("ls", "--url", server.url, "--status", "error")
        assert code == 0, out
        assert "cli.two" in out
        assert "cli.one" not in out

    def test_url_from_the_configuration_file(
        self, server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        _run(server.url, "cli.cfg")
        (tmp_path / "pulse.toml").write_text(f'[nats]\nurl = "{server.url}"\n')
        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("PULSE_HOME", raising=False)
        code, out = _invoke("ls", "--json")
        assert code == 0, out
        assert [row["training_id"] for row in json.loads(out)["runs"]] == ["cli.cfg"]


class TestShow:
    """``pulse nats show`` gives the ``pulse show`` document and view."""

    def test_json_document(self, server: NatsServer) -> None:
        _run(server.url, "cli.show", fail=True)
        code, out = _invoke("show", "cli.show", "--url", server.url, "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert doc["v1"]["status"] == "error"
        assert doc["view"]["last_error"]["error_code"] == "CUDA_OOM"
        assert doc["history"]["outcome"] == "error"
        assert doc["metric_history"]["loss"]["count"] == 1
        assert doc["source"]["origin"] in ("kv", "kv+stream")

    def test_human_view(self, server: NatsServer) -> None:
        _run(server.url, "cli.human")
        code, out = _invoke("show", "cli.human", "--url", server.url)
        assert code == 0, out
        assert "cli.human" in out
        assert "timeline" in out
        assert "done" in out

    def test_unknown_run_exits_3(self, server: NatsServer) -> None:
        _run(server.url, "cli.some")
        code, out = _invoke("show", "cli.none", "--url", server.url)
        assert code == 3
        assert "no run 'cli.none'" in out

    def test_malformed_id_exits_2(self, server: NatsServer) -> None:
        code, _ = _invoke("show", "bad id", "--url", server.url)
        assert code == 2


class TestWatch:
    """``pulse nats watch`` follows a live run to its end."""

    def test_once_on_an_ended_run(self, server: NatsServer) -> None:
        _run(server.url, "cli.once")
        code, out = _invoke("watch", "cli.once", "--url", server.url, "--once", "--json")
        assert code == 0, out
        lines = [json.loads(line) for line in out.splitlines()]
        assert lines[0]["reason"] == "start"
        assert lines[-1]["run"]["status"] == "done"

    def test_follows_a_live_run_until_it_ends(self, server: NatsServer) -> None:
        sink = NatsSink(url=server.url)
        run = TrainingRun("cli.live", sinks=[sink], heartbeat_interval=60)
        run.status("running", "go")
        sink.flush(True)

        def finish() -> None:
            time.sleep(0.8)
            run.status("running", "half way")
            time.sleep(0.3)
            run.error("DATASET_NOT_FOUND", "gone")
            run.close()

        worker = threading.Thread(target=finish)
        worker.start()
        code, out = _invoke("watch", "--url", server.url, "--json", "--timeout", "20")
        worker.join()
        assert code == 1, out  # the run ended in error
        reasons = [json.loads(line)["reason"] for line in out.splitlines()]
        assert reasons[0] == "start"
        assert "status" in reasons
        assert "error" in reasons
        assert reasons[-1] == "end"

    def test_no_live_run(self, server: NatsServer) -> None:
        _run(server.url, "cli.ended")
        code, out = _invoke("watch", "--url", server.url, "--once")
        assert code == 3
        assert "no live run" in out


class TestSetup:
    """``pulse nats setup`` creates, then reports, then updates the store."""

    def test_create_then_exists_then_update(
        self, server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        code, out = _invoke("setup", "--url", server.url, "--json")
        assert code == 0, out
        doc = json.loads(out)
        assert doc["stream"]["action"] == "created"
        assert doc["bucket"]["action"] == "created"
        assert doc["stream"]["max_msgs_per_subject"] == 256
        (tmp_path / "pulse.toml").write_text("[nats]\nmax_msgs_per_subject = 64\n")
        monkeypatch.chdir(tmp_path)
        code, out = _invoke("setup", "--url", server.url, "--update")
        assert code == 0, out
        assert "stream PULSE_V2: updated" in out
        assert "max_msgs_per_subject 64" in out


class TestServe:
    """``pulse nats serve`` runs a hub whose subscribers see runs published to NATS."""

    def test_a_subscriber_gets_a_nats_run(self, server: NatsServer, tmp_path: Path) -> None:
        import tempfile

        from pulse_transports.subscribe import Snapshot, Subscriber

        _run(server.url, "served.before")  # ended within the hour: loaded from the stream
        home = Path(tempfile.mkdtemp(prefix="pn-")) / "home"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
        hub = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pulse_transports.cli",
                "nats",
                "serve",
                "--home",
                str(home),
                "--url",
                server.url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            assert hub.stdout is not None
            line = hub.stdout.readline()
            assert "listening" in line
            assert f"fed from NATS at {server.url}" in line
            time.sleep(0.5)  # the feed's catch-up
            seen: list[object] = []
            with Subscriber(home=home, timeout=5) as sub:
                sub.connect()
                sink = NatsSink(url=server.url)
                with TrainingRun("served.live", sinks=[sink], heartbeat_interval=60) as run:
                    run.status("running", "via nats")
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    message = sub.recv(timeout=0.5)
                    if message is None:
                        continue
                    seen.append(message)
                    status = getattr(message, "status", None)
                    if getattr(message, "training_id", None) == "served.live" and status == "done":
                        break
            snapshots = {m.training_id: m.view for m in seen if isinstance(m, Snapshot)}
            assert snapshots["served.before"]["status"] == "done"
            messages = [
                getattr(m, "message", None)
                for m in seen
                if getattr(m, "training_id", None) == "served.live"
            ]
            assert "via nats" in messages
            assert "finished" in messages
        finally:
            hub.terminate()
            hub.wait(10)
