"""Authentication: the right token works, a wrong one is refused clearly and never shown."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import structlog
from click.testing import CliRunner
from natskit import NatsServer

from pulse_core.emitter import TrainingRun
from pulse_transports.cli import main
from pulse_transports.nats import NatsAuthError, NatsError, NatsSink, NatsSource, NatsUnavailable

TOKEN = "s3cret-token-42"
WRONG = "wrong-token-17"


@pytest.fixture
def secured(start_server: Callable[..., NatsServer]) -> NatsServer:
    """A server that wants the token."""
    return start_server(auth=TOKEN)


class TestToken:
    """Only the configured token gets in; refusals say so without the secret."""

    def test_the_right_token_works_end_to_end(self, secured: NatsServer) -> None:
        sink = NatsSink(url=secured.url, token=TOKEN)
        with TrainingRun("auth.ok", sinks=[sink], heartbeat_interval=60) as run:
            run.progress(step=1)
        assert sink.published > 0
        record = NatsSource(secured.url, token=TOKEN).load_run("auth.ok")
        assert record.state.status == "done"

    def test_a_wrong_token_is_refused_with_a_clear_error(self, secured: NatsServer) -> None:
        with pytest.raises(NatsAuthError) as caught:
            NatsSource(secured.url, token=WRONG).recover()
        message = str(caught.value)
        assert "refused the credentials" in message
        assert secured.url in message
        assert WRONG not in message
        with pytest.raises(NatsAuthError):
            NatsSource(secured.url).recover()

    def test_the_token_may_come_from_the_environment(
        self, secured: NatsServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("PULSE_NATS_TOKEN", TOKEN)
        with TrainingRun("auth.env", sinks=[NatsSink(url=secured.url)], heartbeat_interval=60):
            pass
        assert NatsSource(secured.url).load_run("auth.env").state.status == "cancelled"

    def test_a_sink_with_a_wrong_token_never_breaks_training(self, secured: NatsServer) -> None:
        sink = NatsSink(url=secured.url, token=WRONG, close_timeout=0.5)
        with (
            structlog.testing.capture_logs() as logs,
            TrainingRun("auth.bad", sinks=[sink], heartbeat_interval=60) as run,
        ):
            run.progress(step=1)
        assert sink.published == 0
        assert "refused the credentials" in sink.last_error
        assert logs, "the refusal is logged"
        assert WRONG not in repr(logs)

    def test_a_url_with_userinfo_is_redacted(self, secured: NatsServer) -> None:
        url = secured.url.replace("nats://", f"nats://{WRONG}@")
        with pytest.raises(NatsAuthError) as caught:
            NatsSource(url).recover()
        assert WRONG not in str(caught.value)
        assert "nats://***@127.0.0.1" in str(caught.value)


class TestUserPassword:
    """User/password credentials pass through, from arguments or the environment."""

    def test_user_and_password(
        self, start_server: Callable[..., NatsServer], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        server = start_server(args=("--user", "trainer", "--pass", "pa55-word"))
        sink = NatsSink(url=server.url, user="trainer", password="pa55-word")
        with TrainingRun("auth.user", sinks=[sink], heartbeat_interval=60) as run:
            run.progress(step=1)
        assert sink.published > 0
        with pytest.raises(NatsAuthError) as caught:
            NatsSource(server.url, user="trainer", password="nope-nope").recover()
        assert "nope-nope" not in str(caught.value)
        monkeypatch.setenv("PULSE_NATS_USER", "trainer")
        monkeypatch.setenv("PULSE_NATS_PASSWORD", "pa55-word")
        assert NatsSource(server.url).load_run("auth.user").state.status == "done"


class TestCommandLine:
    """``pulse nats`` reports a refusal on one line, exit 1, secret hidden."""

    def test_wrong_token_exit_code_and_message(self, secured: NatsServer) -> None:
        result = CliRunner().invoke(
            main, ["ls", "--source", "nats", "--url", secured.url, "--token", WRONG]
        )
        assert result.exit_code == 1
        assert "refused the credentials" in result.output
        assert WRONG not in result.output

    def test_no_server_is_reported(self) -> None:
        from natskit import free_port

        url = f"nats://127.0.0.1:{free_port()}"
        result = CliRunner().invoke(main, ["ls", "--source", "nats", "--url", url])
        assert result.exit_code == 1
        assert "cannot reach NATS" in result.output

    def test_unreachable_raises_unavailable(self) -> None:
        from natskit import free_port

        with pytest.raises(NatsUnavailable, match=r"Connect call failed|refused"):
            NatsSource(f"nats://127.0.0.1:{free_port()}").recover()


class TestNoJetStream:
    """A server without JetStream is named as such, not as unreachable."""

    def test_plain_server(self, tmp_path: object) -> None:
        import subprocess

        from natskit import free_port, server_binary

        port = free_port()
        proc = subprocess.Popen(
            [str(server_binary()), "-p", str(port), "-a", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            import socket
            import time

            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    time.sleep(0.02)
            with pytest.raises(NatsError, match="JetStream"):
                NatsSource(f"nats://127.0.0.1:{port}").recover()
        finally:
            proc.terminate()
            proc.wait(10)
