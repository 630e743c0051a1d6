"""``pulse serve``: addresses, safety checks, configuration and shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from hubkit import HubProcess, RawClient

from pulse_transports.wire import Address


def serve(
    *args: str, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``pulse serve`` expecting it to exit on its own (a refused start)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_HUB_")}
    return subprocess.run(
        [sys.executable, "-m", "pulse_transports.cli", "serve", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )


class TestSafety:
    """Listening beyond this machine takes an explicit flag and a token."""

    def test_non_loopback_needs_allow_remote(self, tmp_path: Path) -> None:
        result = serve("--home", str(tmp_path), "--tcp", "0.0.0.0:0")
        assert result.returncode == 2
        assert "--allow-remote" in result.stderr
        assert not (tmp_path / "pulse.sock").exists()

    def test_allow_remote_needs_a_token(self, tmp_path: Path) -> None:
        result = serve(
            "--home", str(tmp_path), "--tcp", "0.0.0.0:0", "--allow-remote", "--no-token"
        )
        assert result.returncode == 2
        assert "token" in result.stderr

    def test_blank_token_refused(self, tmp_path: Path) -> None:
        """A whitespace-only token is refused, named (it would guard nothing)."""
        for blank in (" ", "  \t"):
            result = serve(
                "--home", str(tmp_path), "--tcp", "0.0.0.0:0", "--allow-remote", "--token", blank
            )
            assert result.returncode == 2
            assert "whitespace" in result.stderr

    def test_tcp_asks_for_the_home_token_by_default(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        """Loopback TCP without --token: the token of <home>/hub.token (0600), made at start."""
        hub = start_hub("--tcp", "127.0.0.1:0")
        token_file = hub.home / "hub.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        token = token_file.read_text().strip()
        refused = clients(hub.tcp_address).hello("producer", training_id="run-1")
        assert refused["error"]["code"] == "unauthorized"
        assert "welcome" in clients(hub.tcp_address).hello("subscriber", token=token)
        assert "welcome" in clients(hub.unix).hello("subscriber")  # the 0600 socket: no token

    def test_allow_remote_with_a_token(
        self, start_hub: Callable[..., HubProcess], clients: Callable[[Address], RawClient]
    ) -> None:
        hub = start_hub("--tcp", "0.0.0.0:0", "--allow-remote", "--token", "s3cret")
        assert hub.tcp is not None
        address = Address(host="127.0.0.1", port=hub.tcp[1])
        refused = clients(address).hello("subscriber")
        assert refused["error"]["code"] == "unauthorized"
        assert "welcome" in clients(address).hello("subscriber", token="s3cret")

    def test_bad_tcp_address(self, tmp_path: Path) -> None:
        result = serve("--home", str(tmp_path), "--tcp", "localhost")
        assert result.returncode == 2
        assert "HOST:PORT" in result.stderr


class TestSocketFile:
    """The Unix socket is private, replaced when stale, and never stolen from a live hub."""

    def test_mode_0600(self, hub: HubProcess) -> None:
        assert hub.socket_path is not None
        assert hub.socket_path.stat().st_mode & 0o777 == 0o600

    def test_stale_socket_is_replaced(
        self,
        hub_home: Path,
        start_hub: Callable[..., HubProcess],
        clients: Callable[[Address], RawClient],
    ) -> None:
        hub_home.mkdir(parents=True)
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(hub_home / "pulse.sock"))
        stale.close()  # the file stays; nobody listens: a crashed hub's leftover
        hub = start_hub()
        assert "welcome" in clients(hub.unix).hello("subscriber")

    def test_second_hub_on_the_same_socket_is_refused(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        result = serve("--home", str(hub.home))
        assert result.returncode == 1
        assert "already listening" in result.stderr
        assert "welcome" in clients(hub.unix).hello("subscriber")

    def test_a_file_that_is_not_a_socket_is_left_alone(self, tmp_path: Path) -> None:
        (tmp_path / "pulse.sock").write_text("precious")
        result = serve("--home", str(tmp_path))
        assert result.returncode == 1
        assert "not a socket" in result.stderr
        assert (tmp_path / "pulse.sock").read_text() == "precious"

    def test_sigterm_stops_cleanly_and_removes_the_socket(
        self, hub: HubProcess, clients: Callable[[Address], RawClient]
    ) -> None:
        subscriber = clients(hub.unix)
        subscriber.hello("subscriber")
        subscriber.until(lambda o: "live" in o)
        hub.proc.send_signal(signal.SIGTERM)
        assert subscriber.line()["error"]["code"] == "hub_closing"
        assert hub.proc.wait(15) == 0
        assert hub.socket_path is not None
        assert not hub.socket_path.exists()


class TestConfiguration:
    """The socket transport's table configures both ends; bad keys fail at start-up."""

    def test_socket_table_and_hub_subtable(
        self,
        tmp_path: Path,
        start_hub: Callable[..., HubProcess],
        clients: Callable[[Address], RawClient],
    ) -> None:
        project = tmp_path / "proj"
        project.mkdir()
        sock = tmp_path / "h.sock"
        (project / "pyproject.toml").write_text(
            "[tool.pulse]\n"
            'transports = ["file", "socket"]\n'
            "[tool.pulse.socket]\n"
            f'path = "{sock}"\n'
            "[tool.pulse.socket.hub]\n"
            "rate = 4\n"
            "handshake_timeout = 0.5\n"
        )
        hub = start_hub(cwd=project)
        assert hub.socket_path == sock
        assert clients(hub.unix).hello("subscriber")["welcome"]["rate"] == 4.0
        idle = clients(hub.unix)
        assert idle.line()["error"]["code"] == "handshake_timeout"

    def test_options_win_over_the_table(
        self,
        tmp_path: Path,
        start_hub: Callable[..., HubProcess],
        clients: Callable[[Address], RawClient],
    ) -> None:
        project = tmp_path / "proj"
        project.mkdir()
        (project / "pyproject.toml").write_text("[tool.pulse.socket.hub]\nrate = 4\n")
        hub = start_hub("--rate", "2", cwd=project)
        assert clients(hub.unix).hello("subscriber")["welcome"]["rate"] == 2.0

    def test_unknown_hub_key(self, tmp_path: Path) -> None:
        (tmp_path / "pyproject.toml").write_text("[tool.pulse.socket.hub]\nport = 7433\n")
        result = serve("--home", str(tmp_path / "home"), cwd=tmp_path)
        assert result.returncode == 2
        assert "'port'" in result.stderr
        assert "tcp" in result.stderr

    def test_wrong_type(self, tmp_path: Path) -> None:
        (tmp_path / "pyproject.toml").write_text('[tool.pulse.socket.hub]\nrate = "fast"\n')
        result = serve("--home", str(tmp_path / "home"), cwd=tmp_path)
        assert result.returncode == 2
        assert "'rate'" in result.stderr
