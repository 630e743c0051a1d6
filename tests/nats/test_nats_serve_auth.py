"""``pulse nats serve`` with credentials NATS refuses: exit 1 with the reason, never "listening"."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from natskit import NatsServer

TOKEN = "s3cret-token-42"
WRONG = "wrong-token-17"


def nats_serve(url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``pulse nats serve`` on a fresh home; it must end by itself."""
    home = Path(tempfile.mkdtemp(prefix="pn-")) / "home"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PULSE_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pulse_transports.cli",
            "nats",
            "serve",
            "--home",
            str(home),
            "--url",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        check=False,
    )


class TestRejectedToken:
    """A token the NATS server refuses ends the command at once, named, with exit code 1."""

    def test_wrong_token_exits_1(self, start_server: Callable[..., NatsServer]) -> None:
        server = start_server(auth=TOKEN)
        result = nats_serve(server.url, PULSE_NATS_TOKEN=WRONG)
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert "listening" not in result.stdout
        assert "refused the credentials" in result.stderr
        assert server.url in result.stderr
        assert WRONG not in result.stdout + result.stderr

    def test_missing_token_exits_1(self, start_server: Callable[..., NatsServer]) -> None:
        server = start_server(auth=TOKEN)
        result = nats_serve(server.url)
        assert result.returncode == 1
        assert "refused the credentials" in result.stderr
