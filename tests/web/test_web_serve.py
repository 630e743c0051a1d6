"""``pulse serve --http``: loopback by default, a token for anything else, a clean stop."""

from __future__ import annotations

import ast
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
from pagekit import SseReader, WebHub, clean_env, free_port

from pulse_transports.cli.serve import parse_http


def serve(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``pulse serve`` expecting it to refuse to start."""
    return subprocess.run(
        [sys.executable, "-m", "pulse_transports.cli", "serve", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )


class TestAddress:
    """``--http`` takes ``[HOST:]PORT``; a bare port is loopback."""

    def test_parse(self) -> None:
        assert parse_http("8080") == ("127.0.0.1", 8080)
        assert parse_http("0.0.0.0:80") == ("0.0.0.0", 80)
        assert parse_http("[::1]:7434") == ("::1", 7434)
        with pytest.raises(ValueError, match="port"):
            parse_http("localhost:http")

    def test_bare_port_is_loopback(self, start_hub: Callable[..., WebHub]) -> None:
        port = free_port()
        hub = start_hub(http=str(port))
        assert hub.url == f"http://127.0.0.1:{port}/"
        assert hub.get_json("/api/runs")["runs"] == []

    def test_bad_address(self, home: Path) -> None:
        result = serve(home, "--http", "localhost:http")
        assert result.returncode == 2
        assert "--http" in result.stderr

    def test_with_the_socket_and_tcp(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub(args=("--tcp", "127.0.0.1:0"))
        ready = hub.out_path.read_text()
        assert "unix:" in ready
        assert "tcp:127.0.0.1:" in ready
        assert hub.url in ready


class TestRemote:
    """A non-loopback address needs --allow-remote and a token, which every request must show."""

    def test_refused_without_allow_remote(self, home: Path) -> None:
        result = serve(home, "--http", "0.0.0.0:0")
        assert result.returncode == 2
        assert "--allow-remote" in result.stderr

    def test_refused_without_a_token(self, home: Path) -> None:
        result = serve(home, "--http", "0.0.0.0:0", "--allow-remote")
        assert result.returncode == 2
        assert "token" in result.stderr

    def test_token_required(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub(http="0.0.0.0:0", args=("--allow-remote", "--token", "s3cret"))
        for path in ("/api/runs", "/events", "/", "/openapi.json"):
            status, _, body = hub.request(path)
            assert status == 401, path
            assert orjson.loads(body)["error"]["code"] == "unauthorized"
        assert hub.request("/api/runs", {"authorization": "Bearer wrong"})[0] == 401
        assert hub.request("/api/runs", {"authorization": "Bearer s3cret"})[0] == 200
        assert hub.request("/api/runs?token=s3cret")[0] == 200
        assert hub.request("/api/runs", {"host": "pulse.example:80", "cookie": "x=1"})[0] == 401

    def test_page_token_becomes_a_cookie(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub(http="0.0.0.0:0", args=("--allow-remote", "--token", "s3cret"))
        status, headers, _ = hub.request("/?token=s3cret")
        assert status == 303
        assert headers["location"] == "/"
        cookie = headers["set-cookie"]
        assert cookie.startswith("pulse_token=s3cret;")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert hub.request("/api/runs", {"cookie": "pulse_token=s3cret"})[0] == 200


class TestHost:
    """Without a token, a loopback hub answers only to loopback host names (DNS rebinding)."""

    def test_foreign_host_refused(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub()
        status, _, body = hub.request("/api/runs", {"host": "attacker.example:80"})
        assert status == 403
        assert orjson.loads(body)["error"]["code"] == "forbidden_host"
        assert hub.request("/api/runs", {"host": f"localhost:{hub.port}"})[0] == 200
        assert hub.request("/api/runs", {"host": f"[::1]:{hub.port}"})[0] == 200


class TestStop:
    """SIGTERM ends open streams and stops the hub promptly with exit code 0."""

    def test_sigterm_with_a_stream_open(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub()
        reader = SseReader(hub.port)
        next(reader.messages())
        assert hub.stop(signal.SIGTERM) == 0
        rest = list(reader.messages())
        assert reader.ended  # the hub ended the stream; the reader did not time out
        assert all("hello" not in item for _, items in rest for item in items)
        reader.close()


class TestImports:
    """The web view is an optional edge: only ``pulse serve`` imports it, and lazily."""

    def test_only_serve_imports_web(self) -> None:
        root = Path(__file__).parents[2]
        importers = []
        for path in sorted((root / "pulse_transports").rglob("*.py")):
            if "web" in path.relative_to(root / "pulse_transports").parts:
                continue
            for node in ast.walk(ast.parse(path.read_text("utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(
                    n.startswith(("pulse_transports.web", "starlette", "uvicorn")) for n in names
                ):
                    importers.append(path.relative_to(root).as_posix())
        assert sorted(set(importers)) == ["pulse_transports/cli/serve.py"]

    def test_serve_without_http_loads_no_web_stack(self) -> None:
        code = (
            "import sys, pulse_transports.cli.serve; "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'pulse_transports.web') "
            "if m in sys.modules))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
        )
        assert result.stdout.strip() == "[]"
