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
        assert hub.base == f"http://127.0.0.1:{port}/"
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
        assert hub.url == f"{hub.base}?token={hub.token}"


class TestRemote:
    """A non-loopback address needs --allow-remote and a token, which every request must show."""

    def test_refused_without_allow_remote(self, home: Path) -> None:
        result = serve(home, "--http", "0.0.0.0:0")
        assert result.returncode == 2
        assert "--allow-remote" in result.stderr

    def test_refused_without_a_token(self, home: Path) -> None:
        result = serve(home, "--http", "0.0.0.0:0", "--allow-remote", "--no-token")
        assert result.returncode == 2
        assert "token" in result.stderr

    def test_blank_token_refused(self, home: Path) -> None:
        """A token of spaces guards nothing: refused for a remote listener, named."""
        for blank in (" ", "\t"):
            result = serve(home, "--http", "0.0.0.0:0", "--allow-remote", "--token", blank)
            assert result.returncode == 2, result.stderr
            assert "whitespace" in result.stderr

    def test_token_required(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub(http="0.0.0.0:0", args=("--allow-remote", "--token", "s3cret"))
        for path in ("/api/runs", "/events", "/", "/openapi.json"):
            status, _, body = hub.request(path, auth=False)
            assert status == 401, path
            assert orjson.loads(body)["error"]["code"] == "unauthorized"
        assert hub.request("/api/runs", {"authorization": "Bearer wrong"})[0] == 401
        assert hub.request("/api/runs", {"authorization": "Bearer s3cret"})[0] == 200
        other = {"host": "pulse.example:80", "cookie": "x=1"}
        assert hub.request("/api/runs", other, auth=False)[0] == 401

    def test_query_token_only_where_a_browser_needs_it(
        self, start_hub: Callable[..., WebHub]
    ) -> None:
        """``?token=`` opens the page and ``/events``; the JSON API wants a header or cookie."""
        hub = start_hub(http="0.0.0.0:0", args=("--allow-remote", "--token", "s3cret"))
        for path in ("/api/runs", "/api/runs/x", "/openapi.json", "/api/flows"):
            assert hub.request(path + "?token=s3cret", auth=False)[0] == 401, path
        assert hub.request("/?token=s3cret", auth=False)[0] == 303
        reader = SseReader(hub, "/events?token=s3cret", headers={"authorization": ""})
        assert reader.status == 200
        reader.close()

    def test_page_token_becomes_a_cookie(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub(http="0.0.0.0:0", args=("--allow-remote", "--token", "s3cret"))
        status, headers, _ = hub.request("/?token=s3cret", auth=False)
        assert status == 303
        assert headers["location"] == "/"
        cookie = headers["set-cookie"]
        name = f"pulse_token_{hub.port}"
        assert cookie.startswith(f"{name}=s3cret;")
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        assert hub.request("/api/runs", {"cookie": f"{name}=s3cret"}, auth=False)[0] == 200


class TestDefaultToken:
    """A loopback hub asks for the token of ``<home>/hub.token`` unless ``--no-token``."""

    def test_made_private_and_printed_once(self, start_hub: Callable[..., WebHub]) -> None:
        """The hub writes a random 0600 token file and prints the page URL carrying it."""
        hub = start_hub()
        token_file = hub.home / "hub.token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert len(hub.token or "") >= 32
        assert hub.url == f"{hub.base}?token={hub.token}"
        assert hub.request("/api/runs", auth=False)[0] == 401
        assert hub.request("/api/runs")[0] == 200
        assert "on the command line" not in hub.log()

    def test_reused_across_restarts(self, start_hub: Callable[..., WebHub]) -> None:
        """A restarted hub keeps the token: cookies and clients holding it stay valid."""
        first = start_hub()
        token = first.token
        first.stop()
        second = start_hub(http=first.http)
        assert second.token == token
        assert second.url == first.url

    def test_loose_file_replaced(self, home: Path, start_hub: Callable[..., WebHub]) -> None:
        """A token file others could read is not trusted: the hub makes a new one."""
        home.mkdir(parents=True)
        (home / "hub.token").write_text("leaked-token-leaked-token-leaked-token\n")
        (home / "hub.token").chmod(0o644)
        hub = start_hub()
        assert hub.token != "leaked-token-leaked-token-leaked-token"
        assert (home / "hub.token").stat().st_mode & 0o777 == 0o600

    def test_no_token_opts_out(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub(args=("--no-token",))
        assert hub.url == hub.base
        assert hub.request("/api/runs", auth=False)[0] == 200

    def test_argv_token_warns(self, start_hub: Callable[..., WebHub]) -> None:
        """A token on the command line works but warns (argv is visible in ps)."""
        hub = start_hub(args=("--token", "argv-token-1234"))
        assert "on the command line" in hub.log()
        assert hub.token == "argv-token-1234"  # local clients still find it

    def test_env_token_does_not_warn(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub(env={"PULSE_HUB_TOKEN": "env-token-1234"})
        assert hub.token == "env-token-1234"
        assert "on the command line" not in hub.log()
        assert hub.request("/api/runs", {"authorization": "Bearer env-token-1234"})[0] == 200


class TestHost:
    """Without a token, a loopback hub answers only to loopback host names (DNS rebinding)."""

    def test_foreign_host_refused(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub(args=("--no-token",))
        status, _, body = hub.request("/api/runs", {"host": "attacker.example:80"})
        assert status == 403
        assert orjson.loads(body)["error"]["code"] == "forbidden_host"
        assert hub.request("/api/runs", {"host": f"localhost:{hub.port}"})[0] == 200
        assert hub.request("/api/runs", {"host": f"[::1]:{hub.port}"})[0] == 200


class TestStop:
    """SIGTERM ends open streams and stops the hub promptly with exit code 0."""

    def test_sigterm_with_a_stream_open(self, start_hub: Callable[..., WebHub]) -> None:
        hub = start_hub()
        reader = SseReader(hub)
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
